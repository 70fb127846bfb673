// addon.cc - safeconc_node: a small Node.js binding over system SQLite whose queries run on
// the libuv thread pool while their JavaScript user-defined functions run on the JS thread,
// through libsafeconc's trampoline table. The reference binding of docs/host-integration.md.
//
// Threads. Everything here runs on the JS thread of its environment (the main thread or a
// worker_thread) except Work::Execute, which runs on a pool thread and touches only its Work
// and the connection. A connection runs one Work at a time (Db::queue): sqlite3_step holds
// the connection's mutex for the whole step, including while a worker waits for a UDF to
// run on the JS thread, so the JS thread must never call sqlite3_* on a connection that has
// work in flight. Synchronous calls and function registration refuse such a connection.
//
// Owners. One safeconc owner per environment, opened on first use: its dispatch hook is a
// napi_call_threadsafe_function (unref'd: an idle owner keeps no process alive), whose
// call_js runs safeconc_task_run. The environment's cleanup hook closes the owner, which
// fails calls still waiting and returns only after any hook call in progress returned, and
// then releases the threadsafe function.
//
// Errors. No C++ exception leaves a napi callback or a SQLite callback: each entry point
// catches and turns failures into a JS Error (or an SQLite error for a UDF).
#include <dlfcn.h>
#include <node_api.h>
#include <sqlite3.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "safeconc.h"

namespace {

const safeconc_api_v1* g_api = nullptr;  // set once, under g_load_mu, never changed after
std::mutex g_load_mu;
std::string g_load_error;

// Live objects of this binding, process-wide (native.liveObjects(): the leak checks of the
// tests). Each counted struct holds a Tally member.
enum LiveKind { kLiveEnvs, kLiveDbs, kLiveFuncs, kLiveQueries, kLiveKinds };
std::atomic<int64_t> g_live[kLiveKinds];

struct Tally {
  const LiveKind kind;
  explicit Tally(LiveKind k) : kind(k) { g_live[kind].fetch_add(1, std::memory_order_relaxed); }
  ~Tally() { g_live[kind].fetch_sub(1, std::memory_order_relaxed); }
  Tally(const Tally&) = delete;
  Tally& operator=(const Tally&) = delete;
};

// ---- Small N-API helpers ---------------------------------------------------------------

#define NAPI_OK(call)                           \
  do {                                          \
    if ((call) != napi_ok) return Pending(env); \
  } while (0)

// Returns undefined after making sure an exception is pending (a failed napi call may or may
// not have thrown one).
napi_value Pending(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    const napi_extended_error_info* info = nullptr;
    napi_get_last_error_info(env, &info);
    napi_throw_error(env, nullptr,
                     info && info->error_message ? info->error_message : "N-API call failed");
  }
  return nullptr;
}

napi_value Throw(napi_env env, const std::string& msg) {
  napi_throw_error(env, nullptr, msg.c_str());
  return nullptr;
}

napi_value MakeError(napi_env env, const std::string& msg) {
  napi_value m = nullptr, e = nullptr;
  napi_create_string_utf8(env, msg.data(), msg.size(), &m);
  napi_create_error(env, nullptr, m, &e);
  return e;
}

bool GetString(napi_env env, napi_value v, std::string* out) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, nullptr, 0, &n) != napi_ok) return false;
  out->resize(n + 1);
  if (napi_get_value_string_utf8(env, v, &(*out)[0], n + 1, &n) != napi_ok) return false;
  out->resize(n);
  return true;
}

// The message of a thrown JS value: error.message if it has one, else String(value).
std::string ExceptionMessage(napi_env env, napi_value exc) {
  std::string msg;
  napi_valuetype t;
  if (napi_typeof(env, exc, &t) == napi_ok && t == napi_object) {
    napi_value m;
    bool has = false;
    if (napi_has_named_property(env, exc, "message", &has) == napi_ok && has &&
        napi_get_named_property(env, exc, "message", &m) == napi_ok) {
      napi_value s;
      if (napi_coerce_to_string(env, m, &s) == napi_ok && GetString(env, s, &msg)) return msg;
    }
  }
  napi_value s;
  if (napi_coerce_to_string(env, exc, &s) == napi_ok && GetString(env, s, &msg)) return msg;
  return "a JavaScript exception";
}

// ---- Values copied between threads ------------------------------------------------------

struct Val {
  int type = SQLITE_NULL;
  int64_t i = 0;
  double d = 0;
  std::string bytes;  // text or blob
};

constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

