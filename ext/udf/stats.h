// stats.h - the "udf" object of safeconc_stats(): what the trampoline counts, and where.
//
// Counters and gauges are relaxed atomics, each an independent count that orders nothing.
// Direct calls are counted per thread (DirectCounter), so the direct path pays no locked
// instruction. The dispatch-latency histogram is behind its own mutex (stats.cc), a leaf.
#ifndef SAFECONC_EXT_UDF_STATS_H
#define SAFECONC_EXT_UDF_STATS_H

#include <atomic>
#include <cstdint>

#include "base/json.h"

namespace safeconc {

struct UdfStats {
  std::atomic<uint64_t> dispatched{0};  // calls made on another thread than the owner's
  std::atomic<uint64_t> timeouts{0};    // dispatched calls that gave up (safeconc_call_timeout)
  std::atomic<uint64_t> failed{0};      // calls failed by the trampoline (closed, refused, ...)
  // Gauges for leak checks: owners opened and not closed; tasks taken from the pool and not
  // returned (in flight, or held by a host loop that has not run them yet).
  std::atomic<int64_t> owners_open{0};
  std::atomic<int64_t> tasks_in_use{0};
};
extern UdfStats g_udf_stats;  // constant-initialised: usable from any static initialiser

// One thread's count of direct calls. It has one writer, its thread (relaxed load + store,
// no lock prefix), and is read by safeconc_stats(); it registers itself in a list of live
// counters and folds its count into a total when its thread exits.
struct DirectCounter {
  std::atomic<uint64_t> n{0};
  DirectCounter();
  ~DirectCounter();
};

// A dispatched call's round trip (dispatch to result), in microseconds.
void AddDispatchLatency(uint64_t us);

// Stats for safeconc_stats(): the "udf" object.
void WriteUdfJson(JsonWriter& w);

}  // namespace safeconc

#endif  // SAFECONC_EXT_UDF_STATS_H
