// shim_vfs.cc - the `safeconc` VFS object.
//
// Loaded with the extension (`.load ./build/libsafeconc`, sqlite3_load_extension), it is
// registered once per process as the default VFS, wrapping whatever was the default then
// (normally "unix"). `file:x.db?vfs=safeconc` selects it explicitly; `?vfs=unix` opts out.
// The knobs may be given as URI parameters; a bad value fails the open and is logged
// through sqlite3_log (SQLite reports every xOpen failure as "unable to open database
// file", so the log is where the reason is).
//
// Thread safety: registration is serialised by a mutex; after it, g_vfs and the base VFS
// pointer are constant. The VFS methods are called concurrently from any thread and hold
// no state of their own.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <atomic>
#include <new>

#include "vfs/locking.h"
#include "vfs/shim.h"

namespace safeconc {
namespace {

// Handle ids for diagnostics. Relaxed: only uniqueness matters.
std::atomic<uint64_t> g_next_handle{0};

sqlite3_vfs* BaseVfs(sqlite3_vfs* v) { return static_cast<sqlite3_vfs*>(v->pAppData); }

// Applies the URI knobs of `name` to `knobs`. Every parameter that starts with "safeconc_" (in
// any case) must name a knob (also in any case) and carry a valid value; anything else fails
// the open and is logged, never ignored (a misspelt knob would silently keep its default).
}  // namespace

bool ApplyUriKnobs(const char* name, KnobSet* knobs) {
  for (int i = 0;; ++i) {
    const char* key = sqlite3_uri_key(name, i);
    if (key == nullptr) break;
    if (!HasKnobPrefix(key)) continue;
    Knob k;
    if (!KnobByName(key, &k)) {
      sqlite3_log(SQLITE_CANTOPEN,
                  "safeconc: cannot open %s: unknown URI parameter '%s': the knobs are %s", name,
                  Echo(key).c_str(), KnobList().c_str());
      return false;
    }
    // The value of this very key: sqlite3_uri_parameter matches names exactly, and a key
    // given in another case (SAFECONC_TIMEOUT) must not be looked up as the canonical one.
    const char* text = sqlite3_uri_parameter(name, key);
    int64_t v;
    std::string err;
    if (!ParseKnob(k, text, &v, &err)) {
      sqlite3_log(SQLITE_CANTOPEN, "safeconc: cannot open %s: URI parameter %s", name, err.c_str());
      return false;
    }
    knobs->Set(k, v);
  }
  return true;
}

namespace {

int ShimOpen(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  sqlite3_vfs* base = BaseVfs(vfs);
  // Journals, WAL and temp files go straight to the base: only the main database's locks
  // are coordinated, and the base file then owns pMethods (as cksumvfs does).
  if ((flags & SQLITE_OPEN_MAIN_DB) == 0 || name == nullptr) {
    return base->xOpen(base, name, f, flags, out_flags);
  }
  ShimFile* p;
  try {
    p = new (f) ShimFile();
  } catch (...) {  // KnobSet cannot throw today; stay safe if it ever allocates
    f->pMethods = nullptr;
    return SQLITE_NOMEM;
  }
  p->base.pMethods = nullptr;  // until the base file is open: xOpen failure leaves it NULL
  p->base_vfs = base;
  p->path = name;
  if (!ApplyUriKnobs(name, &p->knobs)) {
    p->~ShimFile();
    return SQLITE_CANTOPEN;
  }
  sqlite3_file* o = OrigFile(p);
  int rc = base->xOpen(base, name, o, flags, out_flags);
  if (rc != SQLITE_OK) {
    // The base may have set its own pMethods on failure; it owns the cleanup then.
    if (o->pMethods) o->pMethods->xClose(o);
    p->~ShimFile();
    f->pMethods = nullptr;
    return rc;
  }
  try {
    p->entry = Registry::Get().Acquire(name, &p->counters);
    p->handle_id = g_next_handle.fetch_add(1, std::memory_order_relaxed) + 1;
    p->ticket = std::make_shared<Ticket>(p->entry->coordinator(), p->handle_id);
  } catch (...) {
    if (p->entry != nullptr) Registry::Get().Release(p->entry, &p->counters);
    o->pMethods->xClose(o);
    p->~ShimFile();
    f->pMethods = nullptr;
    return SQLITE_NOMEM;
  }
  // Cross-process coordination, for a file this connection may write (never fails the open).
  const int opened = out_flags != nullptr ? *out_flags : flags;
  const bool writable =
      (flags & SQLITE_OPEN_READONLY) == 0 && (opened & SQLITE_OPEN_READONLY) == 0 &&
      !sqlite3_uri_boolean(name, "nolock", 0) && !sqlite3_uri_boolean(name, "immutable", 0);
  p->entry->xproc().Attach(name, writable);
  p->base.pMethods = ShimMethods(o->pMethods->iVersion);
  return SQLITE_OK;
}

// ---- Pass-through VFS methods ---------------------------------------------------------
int ShimDelete(sqlite3_vfs* v, const char* name, int sync_dir) {
  return BaseVfs(v)->xDelete(BaseVfs(v), name, sync_dir);
}
int ShimAccess(sqlite3_vfs* v, const char* name, int flags, int* out) {
  return BaseVfs(v)->xAccess(BaseVfs(v), name, flags, out);
}
int ShimFullPathname(sqlite3_vfs* v, const char* name, int n, char* out) {
  return BaseVfs(v)->xFullPathname(BaseVfs(v), name, n, out);
}
void* ShimDlOpen(sqlite3_vfs* v, const char* path) { return BaseVfs(v)->xDlOpen(BaseVfs(v), path); }
void ShimDlError(sqlite3_vfs* v, int n, char* msg) { BaseVfs(v)->xDlError(BaseVfs(v), n, msg); }
void (*ShimDlSym(sqlite3_vfs* v, void* h, const char* sym))(void) {
  return BaseVfs(v)->xDlSym(BaseVfs(v), h, sym);
}
void ShimDlClose(sqlite3_vfs* v, void* h) { BaseVfs(v)->xDlClose(BaseVfs(v), h); }
int ShimRandomness(sqlite3_vfs* v, int n, char* out) {
  return BaseVfs(v)->xRandomness(BaseVfs(v), n, out);
}
// SQLite's default busy handler sleeps here: after a refusal it waits for that request's
// turn instead (locking.h).
int ShimSleep(sqlite3_vfs* v, int micros) { return SleepHook(BaseVfs(v), micros); }
int ShimCurrentTime(sqlite3_vfs* v, double* out) {
  return BaseVfs(v)->xCurrentTime(BaseVfs(v), out);
}
int ShimGetLastError(sqlite3_vfs* v, int n, char* out) {
  return BaseVfs(v)->xGetLastError ? BaseVfs(v)->xGetLastError(BaseVfs(v), n, out) : 0;
}
int ShimCurrentTimeInt64(sqlite3_vfs* v, sqlite3_int64* out) {
  return BaseVfs(v)->xCurrentTimeInt64(BaseVfs(v), out);
}
int ShimSetSystemCall(sqlite3_vfs* v, const char* name, sqlite3_syscall_ptr fn) {
  return BaseVfs(v)->xSetSystemCall(BaseVfs(v), name, fn);
}
sqlite3_syscall_ptr ShimGetSystemCall(sqlite3_vfs* v, const char* name) {
  return BaseVfs(v)->xGetSystemCall(BaseVfs(v), name);
}
const char* ShimNextSystemCall(sqlite3_vfs* v, const char* name) {
  return BaseVfs(v)->xNextSystemCall(BaseVfs(v), name);
}

// The registered VFS. Filled in by RegisterVfs under g_register_mu, then constant.
sqlite3_vfs g_vfs = {};
Mutex g_register_mu;
// The `safeconc` VFS this copy of the library stands for: &g_vfs, or the one another copy
// (loaded from a different path) registered first. Null until the first load.
sqlite3_vfs* g_active SC_GUARDED_BY(g_register_mu) = nullptr;

}  // namespace

int RegisterVfs(std::string* err) {
  MutexLock l(&g_register_mu);
  if (g_active != nullptr) {
    // Loading again expresses the same intent: make sure we are (still) the default, e.g.
    // after sqlite3_shutdown()/sqlite3_initialize() restored "unix" as the default.
    if (sqlite3_vfs_find(nullptr) != g_active) return sqlite3_vfs_register(g_active, 1);
    return SQLITE_OK;
  }
  if (sqlite3_vfs* other = sqlite3_vfs_find(kVfsName)) {
    // Another copy of this library (loaded from a different path) registered it already.
    // Its VFS does the job; registering a second one would wrap it again. This copy's g_vfs
    // stays unfilled and is never registered.
    g_active = other;
    return sqlite3_vfs_find(nullptr) == other ? SQLITE_OK : sqlite3_vfs_register(other, 1);
  }
  sqlite3_vfs* base = sqlite3_vfs_find(nullptr);
  if (base == nullptr) {
    *err = "no default VFS to wrap";
    return SQLITE_ERROR;
  }
  g_vfs.iVersion = base->iVersion < 3 ? base->iVersion : 3;
  g_vfs.szOsFile = static_cast<int>(sizeof(ShimFile)) + base->szOsFile;
  g_vfs.mxPathname = base->mxPathname;
  g_vfs.zName = kVfsName;
  g_vfs.pAppData = base;
  g_vfs.xOpen = ShimOpen;
  g_vfs.xDelete = ShimDelete;
  g_vfs.xAccess = ShimAccess;
  g_vfs.xFullPathname = ShimFullPathname;
  g_vfs.xDlOpen = ShimDlOpen;
  g_vfs.xDlError = ShimDlError;
  g_vfs.xDlSym = ShimDlSym;
  g_vfs.xDlClose = ShimDlClose;
  g_vfs.xRandomness = ShimRandomness;
  g_vfs.xSleep = ShimSleep;
  g_vfs.xCurrentTime = ShimCurrentTime;
  g_vfs.xGetLastError = ShimGetLastError;
  if (g_vfs.iVersion >= 2) g_vfs.xCurrentTimeInt64 = ShimCurrentTimeInt64;
  if (g_vfs.iVersion >= 3 && base->xSetSystemCall) {
    g_vfs.xSetSystemCall = ShimSetSystemCall;
    g_vfs.xGetSystemCall = ShimGetSystemCall;
    g_vfs.xNextSystemCall = ShimNextSystemCall;
  }
  int rc = sqlite3_vfs_register(&g_vfs, 1);
  if (rc != SQLITE_OK) {
    *err = std::string("sqlite3_vfs_register failed: ") + sqlite3_errstr(rc);
    return rc;
  }
  g_active = &g_vfs;
  return SQLITE_OK;
}

bool VfsOwnedByThisCopy() {
  MutexLock l(&g_register_mu);
  return g_active == &g_vfs;
}

sqlite3_vfs* VfsOfOtherCopy() {
  MutexLock l(&g_register_mu);
  return g_active != &g_vfs ? g_active : nullptr;
}

void WriteVfsJson(JsonWriter& w) {
  sqlite3_vfs* dflt = sqlite3_vfs_find(nullptr);
  sqlite3_vfs* mine = sqlite3_vfs_find(kVfsName);
  w.Key("vfs").BeginObject().Field("name", std::string(kVfsName));
  if (mine != nullptr && mine->pAppData != nullptr) {
    w.Field("base", std::string(static_cast<sqlite3_vfs*>(mine->pAppData)->zName));
  }
  // False after sqlite3_shutdown()+sqlite3_initialize(): new opens then bypass safeconc.
  w.Key("is_default").Bool(dflt != nullptr && dflt == mine);
  w.Field("default", std::string(dflt ? dflt->zName : ""));
  w.EndObject();
}

}  // namespace safeconc
