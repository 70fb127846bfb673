// fault_vfs.cc - see fault_vfs.h.
#include "tests/fault_vfs.h"

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>

namespace fault {
namespace {

enum Method {
  kOpen,
  kDelete,
  kAccess,
  kFullPathname,
  kClose,
  kRead,
  kWrite,
  kTruncate,
  kSync,
  kFileSize,
  kLock,
  kUnlock,
  kCheckReserved,
  kFileControl,
  kShmMap,
  kShmLock,
  kShmUnmap,
  kFetch,
  kUnfetch,
  kMethods
};

std::atomic<int64_t> g_count[kMethods];
std::atomic<int64_t> g_target{0};
std::atomic<int> g_kind{0};
std::atomic<int64_t> g_injected{0};

std::mutex g_gate_mu;
std::condition_variable g_gate_cv;
bool g_gate_closed = false;  // guarded by g_gate_mu
std::atomic<int64_t> g_reads_held{0};
int g_lock_gate_level = 0;  // guarded by g_gate_mu; 0: the lock gate is open
std::atomic<int64_t> g_locks_held{0};

sqlite3_vfs* g_base = nullptr;
sqlite3_vfs g_vfs;

// The error a method reports for an injected fault of the armed kind.
int ErrorFor(Method m) {
  const Kind k = static_cast<Kind>(g_kind.load(std::memory_order_relaxed));
  switch (k) {
    case Kind::kNomem:
      return m == kOpen ? SQLITE_NOMEM : SQLITE_IOERR_NOMEM;
    case Kind::kFull:
      if (m == kWrite || m == kTruncate || m == kSync) return SQLITE_FULL;
      break;
    case Kind::kBusy:
      if (m == kLock || m == kShmLock || m == kCheckReserved) return SQLITE_BUSY;
      break;
    case Kind::kShortRead:
      if (m == kRead) return SQLITE_IOERR_SHORT_READ;
      break;
    case Kind::kIoerr:
      break;
  }
  switch (m) {
    case kOpen:
      return SQLITE_CANTOPEN;
    case kDelete:
      return SQLITE_IOERR_DELETE;
    case kAccess:
      return SQLITE_IOERR_ACCESS;
    case kRead:
      return SQLITE_IOERR_READ;
    case kWrite:
      return SQLITE_IOERR_WRITE;
    case kTruncate:
      return SQLITE_IOERR_TRUNCATE;
    case kSync:
      return SQLITE_IOERR_FSYNC;
    case kFileSize:
      return SQLITE_IOERR_FSTAT;
    case kLock:
      return SQLITE_IOERR_LOCK;
    case kUnlock:
      return SQLITE_IOERR_UNLOCK;
    case kCheckReserved:
      return SQLITE_IOERR_CHECKRESERVEDLOCK;
    case kShmMap:
      return SQLITE_IOERR_SHMMAP;
    case kShmLock:
      return SQLITE_IOERR_SHMLOCK;
    case kClose:
      return SQLITE_IOERR_CLOSE;
    default:
      return SQLITE_IOERR;
  }
}

// 0, or the error this call must report.
int Fault(Method m) {
  const int64_t n = g_count[m].fetch_add(1, std::memory_order_relaxed) + 1;
  if (n != g_target.load(std::memory_order_relaxed)) return 0;
  g_injected.fetch_add(1, std::memory_order_relaxed);
  return ErrorFor(m);
}

struct File {
  sqlite3_file base;  // must be first
  bool main_db;
  // the base VFS's file follows
};
static_assert(sizeof(File) % 8 == 0, "the base file after a File must stay 8-aligned");
sqlite3_file* Real(sqlite3_file* f) {
  return reinterpret_cast<sqlite3_file*>(reinterpret_cast<File*>(f) + 1);
}
#define REAL(f) Real(f)->pMethods

int FClose(sqlite3_file* f) {
  const int e = Fault(kClose);
  const int rc = REAL(f)->xClose(Real(f));
  return e ? e : rc;
}
int FRead(sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
  if (reinterpret_cast<File*>(f)->main_db) {
    std::unique_lock<std::mutex> l(g_gate_mu);
    if (g_gate_closed) {
      g_reads_held.fetch_add(1);
      // Bounded (generously) so that a build without misuse detection, whose second call
      // reaches the gate too, fails its test instead of hanging.
      g_gate_cv.wait_for(l, std::chrono::seconds(5), [] { return !g_gate_closed; });
    }
  }
  if (const int e = Fault(kRead)) {
    if (e == SQLITE_IOERR_SHORT_READ) std::memset(buf, 0, static_cast<size_t>(n));
    return e;
  }
  return REAL(f)->xRead(Real(f), buf, n, off);
}
int FWrite(sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
  if (const int e = Fault(kWrite)) return e;
  return REAL(f)->xWrite(Real(f), buf, n, off);
}
int FTruncate(sqlite3_file* f, sqlite3_int64 size) {
  if (const int e = Fault(kTruncate)) return e;
  return REAL(f)->xTruncate(Real(f), size);
}
int FSync(sqlite3_file* f, int flags) {
  if (const int e = Fault(kSync)) return e;
  return REAL(f)->xSync(Real(f), flags);
}
int FFileSize(sqlite3_file* f, sqlite3_int64* size) {
  if (const int e = Fault(kFileSize)) return e;
  return REAL(f)->xFileSize(Real(f), size);
}
int FLock(sqlite3_file* f, int level) {
  if (reinterpret_cast<File*>(f)->main_db) {
    std::unique_lock<std::mutex> l(g_gate_mu);
    if (g_lock_gate_level == level) {
      g_locks_held.fetch_add(1);
      // Bounded, so that a test whose gate is never opened fails instead of hanging.
      g_gate_cv.wait_for(l, std::chrono::seconds(10), [] { return g_lock_gate_level == 0; });
    }
  }
  if (const int e = Fault(kLock)) return e;
  return REAL(f)->xLock(Real(f), level);
}
int FUnlock(sqlite3_file* f, int level) {
  const int e = Fault(kUnlock);
  const int rc = REAL(f)->xUnlock(Real(f), level);
  return e ? e : rc;
}
int FCheckReserved(sqlite3_file* f, int* out) {
  if (const int e = Fault(kCheckReserved)) return e;
  return REAL(f)->xCheckReservedLock(Real(f), out);
}
int FFileControl(sqlite3_file* f, int op, void* arg) {
  // Counted, never failed: most ops are questions SQLite asks of every VFS (NOTFOUND is normal).
  Fault(kFileControl);
  return REAL(f)->xFileControl(Real(f), op, arg);
}
int FSectorSize(sqlite3_file* f) { return REAL(f)->xSectorSize(Real(f)); }
int FDeviceCharacteristics(sqlite3_file* f) { return REAL(f)->xDeviceCharacteristics(Real(f)); }
int FShmMap(sqlite3_file* f, int pg, int pgsz, int extend, void volatile** pp) {
  if (const int e = Fault(kShmMap)) return e;
  return REAL(f)->xShmMap(Real(f), pg, pgsz, extend, pp);
}
int FShmLock(sqlite3_file* f, int offset, int n, int flags) {
  const int e = Fault(kShmLock);
  if (e && (flags & SQLITE_SHM_LOCK)) return e;
  const int rc = REAL(f)->xShmLock(Real(f), offset, n, flags);
  return e ? e : rc;
}
void FShmBarrier(sqlite3_file* f) { REAL(f)->xShmBarrier(Real(f)); }
int FShmUnmap(sqlite3_file* f, int del) {
  const int e = Fault(kShmUnmap);
  const int rc = REAL(f)->xShmUnmap(Real(f), del);
  return e ? e : rc;
}
int FFetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** pp) {
  if (const int e = Fault(kFetch)) {
    *pp = nullptr;
    return e;
  }
  return REAL(f)->xFetch(Real(f), off, amt, pp);
}
int FUnfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  Fault(kUnfetch);  // counted only: an unfetch that fails would leak the mapping's reference
  return REAL(f)->xUnfetch(Real(f), off, p);
}

