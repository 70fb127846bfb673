// sync.h - the mutex type every mutex of the extension (vfs/ and ext/) is, with Clang
// thread-safety annotations (abseil style). Under GCC the annotations compile to nothing; `make
// lint` builds once with `clang -Wthread-safety -Werror` so that a field read without its mutex is
// a compile error there.
//
// std::mutex is not annotated in libstdc++, so Mutex wraps it. MutexLock is the scoped
// holder; CondVar waits on a Mutex. Memory ordering: lock() acquires, unlock() releases,
// as std::mutex. Who destroys a Mutex: its owning object, once no thread can reach it.
#ifndef SAFECONC_BASE_SYNC_H
#define SAFECONC_BASE_SYNC_H

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define SC_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define SC_THREAD_ANNOTATION(x)
#endif

#define SC_CAPABILITY(x) SC_THREAD_ANNOTATION(capability(x))
#define SC_SCOPED_CAPABILITY SC_THREAD_ANNOTATION(scoped_lockable)
#define SC_GUARDED_BY(x) SC_THREAD_ANNOTATION(guarded_by(x))
#define SC_PT_GUARDED_BY(x) SC_THREAD_ANNOTATION(pt_guarded_by(x))
#define SC_REQUIRES(...) SC_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define SC_EXCLUDES(...) SC_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define SC_ACQUIRE(...) SC_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define SC_RELEASE(...) SC_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define SC_TRY_ACQUIRE(...) SC_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define SC_NO_THREAD_SAFETY_ANALYSIS SC_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace safeconc {

class SC_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() SC_ACQUIRE() { mu_.lock(); }
  void Unlock() SC_RELEASE() { mu_.unlock(); }
  bool TryLock() SC_TRY_ACQUIRE(true) { return mu_.try_lock(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

class SC_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) SC_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() SC_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// A condition variable bound to a Mutex the caller already holds.
class CondVar {
 public:
  void Wait(Mutex* mu) SC_REQUIRES(mu) {
    std::unique_lock<std::mutex> lk(mu->mu_, std::adopt_lock);
    cv_.wait(lk);
    lk.release();  // the caller still holds mu
  }
  // Returns false when the deadline passed without a notification.
  bool WaitUntil(Mutex* mu, std::chrono::steady_clock::time_point deadline) SC_REQUIRES(mu) {
    std::unique_lock<std::mutex> lk(mu->mu_, std::adopt_lock);
    const bool notified = cv_.wait_until(lk, deadline) == std::cv_status::no_timeout;
    lk.release();
    return notified;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace safeconc

#endif  // SAFECONC_BASE_SYNC_H
