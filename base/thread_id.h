// thread_id.h - the calling thread's kernel id (gettid), as the lock paths and the trampoline
// name threads in diagnostics and compare them (same-thread deadlock detection, the owner
// thread of a UDF). Unlike std::thread::id it is the number ps, gdb and perf show.
#ifndef SAFECONC_BASE_THREAD_ID_H
#define SAFECONC_BASE_THREAD_ID_H

#include <cstdint>

namespace safeconc {

// The calling thread's kernel id. One system call per thread, then a thread-local read.
uint64_t CurrentThreadId();

}  // namespace safeconc

#endif  // SAFECONC_BASE_THREAD_ID_H
