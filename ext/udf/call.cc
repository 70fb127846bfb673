// trampoline.cc - owners, the task pool, and the functions SQLite calls (xFunc, xStep,
// xFinal, xValue, xInverse, xDestroy) that run host callbacks on their owner thread. The
// model, the task life cycle and the mutex rules are in trampoline.h.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "ext/udf/udf.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <unordered_map>

#include "base/histogram.h"
#include "base/thread_id.h"
#include "vfs/knobs.h"
#include "vfs/shim.h"  // ConnectionKnob

namespace safeconc {
namespace {

// ---- Stats ------------------------------------------------------------------------------
// Counters: relaxed atomics, each an independent count. The histogram: under g_stats_mu.
std::atomic<uint64_t> g_dispatched{0}, g_timeouts{0}, g_failed{0};
// Gauges for leak checks: owners opened and not closed; tasks taken from the pool and not
// returned (in flight, or held by a host loop that has not run them yet).
std::atomic<int64_t> g_owners_open{0}, g_tasks_in_use{0};
std::mutex g_stats_mu;

// Direct calls are counted per thread (a shared counter would cost a locked instruction on
// the hot path): each thread's counter has one writer (that thread: relaxed load + store, no
// lock prefix) and is read by safeconc_stats() under g_direct_mu, which also guards the list
// of live counters and the total of exited threads.
struct DirectCounter {
  std::atomic<uint64_t> n{0};
  DirectCounter();
  ~DirectCounter();
};
std::mutex g_direct_mu;
std::vector<DirectCounter*>& DirectCounters() {
  static auto* v = new std::vector<DirectCounter*>();  // leaked: threads exit after main
  return *v;
}
uint64_t g_direct_exited = 0;  // guarded by g_direct_mu
DirectCounter::DirectCounter() {
  std::lock_guard<std::mutex> l(g_direct_mu);
  DirectCounters().push_back(this);
}
DirectCounter::~DirectCounter() {
  std::lock_guard<std::mutex> l(g_direct_mu);
  auto& v = DirectCounters();
  v.erase(std::find(v.begin(), v.end(), this));
  g_direct_exited += n.load(std::memory_order_relaxed);
}
// The calling thread's state as the trampoline sees it (its id, its direct-call counter, the
// callbacks it is running): everything the direct path needs, in one zero-initialised
// thread-local read once per call. In a dlopen()ed library each thread-local access is otherwise a
// call to
// __tls_get_addr (callgrind: a third of the trampoline's per-call cost); initial-exec makes
// it one instruction, from the static TLS surplus glibc keeps for dlopen()ed libraries.
constexpr int kMaxNest = 16;  // nested callbacks tracked for in_callback()
struct ThreadState {
  uint64_t tid;                   // this thread's id, 0 until first asked
  std::atomic<uint64_t>* direct;  // this thread's direct-call counter, null until first call
  int depth;                      // callbacks running on this thread (may exceed kMaxNest)
  sqlite3* callbacks[kMaxNest];   // their connections, innermost last
};
__attribute__((tls_model("initial-exec"))) thread_local ThreadState t_thread_state;

[[gnu::noinline]] void InitThreadState(ThreadState& h) {
  h.tid = CurrentThreadId();
  thread_local DirectCounter counter;  // folds its count in when the thread exits
  h.direct = &counter.n;
}

// The calling thread's ThreadState, filled in on its first call.
inline ThreadState& ThisThread() {
  ThreadState& h = t_thread_state;
  if (__builtin_expect(h.tid == 0, 0)) InitThreadState(h);  // first call on this thread
  return h;
}
uint64_t DirectTotal() {
  std::lock_guard<std::mutex> l(g_direct_mu);
  uint64_t total = g_direct_exited;
  for (DirectCounter* c : DirectCounters()) total += c->n.load(std::memory_order_relaxed);
  return total;
}

Histogram* DispatchHistogram() {
  static Histogram* h = new Histogram();  // leaked: used until process exit
  return h;
}

// ---- In-callback tracking ------------------------------------------------------------------
// Each thread keeps the stack of connections whose host callback it is running (callbacks can
// nest: a callback may step another statement), in ThreadState. in_callback(db) asks about the
// calling thread, which is the question a binding has when its callback code calls close()
// or steps the running statement again. Nothing shared on the hot path.
// Callbacks nested deeper than kMaxNest keep their connections in a cold, growable stack.
struct DeepCallbacks {
  std::vector<sqlite3*> dbs;  // depth kMaxNest and below, innermost last
  int lost = 0;               // pushes that failed (out of memory): in_callback() says yes
};
DeepCallbacks& Deep() {
  thread_local DeepCallbacks d;
  return d;
}
[[gnu::noinline]] void PushDeep(sqlite3* db) {
  try {
    Deep().dbs.push_back(db);
  } catch (...) {
    ++Deep().lost;
  }
}
[[gnu::noinline]] void PopDeep() {
  DeepCallbacks& d = Deep();
  if (d.lost > 0) {
    --d.lost;
  } else {
    d.dbs.pop_back();
  }
}

class InCallbackScope {
 public:
  InCallbackScope(ThreadState& h, sqlite3* db) : h_(h) {
    if (__builtin_expect(h_.depth < kMaxNest, 1)) {
      h_.callbacks[h_.depth] = db;
    } else {
      PushDeep(db);
    }
    ++h_.depth;
  }
  ~InCallbackScope() {
    if (--h_.depth >= kMaxNest) PopDeep();
  }
  InCallbackScope(const InCallbackScope&) = delete;
  InCallbackScope& operator=(const InCallbackScope&) = delete;

