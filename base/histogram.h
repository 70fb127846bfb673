// histogram.h - a fixed-size log-linear histogram of microsecond durations, for wait-time
// and latency percentiles in the diagnostics. Four sub-buckets per power of two (about 19%
// resolution), no allocation. Not thread-safe: the owner guards it with its own mutex.
#ifndef SAFECONC_BASE_HISTOGRAM_H
#define SAFECONC_BASE_HISTOGRAM_H

#include <cstdint>

#include "base/json.h"

namespace safeconc {

class Histogram {
 public:
  void Add(uint64_t us) {
    ++buckets_[Bucket(us)];
    ++count_;
    if (us > max_) max_ = us;
  }
  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }
  // The upper bound of the bucket holding the p-th percentile (0 < p <= 100); 0 if empty.
  uint64_t Percentile(double p) const {
    if (count_ == 0) return 0;
    uint64_t rank = static_cast<uint64_t>(p / 100.0 * static_cast<double>(count_) + 0.5);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += buckets_[i];
      if (seen >= rank) {
        const uint64_t hi = UpperBound(i);
        return hi < max_ ? hi : max_;
      }
    }
    return max_;
  }
  // {"count":…,"p50_us":…,"p99_us":…,"max_us":…}
  void WriteJson(JsonWriter& w) const {
    w.BeginObject()
        .Field("count", static_cast<int64_t>(count_))
        .Field("p50_us", static_cast<int64_t>(Percentile(50)))
        .Field("p99_us", static_cast<int64_t>(Percentile(99)))
        .Field("max_us", static_cast<int64_t>(max_))
        .EndObject();
  }

 private:
  static constexpr int kBuckets = 4 * 44;  // up to ~2^44 us (200 days)
  static int Bucket(uint64_t v) {
    if (v < 4) return static_cast<int>(v);
    const int msb = 63 - __builtin_clzll(v);                 // >= 2
    const int sub = static_cast<int>((v >> (msb - 2)) & 3);  // next two bits
    const int b = 4 * (msb - 1) + sub;
    return b < kBuckets ? b : kBuckets - 1;
  }
  static uint64_t UpperBound(int b) {
    if (b < 4) return static_cast<uint64_t>(b);
    const int msb = b / 4 + 1;
    const uint64_t sub = static_cast<uint64_t>(b % 4);
    return ((4 + sub + 1) << (msb - 2)) - 1;
  }

  uint64_t buckets_[kBuckets] = {};
  uint64_t count_ = 0;
  uint64_t max_ = 0;
};

}  // namespace safeconc

#endif  // SAFECONC_BASE_HISTOGRAM_H
