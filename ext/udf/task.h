// task.h - one dispatched call (Task), the values it carries (CopiedValue), the pool tasks
// come from, and the handles a dispatch hook gets instead of task addresses.
//
// Life cycle (every transition out of kQueued or kRunning is made under Task::mu, so a
// worker's timeout and the owner's start or finish cannot both win):
//   kQueued --owner takes it--> kRunning --owner done--> kDone     (worker applies result)
//   kQueued --worker timed out-> kAbandoned                         (owner skips it)
//   kRunning --worker timed out-> kAbandoned                        (owner discards result)
//   kQueued --owner closed / hook refused--> kFailed                (worker reports error)
// A task has two references, the worker's and the owner side's (the queue, or the host's
// loop for hook owners); whoever drops the last one returns it to the pool. Tasks are
// pooled: no allocation per call once warm.
#ifndef SAFECONC_EXT_UDF_TASK_H
#define SAFECONC_EXT_UDF_TASK_H

#include <sqlite3ext.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/intrusive_list.h"
#include "base/sync.h"
#include "safeconc.h"

namespace safeconc {

using Clock = std::chrono::steady_clock;

struct Func;
class Owner;

// kDestroy: run a function's user-data destructor on the owner thread (nobody waits).
enum class CallKind { kScalar, kStep, kFinal, kValue, kInverse, kDestroy };

// A copied SQL value (dispatched path): arguments and results.
struct CopiedValue {
  int type = SQLITE_NULL;
  sqlite3_int64 i = 0;
  double d = 0;
  std::string bytes;  // text (NUL-terminated by std::string) or blob
  int zeroblob = -1;  // >= 0: a zeroblob result of that size
  void Set(sqlite3_value* v);
};

// Most fields are not guarded by a mutex but handed over whole, by one of three protocols;
// each group below names its own.
struct Task {
  enum State : int { kFree, kQueued, kRunning, kDone, kAbandoned, kFailed };

  // mu serialises the state transitions above (a leaf: nothing else is locked under it) and
  // cv wakes the worker on kDone or kFailed. state is atomic so the worker may spin on it
  // without mu: transitions are stored with release, the worker reads with acquire.
  Mutex mu;
  CondVar cv;
  std::atomic<int> state{kFree};
  std::atomic<int> refs{0};  // the worker's and the owner side's; the last one pools the task

  // Protocol 1, dispatch: written by the worker before Owner::Dispatch, read by the owner
  // after it took the task (from the queue under Owner::mu_, or from the handle table under
  // its mutex and then the host's own hand-over to the owner thread). Never written after.
  std::shared_ptr<Func> func;
  std::shared_ptr<Owner> owner;
  CallKind kind = CallKind::kScalar;
  sqlite3* db = nullptr;
  int argc = 0;
  std::vector<CopiedValue> args;
  // The connection's SQLITE_LIMIT_LENGTH, read by the worker at dispatch: the owner refuses
  // a longer text or blob result without copying it (SQLite would refuse it as too big).
  int64_t max_len = 1000000000;
  Clock::time_point dispatched;

  // Protocol 2, result: written by the owner while the task is kRunning, read by the worker
  // only after it saw kDone (the owner stores kDone under mu with release). agg_value goes
  // both ways: the group's host state, copied in by the worker at dispatch (protocol 1) and
  // back out by it when done; the owner never touches SQLite's aggregate memory, which a
  // worker that gave up may free.
  void* agg_value = nullptr;
  CopiedValue result;
  bool result_set = false;
  bool is_error = false;
  int error_code = 0;
  // Also protocol 3, failure: FailQueued writes it under mu with kQueued -> kFailed, when no
  // owner runs the task; the worker reads it after it saw kFailed.
  std::string error;

  // In an fd owner's queue: reached only through Owner::queue_, SC_GUARDED_BY(Owner::mu_).
  ListLink<Task> queue_link;
};

// The pool of tasks.
Task* AcquireTask();
void ReleaseTask(Task* t);  // drops one reference; the last returns it to the pool

// Fails a task that a worker waits for, if it was not taken yet (kQueued -> kFailed).
void FailQueued(Task* t, const std::string& why);

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

}  // namespace safeconc

// The opaque C type is this.
struct safeconc_task : safeconc::Task {};

#endif  // SAFECONC_EXT_UDF_TASK_H
