// stats.cc - see stats.h.
#include "ext/udf/stats.h"

#include <algorithm>
#include <vector>

#include "base/histogram.h"
#include "base/sync.h"

namespace safeconc {

UdfStats g_udf_stats;

namespace {

// Leaves: nothing else is locked under either, and nothing is called out.
Mutex g_stats_mu;
Histogram g_dispatch_us SC_GUARDED_BY(g_stats_mu);  // trivially destructible: usable at exit

Mutex g_direct_mu;
std::vector<DirectCounter*>& DirectCounters() SC_REQUIRES(g_direct_mu) {
  static auto* v = new std::vector<DirectCounter*>();  // leaked: threads exit after main
  return *v;
}
uint64_t g_direct_exited SC_GUARDED_BY(g_direct_mu) = 0;  // counts of exited threads

uint64_t DirectTotal() {
  MutexLock l(&g_direct_mu);
  uint64_t total = g_direct_exited;
  for (DirectCounter* c : DirectCounters()) total += c->n.load(std::memory_order_relaxed);
  return total;
}

}  // namespace

DirectCounter::DirectCounter() {
  MutexLock l(&g_direct_mu);
  DirectCounters().push_back(this);
}

DirectCounter::~DirectCounter() {
  MutexLock l(&g_direct_mu);
  auto& v = DirectCounters();
  v.erase(std::find(v.begin(), v.end(), this));
  g_direct_exited += n.load(std::memory_order_relaxed);
}

void AddDispatchLatency(uint64_t us) {
  MutexLock l(&g_stats_mu);
  g_dispatch_us.Add(us);
}

void WriteUdfJson(JsonWriter& w) {
  const UdfStats& s = g_udf_stats;
  w.Key("udf")
      .BeginObject()
      .Field("calls_direct", static_cast<int64_t>(DirectTotal()))
      .Field("calls_dispatched", static_cast<int64_t>(s.dispatched.load(std::memory_order_relaxed)))
      .Field("timeouts", static_cast<int64_t>(s.timeouts.load(std::memory_order_relaxed)))
      .Field("failed", static_cast<int64_t>(s.failed.load(std::memory_order_relaxed)))
      .Field("owners_open", s.owners_open.load(std::memory_order_relaxed))
      .Field("tasks_in_use", s.tasks_in_use.load(std::memory_order_relaxed))
      .Key("dispatch_us");
  {
    MutexLock l(&g_stats_mu);
    g_dispatch_us.WriteJson(w);
  }
  w.EndObject();
}

}  // namespace safeconc
