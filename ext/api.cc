// api.cc - the C API of include/safeconc.h: argument checks, error messages, the callback
// context's accessors, and the exported versioned table (safeconc_api).
//
// Every entry point catches everything: no exception crosses into the binding's C code.
// Errors are SQLite codes plus a per-thread message (errmsg()).
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <dlfcn.h>
#include <sys/eventfd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "base/sync.h"
#include "base/thread_id.h"
#include "ext/internal.h"
#include "ext/udf/udf.h"
#include "vfs/shim.h"  // VfsOwnedByThisCopy

namespace safeconc {
namespace {
// Guards the set of owner handles (Owners() below) and each handle's impl. A leaf.
Mutex g_owners_mu;
}  // namespace
}  // namespace safeconc

// The opaque C type of an owner handle.
struct safeconc_owner {
  // Null once closed: functions and tasks keep the Owner itself alive, not the handle.
  std::shared_ptr<safeconc::Owner> impl SC_GUARDED_BY(safeconc::g_owners_mu);
};

namespace safeconc {
namespace {

thread_local std::string t_errmsg;

int Fail(int rc, const std::string& msg) {
  t_errmsg = "safeconc: " + msg;
  return rc;
}
int Ok() {
  t_errmsg.clear();
  return SQLITE_OK;
}

// SQLite's routines are reachable only once the extension was loaded (the loader hands
// sqlite3_safeconc_init the routine table). Unit tests link SQLite directly (SQLITE_CORE).
bool Loaded() {
#ifdef SQLITE_CORE
  return true;
#else
  return sqlite3_api != nullptr;
#endif
}
const char* kNotLoaded =
    "the extension is not loaded: call sqlite3_load_extension(db, \"libsafeconc\", 0, &err) first";
const char* kOtherCopy =
    "another copy of libsafeconc (loaded from another path) owns the safeconc VFS and this "
    "copy cannot reach its API table: get the table from that copy (see safeconc_stats() "
    "and load one copy only)";

// Why this copy's table cannot be used, or null. A copy that lost the VFS to another copy
// hands out that copy's table (safeconc_api below); this is for when it cannot reach it.
const char* NotUsable() {
  if (!Loaded()) return kNotLoaded;
  if (!VfsOwnedByThisCopy()) return kOtherCopy;
  return nullptr;
}

// Every owner handle ever returned. Handles are never freed (a closed one stays a known,
// closed handle, so a late call with it fails cleanly instead of touching freed memory);
// the Owner behind it is freed with its last function and task.
std::set<safeconc_owner*>& Owners() SC_REQUIRES(g_owners_mu) {
  static auto* s = new std::set<safeconc_owner*>();  // leaked: handles outlive everything
  return *s;
}
std::atomic<uint64_t> g_next_owner{0};

// Checks a handle; on success *impl is its owner.
int CheckOwner(safeconc_owner* h, std::shared_ptr<Owner>* impl, bool need_owner_thread,
               const char* what) {
  if (const char* why = NotUsable()) return Fail(SQLITE_MISUSE, why);
  {
    MutexLock l(&g_owners_mu);
    if (h == nullptr || Owners().count(h) == 0) {
      return Fail(SQLITE_MISUSE, std::string(what) + ": not an owner handle");
    }
    *impl = h->impl;
  }
  if (*impl == nullptr || (*impl)->closed()) {
    return Fail(SQLITE_MISUSE, std::string(what) + ": the owner is closed");
  }
  if (need_owner_thread && !(*impl)->OnOwnerThread()) {
    return Fail(SQLITE_MISUSE,
                std::string(what) + ": must be called on the owner thread of " + (*impl)->Name());
  }
  return SQLITE_OK;
}

int OpenOwner(safeconc_dispatch_fn hook, void* hook_arg, bool fd_kind, safeconc_owner** out) {
  try {
    if (out == nullptr) return Fail(SQLITE_MISUSE, "owner_open: out is NULL");
    *out = nullptr;
    if (const char* why = NotUsable()) return Fail(SQLITE_MISUSE, why);
    if (!fd_kind && hook == nullptr) return Fail(SQLITE_MISUSE, "owner_open: hook is NULL");
    int fd = -1;
    if (fd_kind) {
      fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (fd < 0)
        return Fail(SQLITE_CANTOPEN,
                    std::string("owner_open_fd: eventfd: ") + std::strerror(errno));
    }
    auto* h = new safeconc_owner();
    auto impl = std::make_shared<Owner>(g_next_owner.fetch_add(1) + 1, CurrentThreadId(),
                                        fd_kind ? nullptr : hook, hook_arg, fd);
    {
      MutexLock l(&g_owners_mu);
      h->impl = std::move(impl);
      Owners().insert(h);
    }
    *out = h;
    return Ok();
  } catch (...) {
    return Fail(SQLITE_NOMEM, "owner_open: out of memory");
  }
}

int ApiOwnerOpen(safeconc_dispatch_fn hook, void* hook_arg, safeconc_owner** out) {
  return OpenOwner(hook, hook_arg, false, out);
}
int ApiOwnerOpenFd(safeconc_owner** out) { return OpenOwner(nullptr, nullptr, true, out); }

int ApiOwnerFd(safeconc_owner* h) {
  try {
    std::shared_ptr<Owner> o;
    if (CheckOwner(h, &o, false, "owner_fd") != SQLITE_OK) return -1;
    return o->fd;
  } catch (...) {
    return -1;
  }
}

int ApiOwnerDrain(safeconc_owner* h, int max) {
  try {
    std::shared_ptr<Owner> o;
    const int rc = CheckOwner(h, &o, true, "owner_drain");
    if (rc != SQLITE_OK) return -rc;
    if (o->fd < 0)
      return -Fail(SQLITE_MISUSE, "owner_drain: " + o->Name() + " has a dispatch hook, not an fd");
    Ok();
    return o->Drain(max);
  } catch (...) {
    return -Fail(SQLITE_NOMEM, "owner_drain: out of memory");
  }
}

int ApiOwnerClose(safeconc_owner* h) {
  try {
    std::shared_ptr<Owner> o;
    const int rc = CheckOwner(h, &o, true, "owner_close");
    if (rc != SQLITE_OK) return rc;
    o->Close();
    {
      MutexLock l(&g_owners_mu);
      h->impl.reset();  // the handle stays known (and closed); functions keep the Owner alive
    }
    return Ok();
  } catch (...) {
    return Fail(SQLITE_NOMEM, "owner_close: out of memory");
  }
}

// task_run returns nothing (version 1 of the table), so a refusal is reported the way every
// other refusal is: SQLITE_MISUSE through errmsg(), and sqlite3_log for a binding bug.
void ApiTaskRun(safeconc_task* task) {
  try {
    if (const char* why = NotUsable()) {
      Fail(SQLITE_MISUSE, why);
      return;
    }
    Task* t = task ? TakeHandedOut(task) : nullptr;
    if (t == nullptr) {
      CountRefusedTaskRun();
      Fail(SQLITE_MISUSE,
           "task_run: refused: the task is unknown: it already ran, its dispatch hook refused "
           "it, or it was never handed to a dispatch hook (run each task exactly once)");
      sqlite3_log(SQLITE_MISUSE, "%s", t_errmsg.c_str());
      return;
    }
    switch (RunTask(t)) {
      case RunResult::kRan:
        Ok();
        break;
      case RunResult::kSkipped:
        Fail(SQLITE_MISUSE,
             "task_run: the callback was not run: its call was already over (it timed out "
             "after safeconc_call_timeout, or its owner was closed)");
        break;
      case RunResult::kWrongThread:
        Fail(SQLITE_MISUSE, "task_run: called off the owner thread; the call was failed");
        break;
    }
  } catch (...) {
    Fail(SQLITE_NOMEM, "task_run: out of memory");
  }
}

// Which create_* entry point a registration came through: what it must be given, and the
// name its messages carry.
enum class Shape { kScalar, kAggregate, kWindow };
const char* EntryPoint(Shape shape) {
  switch (shape) {
    case Shape::kScalar:
      return "create_function";
    case Shape::kAggregate:
      return "create_aggregate";
    case Shape::kWindow:
      return "create_window";
  }
  return "create";
}

int Create(Shape shape, sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* h,
           void* user_data, safeconc_callback_fn fn, safeconc_callback_fn step,
           safeconc_callback_fn final, safeconc_callback_fn value, safeconc_callback_fn inverse,
           safeconc_destroy_fn destroy) {
  const char* const what = EntryPoint(shape);
  try {
    std::shared_ptr<Owner> o;
    int rc = CheckOwner(h, &o, false, what);
    if (rc != SQLITE_OK) return rc;
    if (db == nullptr) return Fail(SQLITE_MISUSE, std::string(what) + ": db is NULL");
    if (name == nullptr || name[0] == '\0' || std::strlen(name) > 255) {
      return Fail(SQLITE_MISUSE, std::string(what) + ": the name must be 1 to 255 bytes");
    }
    if (nArg < -1 || nArg > 127) {
      return Fail(SQLITE_MISUSE, std::string(what) + " '" + name + "': nArg " +
                                     std::to_string(nArg) + " is not -1 or 0..127");
    }
    if ((flags & ~SAFECONC_FUNCTION_FLAGS) != 0) {
      return Fail(SQLITE_MISUSE, std::string(what) + " '" + name +
                                     "': flags may only combine SQLITE_DETERMINISTIC, "
                                     "SQLITE_DIRECTONLY and SQLITE_INNOCUOUS");
    }
    const bool scalar = fn != nullptr, aggregate = step != nullptr && final != nullptr;
    const bool window = aggregate && value != nullptr && inverse != nullptr;
    const bool complete = shape == Shape::kScalar      ? scalar
                          : shape == Shape::kAggregate ? aggregate
                                                       : window;
    if (!complete) {
      return Fail(SQLITE_MISUSE, std::string(what) + " '" + name + "': a callback is NULL");
    }
    std::string why;
    rc = CreateFunction(db, name, nArg, flags, o, user_data, fn, step, final, value, inverse,
                        destroy, &why);
    if (rc != SQLITE_OK) return Fail(rc, std::string(what) + " '" + name + "': " + why);
    return Ok();
  } catch (...) {
    return Fail(SQLITE_NOMEM, std::string(what) + ": out of memory");
  }
}

int ApiCreateFunction(sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* owner,
                      void* user_data, safeconc_callback_fn fn, safeconc_destroy_fn destroy) {
  return Create(Shape::kScalar, db, name, nArg, flags, owner, user_data, fn, nullptr, nullptr,
                nullptr, nullptr, destroy);
}
int ApiCreateAggregate(sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* owner,
                       void* user_data, safeconc_callback_fn step, safeconc_callback_fn final,
                       safeconc_destroy_fn destroy) {
  return Create(Shape::kAggregate, db, name, nArg, flags, owner, user_data, nullptr, step, final,
                nullptr, nullptr, destroy);
}
int ApiCreateWindow(sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* owner,
                    void* user_data, safeconc_callback_fn step, safeconc_callback_fn final,
                    safeconc_callback_fn value, safeconc_callback_fn inverse,
                    safeconc_destroy_fn destroy) {
  return Create(Shape::kWindow, db, name, nArg, flags, owner, user_data, nullptr, step, final,
                value, inverse, destroy);
}

int ApiInCallback(sqlite3* db) {
  try {
    return db != nullptr && InCallback(db) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

const char* ApiErrmsg() { return t_errmsg.c_str(); }

// ---- The callback context ------------------------------------------------------------------
// Direct path: SQLite's own values and context. Dispatched: the task's copies; results are
// recorded in the task and applied by the worker.

bool InRange(safeconc_ctx* c, int i) { return c != nullptr && i >= 0 && i < c->argc; }
CopiedValue* Copy(safeconc_ctx* c, int i) { return &c->task->args[static_cast<size_t>(i)]; }

// Text of a copied number, as SQLite would render it.
void ToText(CopiedValue* v) {
  if (v->type == SQLITE_INTEGER) {
    v->bytes = std::to_string(v->i);
  } else if (v->type == SQLITE_FLOAT) {
    char buf[40];
    sqlite3_snprintf(sizeof buf, buf, "%!.15g", v->d);
    v->bytes = buf;
  } else if (v->type == SQLITE_NULL) {
    v->bytes.clear();
  }
}

int ApiArgc(safeconc_ctx* c) { return c ? c->argc : 0; }
int ApiArgType(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return SQLITE_NULL;
  return c->task ? Copy(c, i)->type : sqlite3_value_type(c->argv[i]);
}
sqlite3_int64 ApiArgInt64(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return 0;
  if (!c->task) return sqlite3_value_int64(c->argv[i]);
  const CopiedValue* v = Copy(c, i);
  switch (v->type) {
    case SQLITE_INTEGER:
      return v->i;
    case SQLITE_FLOAT:
      return static_cast<sqlite3_int64>(v->d);
    case SQLITE_TEXT:
      return std::strtoll(v->bytes.c_str(), nullptr, 10);
    default:
      return 0;
  }
}
double ApiArgDouble(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return 0;
  if (!c->task) return sqlite3_value_double(c->argv[i]);
  const CopiedValue* v = Copy(c, i);
  switch (v->type) {
    case SQLITE_INTEGER:
      return static_cast<double>(v->i);
    case SQLITE_FLOAT:
      return v->d;
    case SQLITE_TEXT:
      return std::strtod(v->bytes.c_str(), nullptr);
    default:
      return 0;
  }
}
const unsigned char* ApiArgText(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return nullptr;
  if (!c->task) return sqlite3_value_text(c->argv[i]);
  CopiedValue* v = Copy(c, i);
  if (v->type == SQLITE_NULL) return nullptr;
  ToText(v);
  return reinterpret_cast<const unsigned char*>(v->bytes.c_str());
}
const void* ApiArgBlob(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return nullptr;
  if (!c->task) return sqlite3_value_blob(c->argv[i]);
  CopiedValue* v = Copy(c, i);
  if (v->type == SQLITE_NULL) return nullptr;
  ToText(v);
  return v->bytes.empty() ? nullptr : v->bytes.data();
}
int ApiArgBytes(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return 0;
  if (!c->task) return sqlite3_value_bytes(c->argv[i]);
  CopiedValue* v = Copy(c, i);
  ToText(v);
  return static_cast<int>(v->bytes.size());
}
void* ApiUserData(safeconc_ctx* c) { return c && c->func ? c->func->user_data : nullptr; }
void** ApiAggregateState(safeconc_ctx* c) { return c ? c->agg_slot : nullptr; }

// Result setters. In the dispatched path they record into the task; a later setter replaces
// an earlier one, as with sqlite3_result_*.
CopiedValue* Result(safeconc_ctx* c) {
  Task* t = c->task;
  t->result_set = true;
  t->is_error = false;
  t->result.zeroblob = -1;
  return &t->result;
}
void ApiResultNull(safeconc_ctx* c) {
  if (!c) return;
  if (!c->task) return sqlite3_result_null(c->sctx);
  Result(c)->type = SQLITE_NULL;
}
void ApiResultInt64(safeconc_ctx* c, sqlite3_int64 v) {
  if (!c) return;
  if (!c->task) return sqlite3_result_int64(c->sctx, v);
  CopiedValue* r = Result(c);
  r->type = SQLITE_INTEGER;
  r->i = v;
}
void ApiResultDouble(safeconc_ctx* c, double v) {
  if (!c) return;
  if (!c->task) return sqlite3_result_double(c->sctx, v);
  CopiedValue* r = Result(c);
  r->type = SQLITE_FLOAT;
  r->d = v;
}
// NULL data, negative and huge lengths are treated as SQLite's own sqlite3_result_* treat
// them (checked against 3.40, built with SQLITE_ENABLE_API_ARMOR where the plain build's
// behaviour is undefined): NULL data is an SQL NULL whatever the length (but see result_blob
// for (NULL, 0)); text with a negative
// length runs to its first NUL; a negative blob length, and a text or blob longer than the
// connection's SQLITE_LIMIT_LENGTH, fail with SQLITE_TOOBIG; a negative zeroblob size is 0.
void TaskError(Task* t, int code, const char* msg) {
  t->is_error = true;
  t->error_code = code;
  try {
    t->error = msg;
  } catch (...) {
    t->error_code = SQLITE_NOMEM;
  }
}
void ApiResultText(safeconc_ctx* c, const char* text, int bytes) {
  if (!c) return;
  if (text == nullptr) return ApiResultNull(c);
  const size_t n = bytes < 0 ? std::strlen(text) : static_cast<size_t>(bytes);
  if (!c->task) return sqlite3_result_text64(c->sctx, text, n, SQLITE_TRANSIENT, SQLITE_UTF8);
  if (static_cast<int64_t>(n) > c->task->max_len)
    return TaskError(c->task, SQLITE_TOOBIG, "string or blob too big");
  try {
    CopiedValue* r = Result(c);
    r->type = SQLITE_TEXT;
    r->bytes.assign(text, n);
  } catch (...) {
    TaskError(c->task, SQLITE_NOMEM, "out of memory");
  }
}
void ApiResultBlob(safeconc_ctx* c, const void* data, int bytes) {
  if (!c) return;
  // One deliberate difference: (NULL, 0) is an empty blob, not NULL. arg_blob() returns NULL
  // for an empty blob (as sqlite3_value_blob does), and so may a binding's empty buffer;
  // result_blob(arg_blob(i), arg_bytes(i)) must give X'' back, not turn it into NULL.
  if (data == nullptr && bytes == 0) data = "";
  if (data == nullptr) return ApiResultNull(c);
  if (bytes < 0) {
    static const char kNegative[] = "result_blob: negative length";
    if (!c->task) {
      sqlite3_result_error(c->sctx, kNegative, -1);
      sqlite3_result_error_code(c->sctx, SQLITE_TOOBIG);
      return;
    }
    return TaskError(c->task, SQLITE_TOOBIG, kNegative);
  }
  const size_t n = static_cast<size_t>(bytes);
  if (!c->task) return sqlite3_result_blob64(c->sctx, data, n, SQLITE_TRANSIENT);
  if (static_cast<int64_t>(n) > c->task->max_len)
    return TaskError(c->task, SQLITE_TOOBIG, "string or blob too big");
  try {
    CopiedValue* r = Result(c);
    r->type = SQLITE_BLOB;
    r->bytes.assign(static_cast<const char*>(data), n);
  } catch (...) {
    TaskError(c->task, SQLITE_NOMEM, "out of memory");
  }
}
void ApiResultZeroblob(safeconc_ctx* c, int bytes) {
  if (!c) return;
  const sqlite3_uint64 n = bytes < 0 ? 0 : static_cast<sqlite3_uint64>(bytes);
  if (!c->task) {
    sqlite3_result_zeroblob64(c->sctx, n);  // too big for the connection: SQLITE_TOOBIG
    return;
  }
  CopiedValue* r = Result(c);
  r->type = SQLITE_BLOB;
  r->zeroblob = static_cast<int>(n);  // ApplyResult checks the limit on the worker
}
void ApiResultError(safeconc_ctx* c, const char* message, int code) {
  if (!c) return;
  const char* msg = message ? message : "error in a user-defined function";
  if (code == 0) code = SQLITE_ERROR;
  if (!c->task) {
    sqlite3_result_error(c->sctx, msg, -1);
    if (code != SQLITE_ERROR) sqlite3_result_error_code(c->sctx, code);
    return;
  }
  try {
    c->task->is_error = true;
    c->task->error = msg;
    c->task->error_code = code;
  } catch (...) {
    c->task->error_code = SQLITE_NOMEM;
  }
}
void ApiResultArg(safeconc_ctx* c, int i) {
  if (!InRange(c, i)) return ApiResultNull(c);
  if (!c->task) return sqlite3_result_value(c->sctx, c->argv[i]);
  try {
    const CopiedValue v = *Copy(c, i);
    *Result(c) = v;
  } catch (...) {
    c->task->is_error = true;
    c->task->error = "out of memory";
    c->task->error_code = SQLITE_NOMEM;
  }
}

const safeconc_api_v1 kApiV1 = {
    1,
    ApiOwnerOpen,
    ApiOwnerOpenFd,
    ApiOwnerFd,
    ApiOwnerDrain,
    ApiOwnerClose,
    ApiTaskRun,
    ApiCreateFunction,
    ApiCreateAggregate,
    ApiCreateWindow,
    ApiInCallback,
    ApiErrmsg,
    ApiArgc,
    ApiArgType,
    ApiArgInt64,
    ApiArgDouble,
    ApiArgText,
    ApiArgBlob,
    ApiArgBytes,
    ApiUserData,
    ApiAggregateState,
    ApiResultNull,
    ApiResultInt64,
    ApiResultDouble,
    ApiResultText,
    ApiResultBlob,
    ApiResultZeroblob,
    ApiResultError,
    ApiResultArg,
};

}  // namespace
}  // namespace safeconc

namespace safeconc {

// The table of the copy of the library that owns the registered `safeconc` VFS. Two copies
// loaded from different paths do not stack (the second defers to the first, shim_vfs.cc); a
// binding that reaches the second copy's symbol must still get the table whose knobs, stats
// and owners are the ones the VFS uses, so it gets the first copy's.
const void* ApiTable(int version) {
  if (Loaded() && !VfsOwnedByThisCopy()) {
    if (sqlite3_vfs* v = VfsOfOtherCopy()) {
      Dl_info other, self;
      // Compared by object, not by &safeconc_api: SQLite loads extensions RTLD_GLOBAL, so this
      // copy's own reference to its exported symbol binds to the first copy's definition.
      if (dladdr(reinterpret_cast<void*>(v->xOpen), &other) != 0 && other.dli_fname != nullptr &&
          dladdr(reinterpret_cast<void*>(&ApiTable), &self) != 0 &&
          other.dli_fbase != self.dli_fbase) {
        // RTLD_NOLOAD: only a copy that is loaded already (it registered the VFS); the handle's
        // reference is dropped at once, the library stays (SQLITE_OK_LOAD_PERMANENTLY).
        if (void* so = dlopen(other.dli_fname, RTLD_NOW | RTLD_NOLOAD)) {
          using ApiFn = const void* (*)(int);
          auto fn = reinterpret_cast<ApiFn>(dlsym(so, SAFECONC_API_SYMBOL));
          dlclose(so);
          if (fn != nullptr) return fn(version);
        }
      }
    }
    // Unreachable owner copy: this copy's table, whose calls fail with kOtherCopy.
  }
  return version == 1 ? &kApiV1 : nullptr;
}

}  // namespace safeconc
