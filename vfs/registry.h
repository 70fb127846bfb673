// registry.h - one DbEntry per database file of the process, keyed by (device, inode) so that
// the same file reached through two paths or a symlink shares one entry. The entry is
// created by the first open and freed with the last close. It is where the per-file
// coordinator lives and where lock-call counters of closed handles accumulate.
//
// Mutex rules: Registry::mu_ guards the map and, in it, every entry's handle list and retired
// counters (Registry::Slot). No SQLite call and no callback runs while mu_ is held.
// Lock order: Registry::mu_ before Coordinator::mu_, CrossProcess::mu_ and the sidecar's
// mutex (waited for at most kXprocMutexWait): the diagnostics write each entry's
// coordinator and sidecar under mu_, so the entry cannot be freed meanwhile. Nothing takes
// mu_ under a Coordinator::mu_ (the coordinator never calls out), so the order cannot cycle.
#ifndef SAFECONC_VFS_REGISTRY_H
#define SAFECONC_VFS_REGISTRY_H

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/json.h"
#include "base/sync.h"
#include "vfs/coordinator.h"
#include "vfs/xproc.h"

namespace safeconc {

// Lock calls of one handle, by kind. Each counter is written only by the thread that owns
// the connection (SQLite never runs two calls on one file at once) with relaxed increments,
// and read by diagnostics on any thread: relaxed is enough, a slightly stale count is fine.
struct LockCounters {
  enum Kind { kLock, kUnlock, kCheckReserved, kShmLock, kKinds };
  std::atomic<uint64_t> n[kKinds] = {};

  void Bump(Kind k) {
    // A load+store is cheaper than a locked RMW; only one thread writes this counter.
    n[k].store(n[k].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
};
struct LockTotals {
  uint64_t n[LockCounters::kKinds] = {};
  void Add(const LockCounters& c) {
    for (int i = 0; i < LockCounters::kKinds; ++i) n[i] += c.n[i].load(std::memory_order_relaxed);
  }
  void Add(const LockTotals& t) {
    for (int i = 0; i < LockCounters::kKinds; ++i) n[i] += t.n[i];
  }
  void WriteJson(JsonWriter& w) const;
};

struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator<(const FileId& o) const { return dev != o.dev ? dev < o.dev : ino < o.ino; }
};

// One database file: constant after construction. What changes with its opens and closes
// (the live handles, the retired counters) is the registry's, in its Slot under mu_.
class DbEntry {
 public:
  DbEntry(FileId id, std::string path)
      : id_(id), path_(std::move(path)), coord_(std::make_shared<Coordinator>()) {
    coord_->WatchCrossProcess(&xproc_);
  }
  // The coordinator may outlive the entry (a ticket keeps it): it stops looking at xproc_.
  ~DbEntry() { coord_->WatchCrossProcess(nullptr); }
  DbEntry(const DbEntry&) = delete;
  DbEntry& operator=(const DbEntry&) = delete;

  // Constant after construction.
  const FileId& id() const { return id_; }
  const std::string& path() const { return path_; }  // the path of the first open
  const std::shared_ptr<Coordinator>& coordinator() const { return coord_; }
  // This process's handle on the file's sidecar (attached by the first writable open).
  CrossProcess& xproc() const { return xproc_; }

 private:
  const FileId id_;
  const std::string path_;
  const std::shared_ptr<Coordinator> coord_;
  mutable CrossProcess xproc_;  // thread-safe on its own (vfs/xproc.h)
};

class Registry {
 public:
  // The process-wide registry. Never destroyed: the VFS outlives static destructors.
  static Registry& Get();

  // Finds or creates the entry for the file at `path` and adds a handle to it.
  DbEntry* Acquire(const char* path, const LockCounters* handle) SC_EXCLUDES(mu_);
  // Removes a handle, folds its counters into the entry; frees the entry with its last handle.
  void Release(DbEntry* e, const LockCounters* handle) SC_EXCLUDES(mu_);

  // Diagnostics.
  void WriteProcessJson(JsonWriter& w) SC_EXCLUDES(mu_);  // "process": {...}, "databases": [...]
  void WriteEntryJson(JsonWriter& w, DbEntry* e) SC_EXCLUDES(mu_);  // one database's object

 private:
  // An entry and what the registry keeps of it; reached only through entries_.
  struct Slot {
    DbEntry* entry = nullptr;
    std::vector<const LockCounters*> handles;  // live handles' counters
    LockTotals retired;                        // counters of the entry's closed handles
  };
  void WriteEntryLocked(JsonWriter& w, const Slot& s) SC_REQUIRES(mu_);

  Mutex mu_;
  std::map<FileId, Slot> entries_ SC_GUARDED_BY(mu_);
  uint64_t opens_ SC_GUARDED_BY(mu_) = 0;
  LockTotals retired_ SC_GUARDED_BY(mu_);  // from entries already freed
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_REGISTRY_H
