// xproc_stats.cc - what the sidecar tells an operator: the "crossproc" object of
// safeconc_stats() and safeconc_waiters() (the holder and waiters of every process). The
// protocol is in xproc.cc; the model in xproc.h.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "vfs/xproc.h"

namespace safeconc {

using namespace xproc;  // NOLINT: this file reads that namespace's layout

namespace {

// The shared counters an operator sees, in the order of kNames in WriteSnapshot.
constexpr int kCounters = 11;

// A copy of what an operator asks about, taken under the mutex or (Describe) without it.
struct Snapshot {
  int32_t holder_pid = 0;
  uint64_t holder_tid = 0, holder_ticket = 0;
  int64_t holder_since_ns = 0;
  std::vector<Slot> waiters;  // in line order: the front first
  uint64_t counters[kCounters] = {};
  uint32_t attached = 0;  // processes attached, as counted in the sidecar
};

void Copy(const XShared* s, Snapshot* out) SC_NO_THREAD_SAFETY_ANALYSIS {
  out->holder_pid = s->holder_pid;
  out->holder_tid = s->holder_tid;
  out->holder_ticket = s->holder_ticket;
  out->holder_since_ns = s->holder_since_ns;
  for (const Slot& u : s->slots) {
    if (u.state == kWaiting) out->waiters.push_back(u);
  }
  std::sort(out->waiters.begin(), out->waiters.end(), LineOrder);
  const uint64_t c[kCounters] = {
      s->acquisitions, s->waits,        s->handoffs,     s->barges,  s->claim_lapsed,
      s->timeouts,     s->dead_holders, s->dead_waiters, s->repairs, s->max_overtaken_wait_us,
      s->revoked};
  std::copy(c, c + kCounters, out->counters);
  out->attached = s->attached.load(std::memory_order_relaxed);
}

void WriteSnapshot(JsonWriter& w, const Snapshot& snap) {
  const int64_t now = NowNs();
  w.Key("holder");
  if (snap.holder_pid == 0) {
    w.Null();
  } else {
    w.BeginObject()
        .Field("pid", snap.holder_pid)
        .Field("thread", static_cast<int64_t>(snap.holder_tid))
        .Field("handle", static_cast<int64_t>(snap.holder_ticket))
        .Field("held_ms", (now - snap.holder_since_ns) / 1000000)
        .Key("alive")
        .Bool(ProcessAlive(snap.holder_pid, 0))
        .EndObject();
  }
  w.Field("processes_attached", static_cast<int64_t>(snap.attached));
  w.Field("queue_depth", static_cast<int64_t>(snap.waiters.size()));
  w.Key("waiters").BeginArray();
  for (const Slot& u : snap.waiters) {
    w.BeginObject()
        .Field("pid", u.pid)
        .Field("thread", static_cast<int64_t>(u.tid))
        .Field("handle", static_cast<int64_t>(u.ticket))
        .Field("waited_ms", (now - u.entered_ns) / 1000000)
        .Field("since_ms", (now - u.arrived_ns) / 1000000)
        .Key("alive")
        .Bool(ProcessAlive(u.pid, u.pstart))
        .EndObject();
  }
  w.EndArray();
  static const char* const kNames[kCounters] = {
      "acquisitions", "waits",        "handoffs",     "barges",  "claim_lapsed",
      "timeouts",     "dead_holders", "dead_waiters", "repairs", "max_overtaken_wait_us",
      "revoked"};
  w.Key("all_processes").BeginObject();
  for (int i = 0; i < kCounters; ++i) w.Field(kNames[i], static_cast<int64_t>(snap.counters[i]));
  w.EndObject();
}

}  // namespace

void CrossProcess::WriteJson(JsonWriter& w) {
  XShared* s = Shared();
  Snapshot snap;
  bool have = false;
  if (s != nullptr && LockShared(s, /*wait=*/false)) {
    Copy(s, &snap);
    s->mu.Unlock();
    have = true;
  }
  MutexLock l(&mu_);
  w.Key("crossproc").BeginObject();
  w.Field("mode", std::string(s != nullptr ? "sidecar" : "polling"));
  if (!sidecar_.empty()) w.Field("sidecar", sidecar_);
  if (!reason_.empty()) w.Field("reason", reason_);
  if (have) WriteSnapshot(w, snap);
  w.Field("waits", static_cast<int64_t>(waits_))
      .Field("timeouts", static_cast<int64_t>(timeouts_))
      .Field("went_without", static_cast<int64_t>(unavailable_))
      .Field("counted_out", static_cast<int64_t>(recounted_.load(std::memory_order_relaxed)));
  w.Key("wait_us");
  wait_us_.WriteJson(w);
  w.Key("release_to_grant_us");
  release_to_grant_us_.WriteJson(w);
  w.EndObject();
}

bool CrossProcess::Describe(const char* db_path, std::string* json, std::string* err) {
  const std::string path = std::string(db_path) + "-safeconc";
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *err = path + ": " + std::strerror(errno) +
           (errno == ENOENT ? " (no process has this database open through safeconc, or it "
                              "coordinates without a sidecar)"
                            : "");
    return false;
  }
  struct stat st;
  void* m = MAP_FAILED;
  if (fstat(fd, &st) == 0 && st.st_size == static_cast<off_t>(sizeof(XShared))) {
    m = mmap(nullptr, sizeof(XShared), PROT_READ, MAP_SHARED, fd, 0);
  }
  close(fd);
  if (m == MAP_FAILED) {
    *err = path + " is not a sidecar of this libsafeconc version";
    return false;
  }
  const auto* s = static_cast<const XShared*>(m);
  bool ok = s->magic == kMagic && s->version == kVersion && s->size == sizeof(XShared);
  Snapshot snap;
  if (ok) Copy(s, &snap);  // without the mutex: a snapshot, maybe mid-update
  munmap(m, sizeof(XShared));
  if (!ok) {
    *err = path + " is not a sidecar of this libsafeconc version";
    return false;
  }
  JsonWriter w;
  w.BeginObject().Field("sidecar", path);
  WriteSnapshot(w, snap);
  w.EndObject();
  *json = w.str();
  return true;
}

}  // namespace safeconc