const sqlite3_io_methods kIo = {3,
                                FClose,
                                FRead,
                                FWrite,
                                FTruncate,
                                FSync,
                                FFileSize,
                                FLock,
                                FUnlock,
                                FCheckReserved,
                                FFileControl,
                                FSectorSize,
                                FDeviceCharacteristics,
                                FShmMap,
                                FShmLock,
                                FShmBarrier,
                                FShmUnmap,
                                FFetch,
                                FUnfetch};

int VOpen(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out) {
  File* p = reinterpret_cast<File*>(f);
  p->base.pMethods = nullptr;
  if (const int e = Fault(kOpen)) return e;
  sqlite3_file* r = Real(f);
  const int rc = g_base->xOpen(g_base, name, r, flags, out);
  if (rc != SQLITE_OK) return rc;  // the base cleans up after itself
  p->main_db = (flags & SQLITE_OPEN_MAIN_DB) != 0;
  p->base.pMethods = &kIo;
  return SQLITE_OK;
}
int VDelete(sqlite3_vfs*, const char* name, int sync) {
  if (const int e = Fault(kDelete)) return e;
  return g_base->xDelete(g_base, name, sync);
}
int VAccess(sqlite3_vfs*, const char* name, int flags, int* out) {
  if (const int e = Fault(kAccess)) return e;
  return g_base->xAccess(g_base, name, flags, out);
}
int VFullPathname(sqlite3_vfs*, const char* name, int n, char* out) {
  if (const int e = Fault(kFullPathname)) return e == SQLITE_IOERR_NOMEM ? e : SQLITE_CANTOPEN;
  return g_base->xFullPathname(g_base, name, n, out);
}
void* VDlOpen(sqlite3_vfs*, const char* p) { return g_base->xDlOpen(g_base, p); }
void VDlError(sqlite3_vfs*, int n, char* m) { g_base->xDlError(g_base, n, m); }
void (*VDlSym(sqlite3_vfs*, void* h, const char* s))(void) { return g_base->xDlSym(g_base, h, s); }
void VDlClose(sqlite3_vfs*, void* h) { g_base->xDlClose(g_base, h); }
int VRandomness(sqlite3_vfs*, int n, char* out) { return g_base->xRandomness(g_base, n, out); }
int VSleep(sqlite3_vfs*, int us) { return g_base->xSleep(g_base, us); }
int VCurrentTime(sqlite3_vfs*, double* t) { return g_base->xCurrentTime(g_base, t); }
int VGetLastError(sqlite3_vfs*, int n, char* m) { return g_base->xGetLastError(g_base, n, m); }
int VCurrentTimeInt64(sqlite3_vfs*, sqlite3_int64* t) {
  return g_base->xCurrentTimeInt64(g_base, t);
}

}  // namespace

