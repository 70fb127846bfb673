// owner.cc - see owner.h. Also RunTask: what the owner thread does with a task it was handed.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "ext/udf/owner.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "ext/udf/call.h"
#include "ext/udf/stats.h"
#include "ext/udf/thread_state.h"

namespace safeconc {

// ---- Owners -----------------------------------------------------------------------------------

Owner::Owner(uint64_t id_, uint64_t tid_, safeconc_dispatch_fn h, void* arg, int efd)
    : id(id_), tid(tid_), hook(h), hook_arg(arg), fd(efd) {
  g_udf_stats.owners_open.fetch_add(1, std::memory_order_relaxed);
}

Owner::~Owner() {
  if (!closed_.load(std::memory_order_relaxed))
    g_udf_stats.owners_open.fetch_sub(1, std::memory_order_relaxed);
  if (fd >= 0) ::close(fd);
}

bool Owner::OnOwnerThread() const { return ThisThread().tid == tid; }

void Owner::TaskStarted(Task* t) {
  MutexLock l(&mu_);
  ForgetInHost(t);
}

void Owner::ForgetInHost(Task* t) {
  auto it = std::find(in_host_.begin(), in_host_.end(), t);
  if (it != in_host_.end()) in_host_.erase(it);
}

bool Owner::Dispatch(Task* t, std::string* why) {
  {
    MutexLock l(&mu_);
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
      MutexLock l(&mu_);
      ForgetInHost(t);
      if (--hooks_running_ == 0) hooks_done_.SignalAll();
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
    MutexLock l(&mu_);
    // Refused: the hook will never run it. Take it back unless close() already failed it.
    if (rc != 0) ForgetInHost(t);
    if (--hooks_running_ == 0) hooks_done_.SignalAll();
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
      MutexLock l(&mu_);
      t = queue_.PopFront();
    }
    if (t == nullptr) break;
    RunTask(t);
    ++ran;
  }
  if (max > 0 && ran == max) {
    MutexLock l(&mu_);
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
    MutexLock l(&mu_);
    if (closed_.load(std::memory_order_relaxed)) return;
    closed_.store(true, std::memory_order_release);
    g_udf_stats.owners_open.fetch_sub(1, std::memory_order_relaxed);
    queued.Swap(queue_);
  }
  {
    // A worker may be inside the hook right now (it checked closed_ before we set it). Wait
    // for it to return: the binding frees the hook's resources after owner_close, and hooks
    // never wait for the owner thread, so this wait is short. Only then is in_host_ final (a
    // refused task leaves it, and its worker fails it).
    MutexLock l(&mu_);
    while (hooks_running_ != 0) hooks_done_.Wait(&mu_);
    in_host = in_host_;  // the host's loop still holds these; it runs (or drops) them later
  }
  const std::string why = Name() + " was closed before it ran the call";
  while (Task* t = queued.PopFront()) {
    FailQueued(t, why);
    ReleaseTask(t);  // the queue's reference
  }
  for (Task* t : in_host) FailQueued(t, why);
}

// ---- Running a task on the owner thread -------------------------------------------------------

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
    MutexLock l(&t->mu);
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
      MutexLock l(&t->mu);
      if (t->state.load(std::memory_order_relaxed) == Task::kRunning) {
        t->state.store(Task::kDone, std::memory_order_release);
        t->cv.Signal();
      }  // else the worker gave up: the result is discarded with the task
    }
  }
  ReleaseTask(t);  // the owner side's reference
  return run ? RunResult::kRan : RunResult::kSkipped;
}

}  // namespace safeconc