// JS -> Val. Numbers that are safe integers become INTEGER, other numbers REAL; BigInt
// INTEGER (it must fit in 64 bits); booleans 0/1; strings TEXT; Buffers and typed arrays
// BLOB; null and undefined NULL.
bool ToVal(napi_env env, napi_value v, Val* out, std::string* why) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return *why = "cannot inspect a value", false;
  switch (t) {
    case napi_undefined:
    case napi_null:
      out->type = SQLITE_NULL;
      return true;
    case napi_boolean: {
      bool b = false;
      napi_get_value_bool(env, v, &b);
      out->type = SQLITE_INTEGER;
      out->i = b ? 1 : 0;
      return true;
    }
    case napi_number: {
      double d = 0;
      napi_get_value_double(env, v, &d);
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= kMaxSafe) {
        out->type = SQLITE_INTEGER;
        out->i = static_cast<int64_t>(d);
      } else {
        out->type = SQLITE_FLOAT;
        out->d = d;
      }
      return true;
    }
    case napi_bigint: {
      bool lossless = false;
      int64_t i = 0;
      napi_get_value_bigint_int64(env, v, &i, &lossless);
      if (!lossless) return *why = "a BigInt outside the 64-bit integer range", false;
      out->type = SQLITE_INTEGER;
      out->i = i;
      return true;
    }
    case napi_string:
      out->type = SQLITE_TEXT;
      return GetString(env, v, &out->bytes) || (*why = "cannot read a string", false);
    case napi_object: {
      bool is = false;
      void* data = nullptr;
      size_t len = 0;
      if (napi_is_buffer(env, v, &is) == napi_ok && is) {
        napi_get_buffer_info(env, v, &data, &len);
      } else if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
        napi_typedarray_type tt;
        size_t count = 0, offset = 0;
        napi_value ab;
        napi_get_typedarray_info(env, v, &tt, &count, &data, &ab, &offset);
        napi_value bl;
        uint32_t bytes = 0;
        napi_get_named_property(env, v, "byteLength", &bl);
        napi_get_value_uint32(env, bl, &bytes);
        len = bytes;
      } else {
        return *why = "an object (only Buffer and typed arrays bind as BLOB)", false;
      }
      out->type = SQLITE_BLOB;
      out->bytes.assign(static_cast<const char*>(data), len);
      return true;
    }
    default:
      return *why = "a value of an unsupported type (function or symbol)", false;
  }
}

napi_value FromVal(napi_env env, const Val& v) {
  napi_value r = nullptr;
  switch (v.type) {
    case SQLITE_INTEGER:
      if (v.i >= -static_cast<int64_t>(kMaxSafe) && v.i <= static_cast<int64_t>(kMaxSafe)) {
        napi_create_double(env, static_cast<double>(v.i), &r);
      } else {
        napi_create_bigint_int64(env, v.i, &r);
      }
      break;
    case SQLITE_FLOAT:
      napi_create_double(env, v.d, &r);
      break;
    case SQLITE_TEXT:
      napi_create_string_utf8(env, v.bytes.data(), v.bytes.size(), &r);
      break;
    case SQLITE_BLOB:
      napi_create_buffer_copy(env, v.bytes.size(), v.bytes.data(), nullptr, &r);
      break;
    default:
      napi_get_null(env, &r);
  }
  return r;
}

void ValFromColumn(sqlite3_stmt* st, int c, Val* v) {
  v->type = sqlite3_column_type(st, c);
  switch (v->type) {
    case SQLITE_INTEGER:
      v->i = sqlite3_column_int64(st, c);
      break;
    case SQLITE_FLOAT:
      v->d = sqlite3_column_double(st, c);
      break;
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_column_text(st, c);
      v->bytes.assign(reinterpret_cast<const char*>(p), sqlite3_column_bytes(st, c));
      break;
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_column_blob(st, c);
      const int n = sqlite3_column_bytes(st, c);
      v->bytes.assign(static_cast<const char*>(p), static_cast<size_t>(n));
      break;
    }
    default:
      break;
  }
}

int Bind(sqlite3_stmt* st, int i, const Val& v) {
  switch (v.type) {
    case SQLITE_INTEGER:
      return sqlite3_bind_int64(st, i, v.i);
    case SQLITE_FLOAT:
      return sqlite3_bind_double(st, i, v.d);
    case SQLITE_TEXT:
      return sqlite3_bind_text(st, i, v.bytes.data(), static_cast<int>(v.bytes.size()),
                               SQLITE_TRANSIENT);
    case SQLITE_BLOB:
      return sqlite3_bind_blob(st, i, v.bytes.data(), static_cast<int>(v.bytes.size()),
                               SQLITE_TRANSIENT);
    default:
      return sqlite3_bind_null(st, i);
  }
}

// ---- Per-environment state ----------------------------------------------------------------

struct Db;
struct FuncData;

struct EnvState {
  napi_env env = nullptr;
  safeconc_owner* owner = nullptr;
  napi_threadsafe_function tsfn = nullptr;
  bool closed = false;               // the environment is being torn down
  int udf_depth = 0;                 // JS UDF calls running now (on this thread)
  std::set<Db*> dbs;                 // open connections of this environment
  std::set<FuncData*> funcs;         // registered functions not yet destroyed
  napi_ref database_ctor = nullptr;  // the Database class
  Tally tally{kLiveEnvs};
};

// The dispatch hook: any thread. Hands the task to the JS thread; never waits for it.
int Hook(void* arg, safeconc_task* task) {
  EnvState* st = static_cast<EnvState*>(arg);
  return napi_call_threadsafe_function(st->tsfn, task, napi_tsfn_nonblocking) == napi_ok ? 0 : 1;
}

// call_js of the threadsafe function: the JS thread. task_run runs the callback, or (owner
// closed, env == nullptr while the function is torn down) just releases the task: every task
// handed to the hook reaches task_run exactly once.
void CallJs(napi_env, napi_value, void*, void* data) {
  g_api->task_run(static_cast<safeconc_task*>(data));
}

// ---- Functions ------------------------------------------------------------------------------

struct FuncData {
  EnvState* st = nullptr;
  std::string name;
  napi_ref fn = nullptr;     // scalar
  napi_ref start = nullptr;  // aggregate: a function returning the initial accumulator
  napi_ref step = nullptr;
  napi_ref result = nullptr;  // optional
  Tally tally{kLiveFuncs};

