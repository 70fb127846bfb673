// trampoline_util.h - what the trampoline tests share: the API table reached as a binding
// reaches it (sqlite3_load_extension, then dlopen(RTLD_NOLOAD) + dlsym), and an owner thread
// running an event loop on the built-in fd owner.
#ifndef SAFECONC_TESTS_TRAMPOLINE_UTIL_H
#define SAFECONC_TESTS_TRAMPOLINE_UTIL_H

#include <dlfcn.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <thread>

#include "safeconc.h"
#include "tests/test_util.h"

namespace sctest {

inline const safeconc_api_v1* Api() {
  LoadExtension();
  void* so = dlopen(SoPath().c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (so == nullptr) return nullptr;
  auto fn = reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL));
  return fn ? static_cast<const safeconc_api_v1*>(fn(1)) : nullptr;
}

inline uint64_t Tid() { return static_cast<uint64_t>(::syscall(SYS_gettid)); }

// Runs the calling thread as an owner's event loop: poll the owner's fd, drain, until
// done() is true. The loop a binding would integrate with epoll, libuv or asyncio.
inline void RunLoop(const safeconc_api_v1* api, safeconc_owner* owner,
                    const std::function<bool()>& done) {
  pollfd p{api->owner_fd(owner), POLLIN, 0};
  while (!done()) {
    if (poll(&p, 1, 5) > 0) api->owner_drain(owner, 0);
  }
  api->owner_drain(owner, 0);
}

// Runs `work` on a new thread while the calling thread (the owner's) runs its loop.
inline void OnWorker(const safeconc_api_v1* api, safeconc_owner* owner,
                     const std::function<void()>& work) {
  std::atomic<bool> finished{false};
  std::thread th([&] {
    work();
    finished = true;
  });
  RunLoop(api, owner, [&] { return finished.load(); });
  th.join();
}

// An owner thread of its own (for tests with several owners): opens an fd owner on it and
// runs its loop until stopped.
class OwnerThread {
 public:
  explicit OwnerThread(const safeconc_api_v1* api) : api_(api) {
    th_ = std::thread([this] {
      api_->owner_open_fd(&owner_);
      tid_ = Tid();
      ready_ = true;
      RunLoop(api_, owner_, [this] { return stop_.load(); });
      api_->owner_close(owner_);
    });
    while (!ready_.load()) std::this_thread::yield();
  }
  ~OwnerThread() {
    stop_ = true;
    th_.join();
  }
  safeconc_owner* owner() const { return owner_; }
  uint64_t tid() const { return tid_; }

 private:
  const safeconc_api_v1* api_;
  safeconc_owner* owner_ = nullptr;
  std::atomic<uint64_t> tid_{0};
  std::atomic<bool> ready_{false}, stop_{false};
  std::thread th_;
};

}  // namespace sctest

#endif  // SAFECONC_TESTS_TRAMPOLINE_UTIL_H
