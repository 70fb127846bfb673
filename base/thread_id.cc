// thread_id.cc - see thread_id.h.
#include "base/thread_id.h"

#include <sys/syscall.h>
#include <unistd.h>

namespace safeconc {

uint64_t CurrentThreadId() {
  thread_local uint64_t tid = static_cast<uint64_t>(::syscall(SYS_gettid));
  return tid;
}

}  // namespace safeconc