  void Unref(napi_env env) {
    for (napi_ref* r : {&fn, &start, &step, &result}) {
      if (*r) napi_delete_reference(env, *r);
      *r = nullptr;
    }
  }
};

void DestroyFunc(void* p) {  // on the owner (JS) thread, per the trampoline's contract
  FuncData* f = static_cast<FuncData*>(p);
  if (!f->st->closed) {
    f->Unref(f->st->env);
    f->st->funcs.erase(f);
  }
  delete f;
}

napi_value ArgToJs(napi_env env, safeconc_ctx* ctx, int i) {
  Val v;
  v.type = g_api->arg_type(ctx, i);
  switch (v.type) {
    case SQLITE_INTEGER:
      v.i = g_api->arg_int64(ctx, i);
      break;
    case SQLITE_FLOAT:
      v.d = g_api->arg_double(ctx, i);
      break;
    case SQLITE_TEXT:
    case SQLITE_BLOB: {
      const int n = g_api->arg_bytes(ctx, i);
      const void* p = v.type == SQLITE_TEXT ? static_cast<const void*>(g_api->arg_text(ctx, i))
                                            : g_api->arg_blob(ctx, i);
      if (p != nullptr && n > 0)
        v.bytes.assign(static_cast<const char*>(p), static_cast<size_t>(n));
      break;
    }
    default:
      break;
  }
  return FromVal(env, v);
}

void SetResult(napi_env env, safeconc_ctx* ctx, napi_value r, const std::string& fname) {
  Val v;
  std::string why;
  if (!ToVal(env, r, &v, &why)) {
    g_api->result_error(ctx, (fname + "() returned " + why).c_str(), 0);
    return;
  }
  switch (v.type) {
    case SQLITE_INTEGER:
      g_api->result_int64(ctx, v.i);
      break;
    case SQLITE_FLOAT:
      g_api->result_double(ctx, v.d);
      break;
    case SQLITE_TEXT:
      g_api->result_text(ctx, v.bytes.data(), static_cast<int>(v.bytes.size()));
      break;
    case SQLITE_BLOB:
      g_api->result_blob(ctx, v.bytes.data(), static_cast<int>(v.bytes.size()));
      break;
    default:
      g_api->result_null(ctx);
  }
}

// Calls fn(args...) on the JS thread. On a JS exception: reports its message as the
// statement's error and returns false.
bool CallJsFunction(FuncData* f, safeconc_ctx* ctx, napi_value fn, size_t argc,
                    const napi_value* argv, napi_value* out) {
  napi_env env = f->st->env;
  napi_value global;
  napi_get_global(env, &global);
  ++f->st->udf_depth;
  const napi_status s = napi_call_function(env, global, fn, argc, argv, out);
  --f->st->udf_depth;
  if (s == napi_ok) return true;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  std::string msg = "JavaScript could not run (the environment is shutting down)";
  if (pending) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    msg = ExceptionMessage(env, exc);
  }
  g_api->result_error(ctx, msg.c_str(), 0);
  return false;
}

napi_value RefValue(napi_env env, napi_ref r) {
  napi_value v = nullptr;
  if (r) napi_get_reference_value(env, r, &v);
  if (!v) napi_get_undefined(env, &v);
  return v;
}

void ScalarCallback(safeconc_ctx* ctx) {
  FuncData* f = static_cast<FuncData*>(g_api->user_data(ctx));
  if (f->st->closed) return g_api->result_error(ctx, "the JavaScript environment is closed", 0);
  napi_env env = f->st->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  const int argc = g_api->argc(ctx);
  std::vector<napi_value> argv(static_cast<size_t>(argc));
  for (int i = 0; i < argc; ++i) argv[static_cast<size_t>(i)] = ArgToJs(env, ctx, i);
  napi_value r;
  if (CallJsFunction(f, ctx, RefValue(env, f->fn), argv.size(), argv.data(), &r)) {
    SetResult(env, ctx, r, f->name);
  }
  napi_close_handle_scope(env, scope);
}

// Aggregates keep the group's accumulator in a holder object ({ v: acc }: N-API 8 has no
// references to primitives) whose napi_ref is the group's state slot.
napi_value NewHolder(napi_env env, FuncData* f, safeconc_ctx* ctx, void** slot) {
  napi_value acc;
  if (!CallJsFunction(f, ctx, RefValue(env, f->start), 0, nullptr, &acc)) return nullptr;
  napi_value holder;
  napi_create_object(env, &holder);
  napi_set_named_property(env, holder, "v", acc);
  napi_ref r = nullptr;
  napi_create_reference(env, holder, 1, &r);
  *slot = r;
  return holder;
}

