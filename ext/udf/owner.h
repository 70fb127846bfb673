// owner.h - one owner thread and how tasks reach it: the binding's dispatch hook, or an
// eventfd plus a queue the owner drains. Dispatch, drain, close, and running a task.
//
// Mutex rules: Owner::mu_ guards the queue (fd kind), the tasks handed to the hook and not
// yet run, and the count of hook calls in progress; closed_ is written under it and read
// anywhere. It is a leaf: no other mutex is taken under it, and no hook, callback or SQLite
// call runs while it is held.
#ifndef SAFECONC_EXT_UDF_OWNER_H
#define SAFECONC_EXT_UDF_OWNER_H

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/intrusive_list.h"
#include "base/sync.h"
#include "ext/udf/task.h"
#include "safeconc.h"

namespace safeconc {

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
  bool Dispatch(Task* t, std::string* why) SC_EXCLUDES(mu_);
  // fd kind, on the owner thread: runs up to max queued tasks.
  int Drain(int max) SC_EXCLUDES(mu_);
  // On the owner thread: fails pending tasks, refuses new ones.
  void Close() SC_EXCLUDES(mu_);
  // Lock-free read (the direct path asks on every call): written under mu_ with release
  // by Close(), read with acquire.
  bool closed() const { return closed_.load(std::memory_order_acquire); }
  // A hook task reached task_run: it is no longer the host's to fail on close.
  void TaskStarted(Task* t) SC_EXCLUDES(mu_);
  std::string Name() const { return "owner #" + std::to_string(id); }

 private:
  void ForgetInHost(Task* t) SC_REQUIRES(mu_);

  Mutex mu_;
  std::atomic<bool> closed_{false};  // written under mu_ (Close), read anywhere
  // fd kind: queued tasks (the queue holds the owner side's reference).
  IntrusiveList<Task, &Task::queue_link> queue_ SC_GUARDED_BY(mu_);
  // hook kind: tasks handed to the hook, not yet run.
  std::vector<Task*> in_host_ SC_GUARDED_BY(mu_);
  // Hook calls in progress. Close() waits for them to return, so after it the binding may
  // free whatever the hook uses (hook_arg, a threadsafe function...).
  int hooks_running_ SC_GUARDED_BY(mu_) = 0;
  CondVar hooks_done_;  // signalled when hooks_running_ drops to 0
};

// Runs a task on the owner thread (fd drain, or task_run from a hook). kSkipped: the call
// was over before the owner got to it (the worker timed out, or close/refusal failed it), so
// the callback did not run; kWrongThread: called off the owner thread, the call was failed.
enum class RunResult { kRan, kSkipped, kWrongThread };
RunResult RunTask(Task* t);

}  // namespace safeconc

// The opaque C type is defined in ext/api.cc, with the mutex that guards it.

#endif  // SAFECONC_EXT_UDF_OWNER_H
