// task.cc - copied values, the task pool, failing a queued task, and the hook handles. See
// task.h for the life cycle and the hand-over protocols.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "ext/udf/task.h"

#include <unordered_map>

#include "ext/udf/stats.h"

namespace safeconc {
namespace {

// Leaves: nothing else is locked under either mutex, and nothing is called out.
Mutex g_pool_mu;
std::vector<Task*>& Pool() SC_REQUIRES(g_pool_mu) {
  static auto* v = new std::vector<Task*>();  // leaked: tasks may be in use at exit
  return *v;
}

// Handles count up from an odd base in steps of 16: never reused, never a valid address to
// dereference, and never null.
Mutex g_handles_mu;
std::unordered_map<uint64_t, Task*>& Handles() SC_REQUIRES(g_handles_mu) {
  static auto* m = new std::unordered_map<uint64_t, Task*>();  // leaked: tasks outlive main
  return *m;
}
uint64_t g_next_handle SC_GUARDED_BY(g_handles_mu) = 0x5afec0000001;
std::atomic<uint64_t> g_refused_runs{0};  // relaxed: a count for diagnostics

}  // namespace

// ---- CopiedValue ------------------------------------------------------------------------------

void CopiedValue::Set(sqlite3_value* v) {
  type = sqlite3_value_type(v);
  zeroblob = -1;
  switch (type) {
    case SQLITE_INTEGER:
      i = sqlite3_value_int64(v);
      break;
    case SQLITE_FLOAT:
      d = sqlite3_value_double(v);
      break;
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_value_text(v);
      bytes.assign(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_value_bytes(v)));
      break;
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_value_blob(v);
      const int n = sqlite3_value_bytes(v);
      if (n > 0)
        bytes.assign(static_cast<const char*>(p), static_cast<size_t>(n));
      else
        bytes.clear();
      break;
    }
    default:
      break;
  }
}

// ---- Tasks ----------------------------------------------------------------------------------

Task* AcquireTask() {
  g_udf_stats.tasks_in_use.fetch_add(1, std::memory_order_relaxed);
  {
    MutexLock l(&g_pool_mu);
    auto& pool = Pool();
    if (!pool.empty()) {
      Task* t = pool.back();
      pool.pop_back();
      return t;
    }
  }
  return new safeconc_task();
}

void ReleaseTask(Task* t) {
  if (t->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // The last reference: nobody else can reach t. Drop what keeps other objects alive, keep
  // buffers' capacity for the next call.
  t->func.reset();
  t->owner.reset();
  t->state.store(Task::kFree, std::memory_order_relaxed);
  t->result_set = false;
  t->is_error = false;
  t->error_code = 0;
  t->error.clear();
  g_udf_stats.tasks_in_use.fetch_sub(1, std::memory_order_relaxed);
  MutexLock l(&g_pool_mu);
  Pool().push_back(t);
}

void FailQueued(Task* t, const std::string& why) {
  {
    MutexLock l(&t->mu);
    if (t->state.load(std::memory_order_relaxed) != Task::kQueued) return;
    t->error = why;
    t->state.store(Task::kFailed, std::memory_order_release);
  }
  t->cv.Signal();
}

// ---- Dispatch-hook handles ------------------------------------------------------------------

safeconc_task* HandOut(Task* t) {
  MutexLock l(&g_handles_mu);
  const uint64_t h = g_next_handle;
  g_next_handle += 16;
  Handles().emplace(h, t);  // may throw bad_alloc: Dispatch's caller fails the call
  return reinterpret_cast<safeconc_task*>(static_cast<uintptr_t>(h));
}

Task* TakeHandedOut(safeconc_task* h) {
  const uint64_t key = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(h));
  MutexLock l(&g_handles_mu);
  auto it = Handles().find(key);
  if (it == Handles().end()) return nullptr;
  Task* t = it->second;
  Handles().erase(it);
  return t;
}

void ForgetHandle(safeconc_task* h) {
  MutexLock l(&g_handles_mu);
  Handles().erase(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(h)));
}

uint64_t RefusedTaskRuns() { return g_refused_runs.load(std::memory_order_relaxed); }
void CountRefusedTaskRun() { g_refused_runs.fetch_add(1, std::memory_order_relaxed); }

}  // namespace safeconc
