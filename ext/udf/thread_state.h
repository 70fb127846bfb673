// thread_state.h - the calling thread as the trampoline sees it: its kernel id, its
// direct-call counter, and the stack of connections whose host callbacks it is running
// (in_callback()). Everything here belongs to one thread; nothing is shared, nothing locked.
//
// The direct path reads ThisThread() once per call. In a dlopen()ed library each access to
// a plain thread_local is a call to __tls_get_addr (callgrind: a third of the trampoline's
// per-call cost); initial-exec makes it one instruction, from the static TLS surplus glibc
// keeps for dlopen()ed libraries. The variable is declared __thread, not thread_local:
// another translation unit reaching an extern thread_local would go through a TLS init
// wrapper call, and __thread guarantees there is none (the state is zero-initialised).
#ifndef SAFECONC_EXT_UDF_THREAD_STATE_H
#define SAFECONC_EXT_UDF_THREAD_STATE_H

#include <sqlite3ext.h>

#include <atomic>
#include <cstdint>

namespace safeconc {

constexpr int kMaxNest = 16;  // nested callbacks tracked in ThreadState for in_callback()

struct ThreadState {
  uint64_t tid;                   // this thread's id, 0 until first asked
  std::atomic<uint64_t>* direct;  // this thread's direct-call counter, null until first call
  int depth;                      // callbacks running on this thread (may exceed kMaxNest)
  sqlite3* callbacks[kMaxNest];   // their connections, innermost last
};
extern __thread ThreadState t_thread_state __attribute__((tls_model("initial-exec")));

// Fills in the calling thread's state on its first call (cold).
void InitThreadState(ThreadState& s);

// The calling thread's ThreadState, filled in on its first call.
inline ThreadState& ThisThread() {
  ThreadState& s = t_thread_state;
  if (__builtin_expect(s.tid == 0, 0)) InitThreadState(s);  // first call on this thread
  return s;
}

// Callbacks nested deeper than kMaxNest keep their connections in a cold, growable stack.
void PushDeep(sqlite3* db);
void PopDeep();

// Marks db's host callback as running on this thread for the scope's lifetime. Callbacks
// nest (a callback may step another statement), so this is a stack.
class InCallbackScope {
 public:
  InCallbackScope(ThreadState& s, sqlite3* db) : s_(s) {
    if (__builtin_expect(s_.depth < kMaxNest, 1)) {
      s_.callbacks[s_.depth] = db;
    } else {
      PushDeep(db);
    }
    ++s_.depth;
  }
  ~InCallbackScope() {
    if (--s_.depth >= kMaxNest) PopDeep();
  }
  InCallbackScope(const InCallbackScope&) = delete;
  InCallbackScope& operator=(const InCallbackScope&) = delete;

 private:
  ThreadState& s_;
};

// Is the calling thread running a host callback of db? The question a binding has when its
// callback code calls close() or steps the running statement again.
bool InCallback(sqlite3* db);

}  // namespace safeconc

#endif  // SAFECONC_EXT_UDF_THREAD_STATE_H