void AggStep(safeconc_ctx* ctx) {
  FuncData* f = static_cast<FuncData*>(g_api->user_data(ctx));
  if (f->st->closed) return g_api->result_error(ctx, "the JavaScript environment is closed", 0);
  napi_env env = f->st->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  void** slot = g_api->aggregate_state(ctx);
  napi_value holder =
      *slot ? RefValue(env, static_cast<napi_ref>(*slot)) : NewHolder(env, f, ctx, slot);
  if (holder != nullptr) {
    const int argc = g_api->argc(ctx);
    std::vector<napi_value> argv(static_cast<size_t>(argc) + 1);
    napi_get_named_property(env, holder, "v", &argv[0]);
    for (int i = 0; i < argc; ++i) argv[static_cast<size_t>(i) + 1] = ArgToJs(env, ctx, i);
    napi_value next;
    if (CallJsFunction(f, ctx, RefValue(env, f->step), argv.size(), argv.data(), &next)) {
      napi_valuetype t;
      napi_typeof(env, next, &t);
      // step may mutate the accumulator in place and return nothing
      if (t != napi_undefined) napi_set_named_property(env, holder, "v", next);
    } else {
      // The statement fails with step's error; SQLite still calls final to free the group:
      // result() must not run then.
      napi_value yes;
      napi_get_boolean(env, true, &yes);
      napi_set_named_property(env, holder, "failed", yes);
    }
  }
  napi_close_handle_scope(env, scope);
}

void AggFinal(safeconc_ctx* ctx) {
  FuncData* f = static_cast<FuncData*>(g_api->user_data(ctx));
  void** slot = g_api->aggregate_state(ctx);
  if (f->st->closed) {
    *slot = nullptr;  // the environment's references are gone with it
    return g_api->result_error(ctx, "the JavaScript environment is closed", 0);
  }
  napi_env env = f->st->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value holder = *slot ? RefValue(env, static_cast<napi_ref>(*slot))
                            : NewHolder(env, f, ctx, slot);  // no rows: the start value
  if (*slot) {
    napi_delete_reference(env, static_cast<napi_ref>(*slot));
    *slot = nullptr;
  }
  bool failed = false;
  if (holder != nullptr) {
    napi_value flag;
    if (napi_get_named_property(env, holder, "failed", &flag) == napi_ok) {
      napi_get_value_bool(env, flag, &failed);  // not a boolean (unset): stays false
    }
  }
  if (holder != nullptr && !failed) {
    napi_value acc, r;
    napi_get_named_property(env, holder, "v", &acc);
    r = acc;
    if (f->result == nullptr || CallJsFunction(f, ctx, RefValue(env, f->result), 1, &acc, &r)) {
      SetResult(env, ctx, r, f->name);
    }
  }
  napi_close_handle_scope(env, scope);
}

// ---- Connections and work --------------------------------------------------------------------

enum class Mode { kGet, kAll, kRun, kExec, kClose };

struct Work;

struct Db {
  std::shared_ptr<EnvState> st;
  sqlite3* db = nullptr;
  std::string path;
  bool closing = false;        // close() was called: new work is refused
  Work* running = nullptr;     // on the pool now
  std::deque<Work*> queue;     // waiting to run, in call order
  napi_ref wrapper = nullptr;  // weak, to the JS object
  // Synchronous queries stepping on the JS thread now (nested ones, from UDFs of other
  // connections, count too). Queued work waits for them: between two of their steps a pool
  // thread could take the connection, dispatch a UDF to the JS thread and wait for it while
  // the JS thread waits for the connection (stuck until safeconc_call_timeout).
  int sync_running = 0;
  Tally tally{kLiveDbs};
  bool Busy() const { return running != nullptr || !queue.empty(); }
};

struct Work {
  Db* db = nullptr;
  Mode mode = Mode::kAll;
  std::string sql;
  std::vector<Val> params;
  napi_deferred deferred = nullptr;
  napi_async_work work = nullptr;
  napi_ref keep = nullptr;  // keeps the Database object alive while this work exists
  // Results, written on the pool thread, read on the JS thread after completion.
  int rc = SQLITE_OK;
  std::string error;
  std::vector<std::string> columns;
  std::vector<std::vector<Val>> rows;
  int64_t changes = 0, last_rowid = 0;
  Tally tally{kLiveQueries};
};

// Runs one statement (or, for kExec, a script) to completion on the calling thread.
void RunStatement(sqlite3* db, Work* w) {
  if (w->mode == Mode::kExec) {
    char* err = nullptr;
    w->rc = sqlite3_exec(db, w->sql.c_str(), nullptr, nullptr, &err);
    if (w->rc != SQLITE_OK) w->error = err ? err : sqlite3_errstr(w->rc);
    sqlite3_free(err);
    return;
  }
  sqlite3_stmt* st = nullptr;
  const char* tail = nullptr;
  w->rc = sqlite3_prepare_v2(db, w->sql.c_str(), static_cast<int>(w->sql.size()), &st, &tail);
  if (w->rc != SQLITE_OK) {
    w->error = sqlite3_errmsg(db);
    return;
  }
  if (st == nullptr) {
    w->rc = SQLITE_MISUSE;
    w->error = "the SQL text holds no statement";
    return;
  }
  while (tail && *tail && std::strchr(" \t\r\n;", *tail)) ++tail;
  if (tail && *tail) {
    sqlite3_finalize(st);
    w->rc = SQLITE_MISUSE;
    w->error = "prepare() takes one statement; use db.exec() for a script";
    return;
  }
  const int want = sqlite3_bind_parameter_count(st);
  if (static_cast<size_t>(want) != w->params.size()) {
    sqlite3_finalize(st);
    w->rc = SQLITE_RANGE;
    w->error = "the statement has " + std::to_string(want) + " parameter(s), " +
               std::to_string(w->params.size()) + " given";
    return;
  }
  for (size_t i = 0; i < w->params.size(); ++i) Bind(st, static_cast<int>(i) + 1, w->params[i]);
  const int ncol = sqlite3_column_count(st);
  for (int c = 0; c < ncol; ++c) {
    const char* n = sqlite3_column_name(st, c);
    w->columns.emplace_back(n ? n : "");
  }
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (w->mode == Mode::kRun) continue;
    std::vector<Val> row(static_cast<size_t>(ncol));
    for (int c = 0; c < ncol; ++c) ValFromColumn(st, c, &row[static_cast<size_t>(c)]);
    w->rows.push_back(std::move(row));
    if (w->mode == Mode::kGet) break;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    w->rc = rc;
    w->error = sqlite3_errmsg(db);
  }
  w->changes = sqlite3_changes64(db);
  w->last_rowid = sqlite3_last_insert_rowid(db);
  sqlite3_finalize(st);
}