 private:
  ThreadState& h_;
};

// ---- Task pool ------------------------------------------------------------------------------
std::mutex g_pool_mu;
std::vector<Task*>& Pool() {
  static auto* v = new std::vector<Task*>();  // leaked: tasks may be in use at exit
  return *v;
}

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

// Fails a task that a worker waits for, if it was not taken yet.
void FailQueued(Task* t, const std::string& why) {
  {
    std::lock_guard<std::mutex> l(t->mu);
    if (t->state.load(std::memory_order_relaxed) != Task::kQueued) return;
    t->error = why;
    t->state.store(Task::kFailed, std::memory_order_release);
  }
  t->cv.notify_one();
}

}  // namespace

// ---- CopiedValue ------------------------------------------------------------------------------

void CopiedValue::Set(sqlite3_value* v) {
  type = sqlite3_value_type(v);
  zeroblob = -1;
  switch (type) {
    case SQLITE_INTEGER:
      i = sqlite3_value_int64(v);
      break;
    case SQLITE_FLOAT:
      d = sqlite3_value_double(v);
      break;
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_value_text(v);
      bytes.assign(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_value_bytes(v)));
      break;
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_value_blob(v);
      const int n = sqlite3_value_bytes(v);
      if (n > 0)
        bytes.assign(static_cast<const char*>(p), static_cast<size_t>(n));
      else
        bytes.clear();
      break;
    }
    default:
      break;
  }
}

// ---- Tasks ----------------------------------------------------------------------------------

Task* AcquireTask() {
  g_tasks_in_use.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> l(g_pool_mu);
    auto& pool = Pool();
    if (!pool.empty()) {
      Task* t = pool.back();
      pool.pop_back();
      return t;
    }
  }
  return new safeconc_task();
}

void ReleaseTask(Task* t) {
  if (t->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // The last reference: nobody else can reach t. Drop what keeps other objects alive, keep
  // buffers' capacity for the next call.
  t->func.reset();
  t->owner.reset();
  t->state.store(Task::kFree, std::memory_order_relaxed);
  t->result_set = false;
  t->is_error = false;
  t->error_code = 0;
  t->error.clear();
  t->handle = 0;
  g_tasks_in_use.fetch_sub(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> l(g_pool_mu);
  Pool().push_back(t);
}

RunResult RunTask(Task* t) {
  Owner* o = t->owner.get();
  if (o->hook != nullptr) o->TaskStarted(t);
  if (!o->OnOwnerThread()) {
    // A binding bug (its hook ran the task elsewhere): running the callback here is the very
    // crash this library exists to prevent. Fail the call instead.
    FailQueued(t, "task_run was called off the owner thread of " + o->Name() +
                      " (the dispatch hook must run tasks on the owner thread)");
    ReleaseTask(t);
    return RunResult::kWrongThread;
  }
  bool run = false;
  {
    std::lock_guard<std::mutex> l(t->mu);
    if (t->state.load(std::memory_order_relaxed) == Task::kQueued) {
      t->state.store(Task::kRunning, std::memory_order_relaxed);
      run = true;
    }
  }
  if (run) {
    if (t->kind == CallKind::kDestroy) {
      if (t->func->destroy) t->func->destroy(t->func->user_data);
      t->state.store(Task::kDone, std::memory_order_relaxed);  // no worker waits for it
    } else {
      safeconc_ctx c;
      c.func = t->func.get();
      c.kind = t->kind;
      c.task = t;
      c.argc = t->argc;
      c.agg_slot = &t->agg_value;  // the task's copy; the worker copies it back when done
      {
        InCallbackScope scope(ThisThread(), t->db);
        Invoke(t->func.get(), t->kind, &c);
      }
      std::lock_guard<std::mutex> l(t->mu);
      if (t->state.load(std::memory_order_relaxed) == Task::kRunning) {
        t->state.store(Task::kDone, std::memory_order_release);
        t->cv.notify_one();
      }  // else the worker gave up: the result is discarded with the task
    }
  }
  ReleaseTask(t);  // the owner side's reference
  return run ? RunResult::kRan : RunResult::kSkipped;
}

// ---- Dispatch-hook handles ------------------------------------------------------------------
// g_handles_mu guards the table; it is a leaf (taken under Owner::mu by Dispatch, nothing is
// taken under it). Handles count up from an odd base in steps of 16: never reused, never a
// valid address to dereference, and never null.
std::mutex g_handles_mu;
std::unordered_map<uint64_t, Task*>& Handles() {
  static auto* m = new std::unordered_map<uint64_t, Task*>();  // leaked: tasks outlive main
  return *m;
}
uint64_t g_next_handle = 0x5afec0000001;  // guarded by g_handles_mu
std::atomic<uint64_t> g_refused_runs{0};

safeconc_task* HandOut(Task* t) {
  std::lock_guard<std::mutex> l(g_handles_mu);
  const uint64_t h = g_next_handle;
  g_next_handle += 16;
  Handles().emplace(h, t);  // may throw bad_alloc: Dispatch's caller fails the call
  t->handle = h;
  return reinterpret_cast<safeconc_task*>(static_cast<uintptr_t>(h));
}

Task* TakeHandedOut(safeconc_task* h) {
  const uint64_t key = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(h));
  std::lock_guard<std::mutex> l(g_handles_mu);
  auto it = Handles().find(key);
  if (it == Handles().end()) return nullptr;
  Task* t = it->second;
  Handles().erase(it);
  return t;
}

void ForgetHandle(safeconc_task* h) {
  std::lock_guard<std::mutex> l(g_handles_mu);
  Handles().erase(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(h)));
}