const char* KindName(Kind k) {
  static const char* const kNames[] = {"IOERR", "NOMEM", "FULL", "BUSY", "SHORT_READ"};
  return kNames[static_cast<int>(k)];
}

void Register() {
  if (sqlite3_vfs_find("fault") != nullptr) return;
  g_base = sqlite3_vfs_find(nullptr);
  g_vfs = sqlite3_vfs{};
  g_vfs.iVersion = 2;
  g_vfs.szOsFile = static_cast<int>(sizeof(File)) + g_base->szOsFile;
  g_vfs.mxPathname = g_base->mxPathname;
  g_vfs.zName = "fault";
  g_vfs.xOpen = VOpen;
  g_vfs.xDelete = VDelete;
  g_vfs.xAccess = VAccess;
  g_vfs.xFullPathname = VFullPathname;
  g_vfs.xDlOpen = VDlOpen;
  g_vfs.xDlError = VDlError;
  g_vfs.xDlSym = VDlSym;
  g_vfs.xDlClose = VDlClose;
  g_vfs.xRandomness = VRandomness;
  g_vfs.xSleep = VSleep;
  g_vfs.xCurrentTime = VCurrentTime;
  g_vfs.xGetLastError = VGetLastError;
  g_vfs.xCurrentTimeInt64 = VCurrentTimeInt64;
  sqlite3_vfs_register(&g_vfs, 1);
}

void Arm(int64_t n, Kind kind) {
  g_target.store(0);
  for (auto& c : g_count) c.store(0);
  g_kind.store(static_cast<int>(kind));
  g_target.store(n);
}
void Disarm() { g_target.store(0); }
int64_t MaxCalls() {
  int64_t m = 0;
  for (auto& c : g_count) m = std::max(m, c.load());
  return m;
}
int64_t Injected() { return g_injected.load(); }

void CloseReadGate() {
  std::lock_guard<std::mutex> l(g_gate_mu);
  g_gate_closed = true;
  g_reads_held.store(0);
}
void OpenReadGate() {
  {
    std::lock_guard<std::mutex> l(g_gate_mu);
    g_gate_closed = false;
  }
  g_gate_cv.notify_all();
}
int64_t ReadsHeld() { return g_reads_held.load(); }

void CloseLockGate(int level) {
  std::lock_guard<std::mutex> l(g_gate_mu);
  g_lock_gate_level = level;
  g_locks_held.store(0);
}
void OpenLockGate() {
  {
    std::lock_guard<std::mutex> l(g_gate_mu);
    g_lock_gate_level = 0;
  }
  g_gate_cv.notify_all();
}
int64_t LocksHeld() { return g_locks_held.load(); }

}  // namespace fault
