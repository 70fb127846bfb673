// registry.cc - see registry.h.
#include "vfs/registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <functional>

namespace safeconc {

void LockTotals::WriteJson(JsonWriter& w) const {
  w.BeginObject()
      .Field("xLock", static_cast<int64_t>(n[LockCounters::kLock]))
      .Field("xUnlock", static_cast<int64_t>(n[LockCounters::kUnlock]))
      .Field("xCheckReservedLock", static_cast<int64_t>(n[LockCounters::kCheckReserved]))
      .Field("xShmLock", static_cast<int64_t>(n[LockCounters::kShmLock]))
      .EndObject();
}

Registry& Registry::Get() {
  static Registry* r = new Registry();  // deliberately leaked, see header
  return *r;
}

DbEntry* Registry::Acquire(const char* path, const LockCounters* handle) {
  FileId id;
  struct stat st;
  if (::stat(path, &st) == 0) {
    id.dev = st.st_dev;
    id.ino = st.st_ino;
  } else {
    // Cannot happen for a file the base VFS just opened unless it was unlinked in between;
    // key by the path's hash in a device number no real file has, so it still gets an entry.
    id.dev = static_cast<dev_t>(-1);
    id.ino = static_cast<ino_t>(std::hash<std::string>()(path));
  }
  MutexLock l(&mu_);
  ++opens_;
  Slot& s = entries_[id];
  if (s.entry == nullptr) s.entry = new DbEntry(id, path);
  s.handles.push_back(handle);
  return s.entry;
}

void Registry::Release(DbEntry* e, const LockCounters* handle) {
  DbEntry* to_free = nullptr;
  {
    MutexLock l(&mu_);
    auto it = entries_.find(e->id());
    if (it == entries_.end()) return;  // cannot happen: e has a handle open
    Slot& s = it->second;
    auto& hs = s.handles;
    hs.erase(std::remove(hs.begin(), hs.end(), handle), hs.end());
    s.retired.Add(*handle);
    if (hs.empty()) {
      retired_.Add(s.retired);
      entries_.erase(e->id());
      to_free = e;
    }
  }
  delete to_free;
}

void Registry::WriteEntryLocked(JsonWriter& w, const Slot& s) {
  const DbEntry& e = *s.entry;
  LockTotals t = s.retired;
  for (const LockCounters* h : s.handles) t.Add(*h);
  w.BeginObject()
      .Field("path", e.path())
      .Field("dev", static_cast<int64_t>(e.id().dev))
      .Field("ino", static_cast<int64_t>(e.id().ino))
      .Field("handles", static_cast<int64_t>(s.handles.size()))
      .Key("lock_calls");
  t.WriteJson(w);
  w.Key("coordinator");
  e.coordinator()->WriteJson(w);  // lock order: Registry::mu_ before Coordinator::mu_
  e.xproc().WriteJson(w);
  w.EndObject();
}

void Registry::WriteEntryJson(JsonWriter& w, DbEntry* e) {
  MutexLock l(&mu_);
  auto it = entries_.find(e->id());
  if (it == entries_.end()) {  // cannot happen: the caller's handle is open
    w.Null();
    return;
  }
  WriteEntryLocked(w, it->second);
}

void Registry::WriteProcessJson(JsonWriter& w) {
  MutexLock l(&mu_);
  LockTotals all = retired_;
  int64_t handles = 0;
  for (const auto& kv : entries_) {
    all.Add(kv.second.retired);
    for (const LockCounters* h : kv.second.handles) all.Add(*h);
    handles += static_cast<int64_t>(kv.second.handles.size());
  }
  w.Key("process")
      .BeginObject()
      .Field("files_open", handles)
      .Field("databases_open", static_cast<int64_t>(entries_.size()))
      .Field("opens", static_cast<int64_t>(opens_))
      .Key("lock_calls");
  all.WriteJson(w);
  w.EndObject();
  w.Key("databases").BeginArray();
  for (const auto& kv : entries_) WriteEntryLocked(w, kv.second);
  w.EndArray();
}

}  // namespace safeconc
