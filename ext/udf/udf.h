// trampoline.h - the UDF trampoline table's internals: owners, tasks, registered functions
// and the callback context. The C API (include/safeconc.h) is a thin layer over this
// (ext/api.cc).
//
// Model. An Owner is one owner thread plus a way to hand it tasks (the binding's hook, or an
// eventfd and a queue). A Func is one registered function: host callbacks, user data, its
// owner. When SQLite calls a Func on the owner thread, the callback runs directly on
// SQLite's own context and values. On another thread, the call becomes a Task: arguments
// copied into it, dispatched to the owner, the worker parked on the task until the owner
// ran it or the connection's safeconc_call_timeout passed; then the worker applies the
// copied result with sqlite3_result_*.
//
// Task life cycle (state under Task::mu):
//   kQueued --owner takes it--> kRunning --owner done--> kDone     (worker applies result)
//   kQueued --worker timed out-> kAbandoned                         (owner skips it)
//   kRunning --worker timed out-> kAbandoned                        (owner discards result)
//   kQueued --owner closed / hook refused--> kFailed                (worker reports error)
// A task has two references, the worker's and the owner side's (the queue, or the host's
// loop for hook owners); whoever drops the last one returns it to the pool. Tasks are
// pooled: no allocation per call once warm.
//
// Mutex rules. Owner::mu guards the owner's state and queue; Task::mu guards a task's
// state and result hand-over; g_funcs_mu (trampoline.cc) the in-callback counts. No mutex
// is held while a host callback, a dispatch hook or SQLite runs. Lock order: Owner::mu
// before Task::mu (close fails queued tasks); nothing else nests.
#ifndef SAFECONC_EXT_UDF_UDF_H
#define SAFECONC_EXT_UDF_UDF_H

#include <sqlite3ext.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/intrusive_list.h"
#include "base/json.h"
#include "safeconc.h"

namespace safeconc {

using Clock = std::chrono::steady_clock;

struct Task;

// A copied SQL value (dispatched path): arguments and results.
struct CopiedValue {
  int type = SQLITE_NULL;
  sqlite3_int64 i = 0;
  double d = 0;
  std::string bytes;  // text (NUL-terminated by std::string) or blob
  int zeroblob = -1;  // >= 0: a zeroblob result of that size
  void Set(sqlite3_value* v);
};

class Owner;

// A registered function.
struct Func {
  std::string name;
  sqlite3* db = nullptr;  // the connection it is registered on
  std::shared_ptr<Owner> owner;
  void* user_data = nullptr;
  safeconc_callback_fn fn = nullptr;  // scalar
  safeconc_callback_fn step = nullptr, final = nullptr, value = nullptr, inverse = nullptr;
  safeconc_destroy_fn destroy = nullptr;
};

// kDestroy: run a function's user-data destructor on the owner thread (nobody waits).
enum class CallKind { kScalar, kStep, kFinal, kValue, kInverse, kDestroy };

// What a host callback sees (safeconc_ctx). Lives on the stack of whoever runs the callback.
struct Ctx {
  Func* func = nullptr;
  CallKind kind = CallKind::kScalar;
  // Direct path: SQLite's own context and values.
  sqlite3_context* sctx = nullptr;
  sqlite3_value** argv = nullptr;
  // Dispatched path: the task's copies.
  Task* task = nullptr;
  int argc = 0;
  void** agg_slot = nullptr;
};

struct Task {
  // Guarded by mu (state is atomic so a worker may spin on it without the lock).
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<int> state{0};
  std::atomic<int> refs{0};
  // Set by the worker before dispatch, read by the owner while running (ordered by the
  // dispatch hand-over and by mu).
  std::shared_ptr<Func> func;
  std::shared_ptr<Owner> owner;
  CallKind kind = CallKind::kScalar;
  sqlite3* db = nullptr;
  int argc = 0;
  std::vector<CopiedValue> args;
  // The group's host state, copied in and (when done) back out by the worker: the owner
  // never touches SQLite's aggregate memory, which a worker that gave up may free.
  void* agg_value = nullptr;
  // The connection's SQLITE_LIMIT_LENGTH, read by the worker at dispatch: the owner refuses
  // a longer text or blob result without copying it (SQLite would refuse it as too big).
  int64_t max_len = 1000000000;
  Clock::time_point dispatched;
  // Written by the owner while running, read by the worker after kDone.
  CopiedValue result;
  bool result_set = false;
  bool is_error = false;
  int error_code = 0;
  std::string error;
  ListLink<Task> queue_link;  // in an fd owner's queue (Owner::queue_), guarded by Owner::mu_
  // The handle a dispatch hook got for this task (see HandOut), 0 if none. Written by the
  // worker before the hook call; erased from the handle table by the first task_run.
  uint64_t handle = 0;