uint64_t RefusedTaskRuns() { return g_refused_runs.load(std::memory_order_relaxed); }
void CountRefusedTaskRun() { g_refused_runs.fetch_add(1, std::memory_order_relaxed); }

// ---- Owners -----------------------------------------------------------------------------------

Owner::Owner(uint64_t id_, uint64_t tid_, safeconc_dispatch_fn h, void* arg, int efd)
    : id(id_), tid(tid_), hook(h), hook_arg(arg), fd(efd) {
  g_owners_open.fetch_add(1, std::memory_order_relaxed);
}

Owner::~Owner() {
  if (!closed_.load(std::memory_order_relaxed))
    g_owners_open.fetch_sub(1, std::memory_order_relaxed);
  if (fd >= 0) ::close(fd);
}

bool Owner::OnOwnerThread() const { return ThisThread().tid == tid; }

void Owner::TaskStarted(Task* t) {
  std::lock_guard<std::mutex> l(mu_);
  ForgetInHost(t);
}

void Owner::ForgetInHost(Task* t) {
  auto it = std::find(in_host_.begin(), in_host_.end(), t);
  if (it != in_host_.end()) in_host_.erase(it);
}

bool Owner::Dispatch(Task* t, std::string* why) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (closed_.load(std::memory_order_relaxed)) {
      *why = Name() + " is closed";
      return false;
    }
    if (hook == nullptr) {
      queue_.PushBack(t);
    } else {
      in_host_.push_back(t);
      ++hooks_running_;
    }
  }
  safeconc_task* handle = nullptr;
  if (hook != nullptr) {
    try {
      handle = HandOut(t);
    } catch (...) {
      std::lock_guard<std::mutex> l(mu_);
      ForgetInHost(t);
      if (--hooks_running_ == 0) hooks_done_.notify_all();
      *why = "out of memory";
      return false;
    }
  }
  if (hook == nullptr) {
    const uint64_t one = 1;
    // An eventfd write only fails on counter overflow (2^64-2 unread signals).
    if (::write(fd, &one, sizeof one) != sizeof one) {
      // The task is queued; drain() still finds it on the next wake-up.
    }
    return true;
  }
  const int rc = hook(hook_arg, handle);
  if (rc != 0) ForgetHandle(handle);  // refused: a later task_run with it is refused too
  {
    std::lock_guard<std::mutex> l(mu_);
    // Refused: the hook will never run it. Take it back unless close() already failed it.
    if (rc != 0) ForgetInHost(t);
    if (--hooks_running_ == 0) hooks_done_.notify_all();
  }
  if (rc == 0) return true;
  *why =
      "the dispatch hook of " + Name() + " refused the call (returned " + std::to_string(rc) + ")";
  return false;
}