napi_value RowsToJs(napi_env env, Work* w) {
  std::vector<napi_value> keys(w->columns.size());
  for (size_t c = 0; c < keys.size(); ++c) {
    napi_create_string_utf8(env, w->columns[c].data(), w->columns[c].size(), &keys[c]);
  }
  auto row = [&](const std::vector<Val>& r) {
    napi_value o;
    napi_create_object(env, &o);
    for (size_t c = 0; c < r.size(); ++c) napi_set_property(env, o, keys[c], FromVal(env, r[c]));
    return o;
  };
  napi_value out;
  if (w->mode == Mode::kGet) {
    if (w->rows.empty()) {
      napi_get_undefined(env, &out);
    } else {
      out = row(w->rows[0]);
    }
    return out;
  }
  if (w->mode == Mode::kRun) {
    napi_create_object(env, &out);
    napi_value v;
    napi_create_double(env, static_cast<double>(w->changes), &v);
    napi_set_named_property(env, out, "changes", v);
    Val id;
    id.type = SQLITE_INTEGER;
    id.i = w->last_rowid;
    napi_set_named_property(env, out, "lastInsertRowid", FromVal(env, id));
    return out;
  }
  if (w->mode == Mode::kExec || w->mode == Mode::kClose) {
    napi_get_undefined(env, &out);
    return out;
  }
  napi_create_array_with_length(env, w->rows.size(), &out);
  for (size_t i = 0; i < w->rows.size(); ++i) {
    napi_set_element(env, out, static_cast<uint32_t>(i), row(w->rows[i]));
  }
  return out;
}

void CloseDbNow(Db* d) {
  if (d->db) {
    sqlite3_close_v2(d->db);
    d->db = nullptr;
  }
  if (d->st) d->st->dbs.erase(d);
}

void StartNext(napi_env env, Db* d);

void Execute(napi_env, void* data) {  // a pool thread
  Work* w = static_cast<Work*>(data);
  if (w->mode == Mode::kClose) {
    w->rc = sqlite3_close_v2(w->db->db);  // the JS thread does not touch db meanwhile
    if (w->rc != SQLITE_OK) w->error = sqlite3_errmsg(w->db->db);
    return;
  }
  RunStatement(w->db->db, w);
}

void Complete(napi_env env, napi_status status, void* data) {  // the JS thread
  Work* w = static_cast<Work*>(data);
  Db* d = w->db;
  d->running = nullptr;
  if (w->mode == Mode::kClose && w->rc == SQLITE_OK) {
    d->db = nullptr;
    if (d->st) d->st->dbs.erase(d);
  }
  if (status == napi_cancelled) {
    w->rc = SQLITE_ABORT;
    w->error = "the query was cancelled (its environment is shutting down)";
  }
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  if (w->rc == SQLITE_OK) {
    napi_resolve_deferred(env, w->deferred, RowsToJs(env, w));
  } else {
    napi_value e = MakeError(env, w->error);
    napi_value code;
    napi_create_string_utf8(env, sqlite3_errstr(w->rc), NAPI_AUTO_LENGTH, &code);
    napi_set_named_property(env, e, "sqliteMessage", code);
    napi_value num;
    napi_create_int32(env, w->rc, &num);
    napi_set_named_property(env, e, "errcode", num);
    napi_reject_deferred(env, w->deferred, e);
  }
  napi_close_handle_scope(env, scope);
  napi_delete_async_work(env, w->work);
  napi_ref keep = w->keep;
  delete w;
  StartNext(env, d);
  uint32_t left = 0;
  napi_reference_unref(env, keep, &left);
  napi_delete_reference(env, keep);  // the Database object may be collected from now on
}

void StartNext(napi_env env, Db* d) {
  while (d->running == nullptr && d->sync_running == 0 && !d->queue.empty()) {
    Work* w = d->queue.front();
    d->queue.pop_front();
    if (w->mode != Mode::kClose && d->db == nullptr) {
      napi_reject_deferred(env, w->deferred, MakeError(env, "the database is closed"));
      napi_delete_async_work(env, w->work);
      napi_delete_reference(env, w->keep);
      delete w;
      continue;
    }
    d->running = w;
    if (napi_queue_async_work(env, w->work) != napi_ok) {
      d->running = nullptr;
      napi_reject_deferred(env, w->deferred, MakeError(env, "could not queue the query"));
      napi_delete_async_work(env, w->work);
      napi_delete_reference(env, w->keep);
      delete w;
    }
  }
}

// ---- The Database class -------------------------------------------------------------------

std::shared_ptr<EnvState>* StateSlot(napi_env env) {
  void* p = nullptr;
  napi_get_instance_data(env, &p);
  return static_cast<std::shared_ptr<EnvState>*>(p);
}

