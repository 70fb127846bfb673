// sql_functions.cc - the SQL surface every connection gets after loading:
//   safeconc_version()              -> '0.1.0' (from the VERSION file)
//   safeconc_stats()                -> JSON: the VFS, process-wide and per-database counters
//   safeconc_config(name[, value])  -> reads / sets the process-wide default of a knob
//   safeconc_last_busy()            -> JSON: why this connection's last lock request failed
//   safeconc_waiters([path])        -> JSON: who holds and who waits for the write turn of a
//                                      database file, in every process (its sidecar)
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <cstring>
#include <string>

#include "base/json.h"
#include "ext/internal.h"
#include "ext/udf/udf.h"
#include "safeconc_version.h"
#include "vfs/knobs.h"
#include "vfs/locking.h"
#include "vfs/misuse.h"
#include "vfs/shim.h"
#include "vfs/xproc.h"

namespace safeconc {
namespace {

void ResultString(sqlite3_context* ctx, const std::string& s) {
  sqlite3_result_text64(ctx, s.data(), s.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
}

void VersionFunc(sqlite3_context* ctx, int, sqlite3_value**) {
  sqlite3_result_text(ctx, SAFECONC_VERSION, -1, SQLITE_STATIC);
}

// The "misuse" object: API misuse seen and refused since loading (docs/vfs.md).
void WriteMisuseJson(JsonWriter& w) {
  const uint64_t overlapping = OverlappingCalls(), task_runs = RefusedTaskRuns();
  w.Key("misuse")
      .BeginObject()
      .Field("total", static_cast<int64_t>(overlapping + task_runs))
      .Field("overlapping_calls", static_cast<int64_t>(overlapping))
      .Field("task_run_refused", static_cast<int64_t>(task_runs))
      .EndObject();
}

void StatsFunc(sqlite3_context* ctx, int, sqlite3_value**) {
  try {
    JsonWriter w;
    w.BeginObject().Field("version", std::string(SAFECONC_VERSION));
    WriteVfsJson(w);
    Registry::Get().WriteProcessJson(w);
    WriteUdfJson(w);
    WriteMisuseJson(w);
    w.EndObject();
    ResultString(ctx, w.str());
  } catch (...) {
    sqlite3_result_error_nomem(ctx);
  }
}

void ConfigFunc(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  try {
    const char* name = reinterpret_cast<const char*>(sqlite3_value_text(argv[0]));
    const size_t name_len = static_cast<size_t>(sqlite3_value_bytes(argv[0]));
    Knob k;
    // A name with a NUL inside ("safeconc_timeout\0junk") names no knob.
    if (name == nullptr || std::strlen(name) != name_len || !KnobByName(name, &k)) {
      const std::string msg = "safeconc_config: unknown knob '" +
                              (name ? Echo(name, name_len) : std::string()) + "': expected " +
                              KnobList();
      sqlite3_result_error(ctx, msg.c_str(), -1);
      return;
    }
    if (argc == 2) {
      const char* text = reinterpret_cast<const char*>(sqlite3_value_text(argv[1]));
      const size_t len = static_cast<size_t>(sqlite3_value_bytes(argv[1]));
      int64_t v;
      std::string err;
      if (!ParseKnob(k, text, len, &v, &err)) {
        sqlite3_result_error(ctx, err.c_str(), -1);
        return;
      }
      SetDefaultKnob(k, v);
    }
    ResultString(ctx, FormatKnob(k, DefaultKnob(k)));
  } catch (...) {
    sqlite3_result_error_nomem(ctx);
  }
}

void LastBusyFunc(sqlite3_context* ctx, int, sqlite3_value**) {
  try {
    ShimFile* p = ShimFileOf(sqlite3_context_db_handle(ctx));
    const std::string s = p ? LastBusyJson(p) : std::string();
    if (s.empty()) {
      sqlite3_result_null(ctx);  // no failure yet, or the database is not under safeconc
    } else {
      ResultString(ctx, s);
    }
  } catch (...) {
    sqlite3_result_error_nomem(ctx);
  }
}

// For an operator asking "who is holding my database": the holder and the waiters of every
// process, read from the sidecar of `path` (default: this connection's main database).
void WaitersFunc(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  try {
    const char* path = argc > 0 ? reinterpret_cast<const char*>(sqlite3_value_text(argv[0]))
                                : sqlite3_db_filename(sqlite3_context_db_handle(ctx), "main");
    if (path == nullptr || path[0] == '\0') {
      sqlite3_result_error(ctx, "safeconc_waiters: no database file (give its path)", -1);
      return;
    }
    std::string json, err;
    if (!CrossProcess::Describe(path, &json, &err)) {
      sqlite3_result_error(ctx, ("safeconc_waiters: " + err).c_str(), -1);
      return;
    }
    ResultString(ctx, json);
  } catch (...) {
    sqlite3_result_error_nomem(ctx);
  }
}

struct FuncDef {
  const char* name;
  int nargs;
  int flags;
  void (*fn)(sqlite3_context*, int, sqlite3_value**);
};

// Diagnostics and configuration are DIRECTONLY: a schema someone else wrote (a view, a
// trigger) cannot read file paths or change process defaults through them.
const FuncDef kFuncs[] = {
    {"safeconc_version", 0, SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, VersionFunc},
    {"safeconc_stats", 0, SQLITE_UTF8 | SQLITE_DIRECTONLY, StatsFunc},
    {"safeconc_config", 1, SQLITE_UTF8 | SQLITE_DIRECTONLY, ConfigFunc},
    {"safeconc_config", 2, SQLITE_UTF8 | SQLITE_DIRECTONLY, ConfigFunc},
    {"safeconc_last_busy", 0, SQLITE_UTF8 | SQLITE_DIRECTONLY, LastBusyFunc},
    {"safeconc_waiters", 0, SQLITE_UTF8 | SQLITE_DIRECTONLY, WaitersFunc},
    {"safeconc_waiters", 1, SQLITE_UTF8 | SQLITE_DIRECTONLY, WaitersFunc},
};

}  // namespace

int RegisterSqlFunctions(sqlite3* db) {
  for (const FuncDef& f : kFuncs) {
    int rc = sqlite3_create_function_v2(db, f.name, f.nargs, f.flags, nullptr, f.fn, nullptr,
                                        nullptr, nullptr);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

}  // namespace safeconc
