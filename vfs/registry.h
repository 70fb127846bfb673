// registry.h - one DbEntry per database file of the process, keyed by (device, inode) so that
// the same file reached through two paths or a symlink shares one entry. The entry is
// created by the first open and freed with the last close. It is where the per-file
// coordinator lives and where lock-call counters of closed handles accumulate.
//
// Mutex rules: Registry::mu_ guards the map, every entry's handle list and every entry's
// retired counters. Nothing is called out of this file while mu_ is held (no SQLite call,
// no callback). Lock order: Registry::mu_ is a leaf.
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

class Registry;

class DbEntry {
 public:
  DbEntry(FileId id, std::string path)
      : id_(id), path_(std::move(path)), coord_(std::make_shared<Coordinator>()) {}

  // Constant after construction.
  const FileId& id() const { return id_; }
  const std::string& path() const { return path_; }  // the path of the first open
  const std::shared_ptr<Coordinator>& coordinator() const { return coord_; }

 private:
  friend class Registry;
  const FileId id_;
  const std::string path_;
  const std::shared_ptr<Coordinator> coord_;
  // Guarded by Registry::mu_ (an annotation cannot name another object's member here).
  std::vector<const LockCounters*> handles_;  // live handles' counters
  LockTotals retired_;                        // counters of closed handles
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
  void WriteEntryLocked(JsonWriter& w, const DbEntry& e) SC_REQUIRES(mu_);

  Mutex mu_;
  std::map<FileId, DbEntry*> entries_ SC_GUARDED_BY(mu_);
  uint64_t opens_ SC_GUARDED_BY(mu_) = 0;
  LockTotals retired_ SC_GUARDED_BY(mu_);  // from entries already freed
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_REGISTRY_H