// The environment is going away (its JS thread; no JS runs any more). Registered right
// after the threadsafe function was created, so it runs before the function's own cleanup
// (hooks run last-in first-out): the owner is closed first, and every task the function
// still holds then only reaches a closed owner.
void CloseOwner(void* arg) {
  EnvState* st = static_cast<EnvState*>(arg);
  st->closed = true;
  g_api->owner_close(st->owner);  // fails waiting calls; returns once no hook call runs
  st->owner = nullptr;
  napi_release_threadsafe_function(st->tsfn, napi_tsfn_abort);
  st->tsfn = nullptr;
}

// Registered at module init, so it runs after CloseOwner.
void FreeEnv(void* arg) {
  auto* slot = static_cast<std::shared_ptr<EnvState>*>(arg);
  EnvState* st = slot->get();
  st->closed = true;
  // The owner is closed: the trampoline no longer calls their callbacks nor their
  // destructor (DestroyFunc), so they are freed here.
  for (FuncData* f : st->funcs) {
    f->Unref(st->env);
    delete f;
  }
  st->funcs.clear();
  // Node waited for running pool work before cleanup hooks; queued work never started.
  for (Db* d : std::set<Db*>(st->dbs)) {
    for (Work* w : d->queue) {
      napi_delete_async_work(st->env, w->work);
      delete w;  // its promise can no longer be settled: no JS runs any more
    }
    d->queue.clear();
    CloseDbNow(d);
  }
  if (st->database_ctor) napi_delete_reference(st->env, st->database_ctor);
  st->database_ctor = nullptr;
  napi_set_instance_data(st->env, nullptr, nullptr, nullptr);
  delete slot;  // Db objects still alive hold their own reference to the state
}

