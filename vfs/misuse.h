// misuse.h - detection of two threads inside calls on one shim file at once.
//
// SQLite never calls two methods of one sqlite3_file at once unless the application breaks its
// threading rules (a connection opened with SQLITE_OPEN_NOMUTEX, or in SQLITE_CONFIG_MULTITHREAD
// mode, used by two threads at the same time); stock SQLite then segfaults, hangs or reports a
// malformed database. Every shim method opens a CallGuard: the second thread's call is reported
// (sqlite3_log, the "misuse" counter of safeconc_stats) and, where a refusal is clean, refused
// with SQLITE_MISUSE before it reaches the base file.
//
// Cost: a thread-local address, one load and two relaxed stores per call, no locked instruction.
// Correct use is serialised by SQLite's own mutexes (the connection's, or in shared cache the
// btree's, whose release/acquire orders one call's clearing store before the next call's load),
// so it is never reported (SQLite sends the SQLITE_FCNTL_PDB hint of a shared-cache open
// outside them: it takes no guard, see shim_file.cc); a real overlap is seen at the second
// call's entry, or at the first call's exit when both entered at the same instant (then it is
// reported, not refused).
#ifndef SAFECONC_VFS_MISUSE_H
#define SAFECONC_VFS_MISUSE_H

#include <atomic>
#include <cstdint>

namespace safeconc {

// Identifies the calling thread: the address of a thread-local. Initial-exec: one instruction
// even in a dlopen()ed library; constant-initialised, so no TLS wrapper call.
__attribute__((tls_model("initial-exec"))) inline thread_local char t_call_token = 0;

// Counts and logs an overlap (cold path).
void ReportOverlap(const char* path, const char* method, bool at_entry);
// Calls that overlapped another thread's call on the same file, since loading.
uint64_t OverlappingCalls();

class CallGuard {
 public:
  using Word = std::atomic<uintptr_t>;
  // owner: the file's owner word (ShimFile::call_owner), 0 when no thread is inside.
  CallGuard(Word& owner, const char* path, const char* method)
      : owner_(owner), path_(path), method_(method) {
    const uintptr_t cur = owner.load(std::memory_order_relaxed);
    if (cur == Me()) {
      nested_ = true;  // a method re-entered on this thread (busy handler, file control)
    } else if (cur != 0) {
      overlap_ = true;
      ReportOverlap(path, method, true);
    } else {
      owner.store(Me(), std::memory_order_relaxed);
    }
  }
  ~CallGuard() {
    if (nested_ || overlap_) return;
    if (owner_.load(std::memory_order_relaxed) != Me()) {
      ReportOverlap(path_, method_, false);  // it entered while we were inside; it clears
    } else {
      owner_.store(0, std::memory_order_relaxed);
    }
  }
  CallGuard(const CallGuard&) = delete;
  CallGuard& operator=(const CallGuard&) = delete;
  // Another thread is inside: a call that can fail cleanly returns SQLITE_MISUSE.
  bool overlapping() const { return overlap_; }

 private:
  static uintptr_t Me() { return reinterpret_cast<uintptr_t>(&t_call_token); }
  std::atomic<uintptr_t>& owner_;
  const char* const path_;
  const char* const method_;
  bool nested_ = false, overlap_ = false;
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_MISUSE_H