  enum State : int { kFree, kQueued, kRunning, kDone, kAbandoned, kFailed };
};

// One owner thread and its dispatch.
class Owner {
 public:
  // Constant after construction.
  const uint64_t id;
  const uint64_t tid;               // the owner thread (kernel id)
  const safeconc_dispatch_fn hook;  // null: the built-in fd kind
  void* const hook_arg;
  const int fd;  // eventfd of the fd kind, else -1

  Owner(uint64_t id_, uint64_t tid_, safeconc_dispatch_fn h, void* arg, int efd);
  ~Owner();

  bool OnOwnerThread() const;
  // Hands t to the owner. Returns false (t failed, nothing queued) if the owner is closed
  // or the hook refused.
  bool Dispatch(Task* t, std::string* why);
  // fd kind, on the owner thread: runs up to max queued tasks.
  int Drain(int max);
  // On the owner thread: fails pending tasks, refuses new ones.
  void Close();
  // Lock-free read (the direct path asks on every call): written under mu_ with release
  // by Close(), read with acquire.
  bool closed() const { return closed_.load(std::memory_order_acquire); }
  // A hook task reached task_run: it is no longer the host's to fail on close.
  void TaskStarted(Task* t);
  std::string Name() const { return "owner #" + std::to_string(id); }

 private:
  std::mutex mu_;
  std::atomic<bool> closed_{false};               // written under mu_ (Close), read anywhere
  IntrusiveList<Task, &Task::queue_link> queue_;  // fd kind: queued tasks, guarded by mu_
  std::vector<Task*> in_host_;  // hook kind: tasks handed to the hook, not yet run
  void ForgetInHost(Task* t);   // requires mu_
  // Hook calls in progress (guarded by mu_). Close() waits for them to return, so after it
  // the binding may free whatever the hook uses (hook_arg, a threadsafe function...).
  int hooks_running_ = 0;
  std::condition_variable hooks_done_;
};

// The pool of tasks.
Task* AcquireTask();
void ReleaseTask(Task* t);  // drops one reference; the last returns it to the pool

// Runs a task on the owner thread (fd drain, or task_run from a hook). kSkipped: the call
// was over before the owner got to it (the worker timed out, or close/refusal failed it), so
// the callback did not run; kWrongThread: called off the owner thread, the call was failed.
enum class RunResult { kRan, kSkipped, kWrongThread };
RunResult RunTask(Task* t);

// Dispatch-hook handles. A hook never sees a Task's address: tasks are pooled, so a pointer
// kept after its run could name another call's task by the time it is run again. Each hand-over
// gets a fresh handle, never reused (a 64-bit counter); task_run takes it out of the table, so
// a second run, a run after the call was refused, or a made-up pointer finds nothing and is
// refused with SQLITE_MISUSE instead of touching a recycled task.
safeconc_task* HandOut(Task* t);
// The task behind h, removed from the table; null if h is not (or no longer) handed out.
Task* TakeHandedOut(safeconc_task* h);
// Forgets handle h (the hook refused its task: it will never be run).
void ForgetHandle(safeconc_task* h);
// task_run calls refused because their handle was unknown (safeconc_stats "misuse").
uint64_t RefusedTaskRuns();
void CountRefusedTaskRun();

// Registration (ext/trampoline.cc). Returns an SQLite code; *why on failure.
int CreateFunction(sqlite3* db, const char* name, int nArg, int flags,
                   const std::shared_ptr<Owner>& owner, void* user_data, safeconc_callback_fn fn,
                   safeconc_callback_fn step, safeconc_callback_fn final,
                   safeconc_callback_fn value, safeconc_callback_fn inverse,
                   safeconc_destroy_fn destroy, std::string* why);
bool InCallback(sqlite3* db);

// Stats for safeconc_stats(): the "udf" object.
void WriteUdfJson(JsonWriter& w);

}  // namespace safeconc

// The opaque C types are these.
struct safeconc_ctx : safeconc::Ctx {};
struct safeconc_task : safeconc::Task {};
struct safeconc_owner {
  std::shared_ptr<safeconc::Owner> impl;
};

#endif  // SAFECONC_EXT_UDF_UDF_H