// The process-wide load: libsafeconc through sqlite3_load_extension, then its API table.
bool LoadLibrary(const std::string& so, std::string* why) {
  std::lock_guard<std::mutex> l(g_load_mu);
  if (g_api) return true;
  sqlite3* tmp = nullptr;
  if (sqlite3_open_v2(":memory:", &tmp, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    *why = "cannot open a connection to load libsafeconc";
    sqlite3_close(tmp);
    return false;
  }
  sqlite3_db_config(tmp, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* err = nullptr;
  if (sqlite3_load_extension(tmp, so.c_str(), nullptr, &err) != SQLITE_OK) {
    *why = "cannot load libsafeconc from " + so + ": " + (err ? err : "unknown error");
    sqlite3_free(err);
    sqlite3_close(tmp);
    return false;
  }
  sqlite3_close(tmp);
  // sqlite3_load_extension appends ".so" to a path that fails as given: find it the same way.
  void* h = dlopen(so.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen((so + ".so").c_str(), RTLD_NOW | RTLD_NOLOAD);
  auto fn = h ? reinterpret_cast<safeconc_api_fn>(dlsym(h, SAFECONC_API_SYMBOL)) : nullptr;
  const void* api = fn ? fn(1) : nullptr;
  if (api == nullptr) {
    *why = "libsafeconc at " + so + " has no API table version 1 (too old?)";
    return false;
  }
  g_api = static_cast<const safeconc_api_v1*>(api);
  return true;
}

// The environment's owner, opened on first use.
bool EnsureOwner(napi_env env, EnvState* st, std::string* why) {
  if (st->owner) return true;
  napi_value name;
  napi_create_string_utf8(env, "safeconc-udf", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, st,
                                      CallJs, &st->tsfn) != napi_ok) {
    *why = "cannot create the threadsafe function for UDF calls";
    return false;
  }
  napi_unref_threadsafe_function(env, st->tsfn);  // an idle owner keeps nobody alive
  if (g_api->owner_open(Hook, st, &st->owner) != SQLITE_OK) {
    *why = std::string("owner_open: ") + g_api->errmsg();
    napi_release_threadsafe_function(st->tsfn, napi_tsfn_abort);
    st->tsfn = nullptr;
    return false;
  }
  napi_add_env_cleanup_hook(env, CloseOwner, st);
  return true;
}

Db* Unwrap(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  napi_value self;
  if (napi_get_cb_info(env, info, argc, argv, &self, nullptr) != napi_ok) return nullptr;
  void* p = nullptr;
  if (napi_unwrap(env, self, &p) != napi_ok || p == nullptr) {
    Throw(env, "not a Database object");
    return nullptr;
  }
  return static_cast<Db*>(p);
}

void FinalizeDb(napi_env, void* data, void*) {
  Db* d = static_cast<Db*>(data);
  // Work in flight holds a strong reference, so nothing runs on d now.
  CloseDbNow(d);
  delete d;
}

// new Database(path, libsafeconcPath)
napi_value DbNew(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 2;
    napi_value argv[2], self;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
    std::string path, so, why;
    if (argc < 2 || !GetString(env, argv[0], &path) || !GetString(env, argv[1], &so)) {
      return Throw(env, "Database(path, libsafeconcPath): two strings expected");
    }
    if (!LoadLibrary(so, &why)) return Throw(env, why);
    auto* slot = StateSlot(env);
    if (!EnsureOwner(env, slot->get(), &why)) return Throw(env, why);
    auto d = std::make_unique<Db>();
    d->st = *slot;
    d->path = path;
    const int rc = sqlite3_open_v2(
        path.c_str(), &d->db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI | SQLITE_OPEN_FULLMUTEX,
        nullptr);
    if (rc != SQLITE_OK) {
      const std::string msg =
          "cannot open " + path + ": " + (d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
      sqlite3_close(d->db);
      return Throw(env, msg);
    }
    Db* raw = d.release();
    if (napi_wrap(env, self, raw, FinalizeDb, nullptr, &raw->wrapper) != napi_ok) {
      sqlite3_close(raw->db);
      delete raw;
      return Pending(env);
    }
    raw->st->dbs.insert(raw);
    return self;
  } catch (const std::bad_alloc&) {
    return Throw(env, "out of memory");
  }
}

// True while JS runs inside a UDF of d: the JS thread is stepping one of d's queries (only
// that query's UDFs, and what they call, run then), or an async query's UDF of d is on the
// stack (api->in_callback; it tracks 16 nested callbacks, the sync count has no limit).
bool InUdfOf(Db* d) { return d->sync_running > 0 || (d->db && g_api->in_callback(d->db)); }

bool Usable(napi_env env, Db* d) {
  if (d->db == nullptr || d->closing) {
    Throw(env, "the database is closed");
    return false;
  }
  return true;
}

// Refuses synchronous use of a connection that has work in flight, or that is running
// one of its own UDFs right now (re-entering the running statement).
bool SyncUsable(napi_env env, Db* d, const char* what) {
  if (!Usable(env, d)) return false;
  if (InUdfOf(d)) {
    Throw(env, std::string(what) +
                   " was called from inside a user-defined function of this database: that "
                   "would re-enter the statement that is running it. Run it after the query "
                   "finishes.");
    return false;
  }
  if (d->Busy()) {
    Throw(env, std::string(what) + ": the database is busy with " +
                   std::to_string(d->queue.size() + (d->running ? 1 : 0)) +
                   " async query(ies); await them first (the JS thread must not wait for "
                   "the connection while a query on the pool waits for the JS thread)");
    return false;
  }
  return true;
}

bool ReadParams(napi_env env, napi_value arr, std::vector<Val>* out) {
  uint32_t n = 0;
  if (napi_get_array_length(env, arr, &n) != napi_ok) {
    Throw(env, "parameters must be an array");
    return false;
  }
  out->resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    napi_value v;
    napi_get_element(env, arr, i, &v);
    std::string why;
    if (!ToVal(env, v, &(*out)[i], &why)) {
      Throw(env, "parameter " + std::to_string(i + 1) + " cannot be bound: " + why);
      return false;
    }
  }
  return true;
}

// db._query(mode, sql, params) -> Promise   (mode: 0 get, 1 all, 2 run, 3 exec, 4 close)
napi_value DbQuery(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 3;
    napi_value argv[3];
    Db* d = Unwrap(env, info, &argc, argv);
    if (!d) return nullptr;
    int32_t mode = 0;
    napi_get_value_int32(env, argv[0], &mode);
    if (mode < 0 || mode > 4) return Throw(env, "bad mode");
    if (mode == static_cast<int>(Mode::kClose)) {
      if (InUdfOf(d)) {
        return Throw(env,
                     "db.close() was called from inside a user-defined function of this "
                     "database; close it after the query finishes");
      }
      if (d->db == nullptr) {  // already closed: nothing to wait for
        napi_deferred def;
        napi_value p, undef;
        napi_create_promise(env, &def, &p);
        napi_get_undefined(env, &undef);
        napi_resolve_deferred(env, def, undef);
        return p;
      }  // a second close() while closing queues behind the first and resolves after it
    } else if (!Usable(env, d)) {
      return nullptr;
    }
    auto w = std::make_unique<Work>();
    w->db = d;
    w->mode = static_cast<Mode>(mode);
    if (w->mode != Mode::kClose) {
      if (!GetString(env, argv[1], &w->sql)) return Throw(env, "SQL must be a string");
      if (argc > 2 && !ReadParams(env, argv[2], &w->params)) return nullptr;
    }
    napi_value promise, self, name;
    NAPI_OK(napi_create_promise(env, &w->deferred, &promise));
    NAPI_OK(napi_get_reference_value(env, d->wrapper, &self));
    NAPI_OK(napi_create_reference(env, self, 1, &w->keep));
    NAPI_OK(napi_create_string_utf8(env, "safeconc.query", NAPI_AUTO_LENGTH, &name));
    NAPI_OK(napi_create_async_work(env, nullptr, name, Execute, Complete, w.get(), &w->work));
    if (w->mode == Mode::kClose) d->closing = true;
    d->queue.push_back(w.release());
    StartNext(env, d);
    return promise;
  } catch (const std::bad_alloc&) {
    return Throw(env, "out of memory");
  }
}

// db._querySync(mode, sql, params) -> rows (on the JS thread; UDFs take the direct path)
napi_value DbQuerySync(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 3;
    napi_value argv[3];
    Db* d = Unwrap(env, info, &argc, argv);
    if (!d || !SyncUsable(env, d, "a synchronous query")) return nullptr;
    int32_t mode = 0;
    napi_get_value_int32(env, argv[0], &mode);
    if (mode < 0 || mode > 3) return Throw(env, "bad mode");
    Work w;
    w.db = d;
    w.mode = static_cast<Mode>(mode);
    if (!GetString(env, argv[1], &w.sql)) return Throw(env, "SQL must be a string");
    if (argc > 2 && !ReadParams(env, argv[2], &w.params)) return nullptr;
    struct SyncScope {  // queued work starts once the JS thread is done with the connection
      napi_env env;
      Db* d;
      ~SyncScope() {
        if (--d->sync_running == 0) StartNext(env, d);
      }
    } scope{env, d};
    ++d->sync_running;
    RunStatement(d->db, &w);
    if (w.rc != SQLITE_OK) return Throw(env, w.error);
    return RowsToJs(env, &w);
  } catch (const std::bad_alloc&) {
    return Throw(env, "out of memory");
  }
}

