// thread_state.cc - see thread_state.h.
#include "ext/udf/thread_state.h"

#include <algorithm>
#include <vector>

#include "base/thread_id.h"
#include "ext/udf/stats.h"

namespace safeconc {

__thread ThreadState t_thread_state __attribute__((tls_model("initial-exec")));

namespace {

struct DeepCallbacks {
  std::vector<sqlite3*> dbs;  // depth kMaxNest and below, innermost last
  int lost = 0;               // pushes that failed (out of memory): in_callback() says yes
};
DeepCallbacks& Deep() {
  thread_local DeepCallbacks d;
  return d;
}

}  // namespace

[[gnu::noinline]] void InitThreadState(ThreadState& s) {
  s.tid = CurrentThreadId();
  thread_local DirectCounter counter;  // folds its count in when the thread exits
  s.direct = &counter.n;
}

[[gnu::noinline]] void PushDeep(sqlite3* db) {
  try {
    Deep().dbs.push_back(db);
  } catch (...) {
    ++Deep().lost;
  }
}

[[gnu::noinline]] void PopDeep() {
  DeepCallbacks& d = Deep();
  if (d.lost > 0) {
    --d.lost;
  } else {
    d.dbs.pop_back();
  }
}

bool InCallback(sqlite3* db) {
  const ThreadState& s = ThisThread();
  const int n = s.depth < kMaxNest ? s.depth : kMaxNest;
  if (s.depth > kMaxNest) {
    const DeepCallbacks& d = Deep();
    // A connection whose push failed could be db: a refusal too many rather than a crash.
    if (d.lost > 0 || std::find(d.dbs.begin(), d.dbs.end(), db) != d.dbs.end()) return true;
  }
  return std::find(s.callbacks, s.callbacks + n, db) != s.callbacks + n;
}

}  // namespace safeconc
