// call.cc - the functions SQLite calls (xFunc, xStep, xFinal, xValue, xInverse, xDestroy)
// that run host callbacks on their owner thread: directly when SQLite calls on the owner
// thread, else as a Task dispatched to it. Registration. See udf.h for the model.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "ext/udf/call.h"

#include "ext/udf/owner.h"
#include "ext/udf/stats.h"
#include "ext/udf/thread_state.h"
#include "vfs/knobs.h"
#include "vfs/shim.h"  // ConnectionKnob

namespace safeconc {

void Invoke(Func* f, CallKind kind, safeconc_ctx* c) {
  switch (kind) {
    case CallKind::kScalar:
      f->fn(c);
      break;
    case CallKind::kStep:
      f->step(c);
      break;
    case CallKind::kFinal:
      f->final(c);
      break;
    case CallKind::kValue:
      f->value(c);
      break;
    case CallKind::kInverse:
      f->inverse(c);
      break;
    case CallKind::kDestroy:
      break;  // RunTask handles it
  }
}

// ---- The functions SQLite calls -----------------------------------------------------------------

namespace {

// SQLite's user data for a registered function: a shared_ptr to the Func, so tasks in
// flight keep it alive after SQLite deleted or replaced the function.
struct FuncHolder {
  std::shared_ptr<Func> func;
  // Cached for the direct path (fewer dependent loads per call); constant, like func.
  Func* f;
  Owner* owner;
  uint64_t owner_tid;
};

void CallError(sqlite3_context* sctx, const std::string& msg, int code = SQLITE_ERROR) {
  sqlite3_result_error(sctx, msg.c_str(), static_cast<int>(msg.size()));
  if (code != SQLITE_ERROR) sqlite3_result_error_code(sctx, code);
  g_udf_stats.failed.fetch_add(1, std::memory_order_relaxed);
}

void ApplyResult(sqlite3_context* sctx, Task* t) {
  if (t->is_error) {
    sqlite3_result_error(sctx, t->error.c_str(), static_cast<int>(t->error.size()));
    if (t->error_code != 0 && t->error_code != SQLITE_ERROR) {
      sqlite3_result_error_code(sctx, t->error_code);
    }
    return;
  }
  if (!t->result_set) return;  // NULL, as SQLite's default
  const CopiedValue& r = t->result;
  switch (r.type) {
    case SQLITE_INTEGER:
      sqlite3_result_int64(sctx, r.i);
      break;
    case SQLITE_FLOAT:
      sqlite3_result_double(sctx, r.d);
      break;
    case SQLITE_TEXT:
      sqlite3_result_text64(sctx, r.bytes.data(), r.bytes.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      break;
    case SQLITE_BLOB:
      if (r.zeroblob >= 0) {
        sqlite3_result_zeroblob64(sctx, static_cast<sqlite3_uint64>(r.zeroblob));
      } else {
        sqlite3_result_blob64(sctx, r.bytes.data(), r.bytes.size(), SQLITE_TRANSIENT);
      }
      break;
    default:
      sqlite3_result_null(sctx);
      break;
  }
}

// The worker's wait for a dispatched task: spins briefly (an owner that is idle in its loop
// answers within microseconds), then parks until the owner is done or `deadline` passes. On
// a timeout the task becomes kAbandoned: not started, the owner skips it; running, its result
// is discarded. Returns the final state: kDone, kFailed or kAbandoned.
int AwaitOwner(Task* t, Clock::time_point deadline) {
  int s = t->state.load(std::memory_order_acquire);
  for (int spin = 0; spin < 200 && s != Task::kDone && s != Task::kFailed; ++spin) {
    s = t->state.load(std::memory_order_acquire);
  }
  MutexLock l(&t->mu);
  auto over = [&] {
    s = t->state.load(std::memory_order_relaxed);
    return s == Task::kDone || s == Task::kFailed;
  };
  while (!over()) {
    if (!t->cv.WaitUntil(&t->mu, deadline)) {
      over();  // timed out: one last look, under mu
      break;
    }
  }
  if (s != Task::kDone && s != Task::kFailed) {
    s = Task::kAbandoned;
    t->state.store(s, std::memory_order_relaxed);
  }
  return s;
}

// The dispatched path (a worker thread): out of line, so the direct path stays small.
[[gnu::noinline]] void DispatchCall(sqlite3_context* sctx, FuncHolder* h, int argc,
                                    sqlite3_value** argv, CallKind kind, void** slot) {
  Func* f = h->func.get();
  Owner* o = f->owner.get();
  sqlite3* const db = f->db;
  const int64_t timeout_ms = ConnectionKnob(db, Knob::kCallTimeout);
  Task* t;
  try {
    t = AcquireTask();
    t->func = h->func;
    t->owner = f->owner;
    t->kind = kind;
    t->db = db;
    t->argc = argc;
    if (t->args.size() < static_cast<size_t>(argc)) t->args.resize(static_cast<size_t>(argc));
    for (int i = 0; i < argc; ++i) t->args[static_cast<size_t>(i)].Set(argv[i]);
  } catch (...) {
    sqlite3_result_error_nomem(sctx);
    return;
  }
  t->agg_value = slot ? *slot : nullptr;
  t->max_len = sqlite3_limit(sqlite3_context_db_handle(sctx), SQLITE_LIMIT_LENGTH, -1);
  t->refs.store(2, std::memory_order_relaxed);  // this worker's, and the owner side's
  t->state.store(Task::kQueued, std::memory_order_relaxed);
  t->dispatched = Clock::now();
  g_udf_stats.dispatched.fetch_add(1, std::memory_order_relaxed);

  std::string why;
  bool queued;
  try {
    queued = o->Dispatch(t, &why);
  } catch (...) {
    queued = false;
    why = "out of memory";
  }
  if (!queued) {
    t->refs.fetch_sub(1, std::memory_order_relaxed);  // nobody holds the owner side's
    CallError(sctx, "safeconc: function '" + f->name + "': " + why);
    ReleaseTask(t);
    return;
  }

  const int s = AwaitOwner(t, t->dispatched + std::chrono::milliseconds(timeout_ms));
  if (s == Task::kAbandoned) {
    g_udf_stats.timeouts.fetch_add(1, std::memory_order_relaxed);
    CallError(sctx, "safeconc: function '" + f->name + "' timed out: " + o->Name() +
                        " did not run it within safeconc_call_timeout=" +
                        std::to_string(timeout_ms) + " ms (is the owner thread blocked?)");
  } else if (s == Task::kFailed) {
    CallError(sctx, "safeconc: function '" + f->name + "': " + t->error);
  } else {
    if (slot) *slot = t->agg_value;
    ApplyResult(sctx, t);
    AddDispatchLatency(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t->dispatched)
            .count()));
  }
  ReleaseTask(t);
}

// The kind is a template parameter so each entry point (xFunc, xStep, ...) compiles to a
// straight line: no switch on the hot path.
template <CallKind kind>
inline void Call(sqlite3_context* sctx, int argc, sqlite3_value** argv) {
  FuncHolder* h = static_cast<FuncHolder*>(sqlite3_user_data(sctx));
  Func* f = h->f;
  Owner* o = h->owner;
  void** slot = nullptr;
  if constexpr (kind != CallKind::kScalar) {
    slot = static_cast<void**>(sqlite3_aggregate_context(sctx, sizeof(void*)));
    if (slot == nullptr) {
      sqlite3_result_error_nomem(sctx);
      return;
    }
  }
  ThreadState& self = ThisThread();
  if (self.tid != h->owner_tid) return DispatchCall(sctx, h, argc, argv, kind, slot);
  if (o->closed()) {
    CallError(sctx, "safeconc: function '" + f->name + "': " + o->Name() + " is closed");
    return;
  }
  // The direct path: SQLite's own context and values, no copy, no queue.
  safeconc_ctx c;
  c.func = f;
  c.kind = kind;
  c.sctx = sctx;
  c.argv = argv;
  c.argc = argc;
  c.agg_slot = slot;
  self.direct->store(self.direct->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  InCallbackScope scope(self, f->db);
  if constexpr (kind == CallKind::kScalar) {
    f->fn(&c);
  } else {
    Invoke(f, kind, &c);
  }
}

void XFunc(sqlite3_context* c, int n, sqlite3_value** v) { Call<CallKind::kScalar>(c, n, v); }
void XStep(sqlite3_context* c, int n, sqlite3_value** v) { Call<CallKind::kStep>(c, n, v); }
void XFinal(sqlite3_context* c) { Call<CallKind::kFinal>(c, 0, nullptr); }
void XValue(sqlite3_context* c) { Call<CallKind::kValue>(c, 0, nullptr); }
void XInverse(sqlite3_context* c, int n, sqlite3_value** v) { Call<CallKind::kInverse>(c, n, v); }

// SQLite deletes the function (replaced, deleted, connection closed, or registration
// failed): the host's destructor runs on the owner thread, now if this is it, else posted.
// The holder whose registration this thread is making now (CreateFunction). SQLite calls the
// destructor of a function it refuses to register right inside the create call; that holder's
// host destructor is not run, so a failed create_* leaves the user data with the caller, on
// every path (see safeconc.h). Cold: only the create and destroy paths read it.
thread_local const FuncHolder* t_registering = nullptr;

void XDestroy(void* p) {
  FuncHolder* h = static_cast<FuncHolder*>(p);
  std::shared_ptr<Func> f = std::move(h->func);
  const bool refused = h == t_registering;
  delete h;
  if (f->destroy == nullptr || refused) return;
  Owner* o = f->owner.get();
  if (o->OnOwnerThread()) {
    if (!o->closed()) f->destroy(f->user_data);
    return;
  }
  Task* t;
  try {
    t = AcquireTask();
  } catch (...) {
    return;  // documented: the destructor may not run when memory is exhausted
  }
  t->func = f;
  t->owner = f->owner;
  t->kind = CallKind::kDestroy;
  t->db = nullptr;
  t->argc = 0;
  t->refs.store(1, std::memory_order_relaxed);  // only the owner side's: nobody waits
  t->state.store(Task::kQueued, std::memory_order_relaxed);
  std::string why;
  bool queued = false;
  try {
    queued = o->Dispatch(t, &why);
  } catch (...) {
  }
  if (!queued) ReleaseTask(t);  // owner closed: never call into a runtime that may be gone
}

}  // namespace

int CreateFunction(sqlite3* db, const char* name, int nArg, int flags,
                   const std::shared_ptr<Owner>& owner, void* user_data, safeconc_callback_fn fn,
                   safeconc_callback_fn step, safeconc_callback_fn final,
                   safeconc_callback_fn value, safeconc_callback_fn inverse,
                   safeconc_destroy_fn destroy, std::string* why) {
  auto f = std::make_shared<Func>();
  f->name = name;
  f->db = db;
  f->owner = owner;
  f->user_data = user_data;
  f->fn = fn;
  f->step = step;
  f->final = final;
  f->value = value;
  f->inverse = inverse;
  f->destroy = destroy;
  auto* h = new FuncHolder{f, f.get(), owner.get(), owner->tid};
  const int eflags = flags | SQLITE_UTF8;
  int rc;
  const FuncHolder* const outer = t_registering;  // a destructor may register a function
  t_registering = h;
  if (fn != nullptr) {
    rc = sqlite3_create_function_v2(db, name, nArg, eflags, h, XFunc, nullptr, nullptr, XDestroy);
  } else if (value != nullptr) {
    rc = sqlite3_create_window_function(db, name, nArg, eflags, h, XStep, XFinal, XValue, XInverse,
                                        XDestroy);
  } else {
    rc = sqlite3_create_function_v2(db, name, nArg, eflags, h, nullptr, XStep, XFinal, XDestroy);
  }
  t_registering = outer;
  // On failure SQLite already called XDestroy, which freed the holder but, seeing
  // t_registering, did not run the host's destructor: the user data is still the caller's.
  if (rc != SQLITE_OK) *why = sqlite3_errmsg(db);
  return rc;
}

}  // namespace safeconc