// db._function(name, nArg, flags, fn)   db._aggregate(name, nArg, flags, start, step, result)
napi_value Register(napi_env env, napi_callback_info info, bool aggregate) {
  try {
    size_t argc = 6;
    napi_value argv[6];
    Db* d = Unwrap(env, info, &argc, argv);
    if (!d || !SyncUsable(env, d, aggregate ? "db.aggregate()" : "db.function()")) return nullptr;
    auto f = std::make_unique<FuncData>();
    f->st = d->st.get();
    int32_t nArg = -1, flags = 0;
    if (!GetString(env, argv[0], &f->name)) return Throw(env, "the function name must be a string");
    napi_get_value_int32(env, argv[1], &nArg);
    napi_get_value_int32(env, argv[2], &flags);
    if (!aggregate) {
      NAPI_OK(napi_create_reference(env, argv[3], 1, &f->fn));
    } else {
      napi_valuetype t;
      NAPI_OK(napi_create_reference(env, argv[3], 1, &f->start));
      NAPI_OK(napi_create_reference(env, argv[4], 1, &f->step));
      napi_typeof(env, argv[5], &t);
      if (t == napi_function) NAPI_OK(napi_create_reference(env, argv[5], 1, &f->result));
    }
    // From here the data is in st->funcs (an environment's teardown frees what is left there).
    // A failed create_* never runs DestroyFunc (safeconc.h): the data is then still ours.
    const std::string name = f->name;
    FuncData* raw = f.release();
    d->st->funcs.insert(raw);
    const int rc = aggregate
                       ? g_api->create_aggregate(d->db, name.c_str(), nArg, flags, d->st->owner,
                                                 raw, AggStep, AggFinal, DestroyFunc)
                       : g_api->create_function(d->db, name.c_str(), nArg, flags, d->st->owner, raw,
                                                ScalarCallback, DestroyFunc);
    if (rc != SQLITE_OK) {
      const std::string msg = std::string("cannot register ") + name + ": " + g_api->errmsg();
      d->st->funcs.erase(raw);
      raw->Unref(env);
      delete raw;
      return Throw(env, msg);
    }
    return nullptr;
  } catch (const std::bad_alloc&) {
    return Throw(env, "out of memory");
  }
}

napi_value DbFunction(napi_env env, napi_callback_info info) { return Register(env, info, false); }
napi_value DbAggregate(napi_env env, napi_callback_info info) { return Register(env, info, true); }

// native.inUdf(): true while a JS UDF of this environment runs.
napi_value InUdf(napi_env env, napi_callback_info) {
  auto* slot = StateSlot(env);
  napi_value r;
  napi_get_boolean(env, slot && (*slot)->udf_depth > 0, &r);
  return r;
}

// native.liveObjects(): { environments, databases, functions, queries } alive in the process.
napi_value LiveObjects(napi_env env, napi_callback_info) {
  napi_value r, v;
  NAPI_OK(napi_create_object(env, &r));
  const char* names[kLiveKinds] = {"environments", "databases", "functions", "queries"};
  for (int k = 0; k < kLiveKinds; ++k) {
    NAPI_OK(napi_create_int64(env, g_live[k].load(std::memory_order_relaxed), &v));
    NAPI_OK(napi_set_named_property(env, r, names[k], v));
  }
  return r;
}

napi_value Init(napi_env env, napi_value exports) {
  auto* slot = new std::shared_ptr<EnvState>(std::make_shared<EnvState>());
  (*slot)->env = env;
  if (napi_set_instance_data(env, slot, nullptr, nullptr) != napi_ok) {
    delete slot;
    return Pending(env);
  }
  napi_add_env_cleanup_hook(env, FreeEnv, slot);
  napi_property_descriptor methods[] = {
      {"_query", nullptr, DbQuery, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_querySync", nullptr, DbQuerySync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_function", nullptr, DbFunction, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_aggregate", nullptr, DbAggregate, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_value ctor;
  NAPI_OK(napi_define_class(env, "Database", NAPI_AUTO_LENGTH, DbNew, nullptr,
                            sizeof methods / sizeof methods[0], methods, &ctor));
  NAPI_OK(napi_create_reference(env, ctor, 1, &(*slot)->database_ctor));
  NAPI_OK(napi_set_named_property(env, exports, "Database", ctor));
  napi_value in_udf;
  NAPI_OK(napi_create_function(env, "inUdf", NAPI_AUTO_LENGTH, InUdf, nullptr, &in_udf));
  NAPI_OK(napi_set_named_property(env, exports, "inUdf", in_udf));
  napi_value live;
  NAPI_OK(napi_create_function(env, "liveObjects", NAPI_AUTO_LENGTH, LiveObjects, nullptr, &live));
  NAPI_OK(napi_set_named_property(env, exports, "liveObjects", live));
  return exports;
}

}  // namespace

NAPI_MODULE_INIT() { return Init(env, exports); }