int Owner::Drain(int max) {
  uint64_t signals;
  // Non-blocking read: clears the readiness; tasks queued after it signal again.
  if (::read(fd, &signals, sizeof signals) < 0 && errno != EAGAIN) return -SQLITE_IOERR;
  int ran = 0;
  while (max <= 0 || ran < max) {
    Task* t;
    {
      std::lock_guard<std::mutex> l(mu_);
      t = queue_.PopFront();
    }
    if (t == nullptr) break;
    RunTask(t);
    ++ran;
  }
  if (max > 0 && ran == max) {
    std::lock_guard<std::mutex> l(mu_);
    if (!queue_.empty()) {
      const uint64_t one = 1;
      if (::write(fd, &one, sizeof one) != sizeof one) {
      }  // keep the fd readable for the rest
    }
  }
  return ran;
}

void Owner::Close() {
  IntrusiveList<Task, &Task::queue_link> queued;
  std::vector<Task*> in_host;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (closed_.load(std::memory_order_relaxed)) return;
    closed_.store(true, std::memory_order_release);
    g_owners_open.fetch_sub(1, std::memory_order_relaxed);
    queued.Swap(queue_);
  }
  {
    // A worker may be inside the hook right now (it checked closed_ before we set it). Wait
    // for it to return: the binding frees the hook's resources after owner_close, and hooks
    // never wait for the owner thread, so this wait is short. Only then is in_host_ final (a
    // refused task leaves it, and its worker fails it).
    std::unique_lock<std::mutex> l(mu_);
    hooks_done_.wait(l, [this] { return hooks_running_ == 0; });
    in_host = in_host_;  // the host's loop still holds these; it runs (or drops) them later
  }
  const std::string why = Name() + " was closed before it ran the call";
  while (Task* t = queued.PopFront()) {
    FailQueued(t, why);
    ReleaseTask(t);  // the queue's reference
  }
  for (Task* t : in_host) FailQueued(t, why);
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
  g_failed.fetch_add(1, std::memory_order_relaxed);
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
  g_dispatched.fetch_add(1, std::memory_order_relaxed);

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

  // Wait: spin briefly (an owner that is idle in its loop answers within microseconds),
  // then park until the owner is done or the timeout passes.
  const Clock::time_point deadline = t->dispatched + std::chrono::milliseconds(timeout_ms);
  int s = t->state.load(std::memory_order_acquire);
  for (int spin = 0; spin < 200 && s != Task::kDone && s != Task::kFailed; ++spin) {
    s = t->state.load(std::memory_order_acquire);
  }
  bool timed_out = false;
  {
    std::unique_lock<std::mutex> l(t->mu);
    t->cv.wait_until(l, deadline, [&] {
      s = t->state.load(std::memory_order_relaxed);
      return s == Task::kDone || s == Task::kFailed;
    });
    if (s != Task::kDone && s != Task::kFailed) {
      // Not started: the owner will skip it. Running: its result will be discarded.
      t->state.store(Task::kAbandoned, std::memory_order_relaxed);
      timed_out = true;
    }
  }
  if (timed_out) {
    g_timeouts.fetch_add(1, std::memory_order_relaxed);
    CallError(sctx, "safeconc: function '" + f->name + "' timed out: " + o->Name() +
                        " did not run it within safeconc_call_timeout=" +
                        std::to_string(timeout_ms) + " ms (is the owner thread blocked?)");
  } else if (s == Task::kFailed) {
    CallError(sctx, "safeconc: function '" + f->name + "': " + t->error);
  } else {
    if (slot) *slot = t->agg_value;
    ApplyResult(sctx, t);
    std::lock_guard<std::mutex> l(g_stats_mu);
    DispatchHistogram()->Add(static_cast<uint64_t>(
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

bool InCallback(sqlite3* db) {
  const ThreadState& h = ThisThread();
  const int n = h.depth < kMaxNest ? h.depth : kMaxNest;
  if (h.depth > kMaxNest) {
    const DeepCallbacks& d = Deep();
    // A connection whose push failed could be db: a refusal too many rather than a crash.
    if (d.lost > 0 || std::find(d.dbs.begin(), d.dbs.end(), db) != d.dbs.end()) return true;
  }
  return std::find(h.callbacks, h.callbacks + n, db) != h.callbacks + n;
}

void WriteUdfJson(JsonWriter& w) {
  w.Key("udf")
      .BeginObject()
      .Field("calls_direct", static_cast<int64_t>(DirectTotal()))
      .Field("calls_dispatched", static_cast<int64_t>(g_dispatched.load(std::memory_order_relaxed)))
      .Field("timeouts", static_cast<int64_t>(g_timeouts.load(std::memory_order_relaxed)))
      .Field("failed", static_cast<int64_t>(g_failed.load(std::memory_order_relaxed)))
      .Field("owners_open", g_owners_open.load(std::memory_order_relaxed))
      .Field("tasks_in_use", g_tasks_in_use.load(std::memory_order_relaxed))
      .Key("dispatch_us");
  {
    std::lock_guard<std::mutex> l(g_stats_mu);
    DispatchHistogram()->WriteJson(w);
  }
  w.EndObject();
}

}  // namespace safeconc
