// shim_file.cc - the io_methods of a main-database file opened through `safeconc`.
//
// Every method forwards to the base file (OrigFile). POSIX locks are per process and the
// unix VFS keeps per-inode bookkeeping only it can keep right, so the lock methods always
// reach the base: the coordinator is a gate in front of them, never a replacement.
// xFileControl answers the safeconc PRAGMAs and tags SQLITE_FCNTL_VFSNAME.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <strings.h>

#include <new>

#include "vfs/locking.h"
#include "vfs/misuse.h"
#include "vfs/shim.h"

namespace safeconc {
namespace {

ShimFile* Shim(sqlite3_file* f) { return reinterpret_cast<ShimFile*>(f); }
sqlite3_file* Orig(sqlite3_file* f) { return OrigFile(Shim(f)); }

// Misuse detection (vfs/misuse.h): one guard per method call.
CallGuard::Word& Owner(sqlite3_file* f) { return Shim(f)->call_owner; }

// ---- Pass-through methods -----------------------------------------------------
int ShimRead(sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
  CallGuard g(Owner(f), Shim(f)->path, "xRead");
  if (g.overlapping()) return SQLITE_MISUSE;
  sqlite3_file* o = Orig(f);
  return o->pMethods->xRead(o, buf, n, off);
}
int ShimWrite(sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
  CallGuard g(Owner(f), Shim(f)->path, "xWrite");
  if (g.overlapping()) return SQLITE_MISUSE;
  sqlite3_file* o = Orig(f);
  return o->pMethods->xWrite(o, buf, n, off);
}
int ShimTruncate(sqlite3_file* f, sqlite3_int64 size) {
  CallGuard g(Owner(f), Shim(f)->path, "xTruncate");
  if (g.overlapping()) return SQLITE_MISUSE;
  sqlite3_file* o = Orig(f);
  return o->pMethods->xTruncate(o, size);
}
int ShimSync(sqlite3_file* f, int flags) {
  CallGuard g(Owner(f), Shim(f)->path, "xSync");
  if (g.overlapping()) return SQLITE_MISUSE;
  sqlite3_file* o = Orig(f);
  return o->pMethods->xSync(o, flags);
}
int ShimFileSize(sqlite3_file* f, sqlite3_int64* size) {
  CallGuard g(Owner(f), Shim(f)->path, "xFileSize");
  if (g.overlapping()) return SQLITE_MISUSE;
  sqlite3_file* o = Orig(f);
  return o->pMethods->xFileSize(o, size);
}
int ShimSectorSize(sqlite3_file* f) {
  sqlite3_file* o = Orig(f);
  return o->pMethods->xSectorSize(o);
}
int ShimDeviceCharacteristics(sqlite3_file* f) {
  sqlite3_file* o = Orig(f);
  return o->pMethods->xDeviceCharacteristics(o);
}
int ShimShmMap(sqlite3_file* f, int pg, int pgsz, int extend, void volatile** pp) {
  CallGuard g(Owner(f), Shim(f)->path, "xShmMap");
  if (g.overlapping()) return SQLITE_MISUSE;
  sqlite3_file* o = Orig(f);
  return o->pMethods->xShmMap(o, pg, pgsz, extend, pp);
}
void ShimShmBarrier(sqlite3_file* f) {
  LockPathShmBarrier(Shim(f));  // may wait for the write turn before a WAL read start
  sqlite3_file* o = Orig(f);
  o->pMethods->xShmBarrier(o);
}
int ShimShmUnmap(sqlite3_file* f, int delete_flag) {
  sqlite3_file* o = Orig(f);
  return o->pMethods->xShmUnmap(o, delete_flag);
}
int ShimFetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** pp) {
  CallGuard g(Owner(f), Shim(f)->path, "xFetch");
  sqlite3_file* o = Orig(f);
  return o->pMethods->xFetch(o, off, amt, pp);
}
int ShimUnfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  CallGuard g(Owner(f), Shim(f)->path, "xUnfetch");
  sqlite3_file* o = Orig(f);
  return o->pMethods->xUnfetch(o, off, p);
}

// ---- Lock methods: counted, then through the coordinator to the base -----------------------
int ShimLock(sqlite3_file* f, int level) {
  CallGuard g(Owner(f), Shim(f)->path, "xLock");
  if (g.overlapping()) return SQLITE_MISUSE;
  ShimFile* p = Shim(f);
  p->counters.Bump(LockCounters::kLock);
  return LockPathLock(p, level);
}
int ShimUnlock(sqlite3_file* f, int level) {
  CallGuard g(Owner(f), Shim(f)->path, "xUnlock");
  ShimFile* p = Shim(f);
  p->counters.Bump(LockCounters::kUnlock);
  return LockPathUnlock(p, level);
}
int ShimCheckReservedLock(sqlite3_file* f, int* out) {
  CallGuard g(Owner(f), Shim(f)->path, "xCheckReservedLock");
  if (g.overlapping()) return SQLITE_MISUSE;
  ShimFile* p = Shim(f);
  p->counters.Bump(LockCounters::kCheckReserved);
  sqlite3_file* o = OrigFile(p);
  return o->pMethods->xCheckReservedLock(o, out);
}
int ShimShmLock(sqlite3_file* f, int offset, int n, int flags) {
  CallGuard g(Owner(f), Shim(f)->path, "xShmLock");
  if (g.overlapping() && (flags & SQLITE_SHM_LOCK) != 0) return SQLITE_MISUSE;
  ShimFile* p = Shim(f);
  p->counters.Bump(LockCounters::kShmLock);
  return LockPathShmLock(p, offset, n, flags);
}

// ---- Close --------------------------------------------------------------------------
int ShimClose(sqlite3_file* f) {
  {
    CallGuard g(Owner(f), Shim(f)->path, "xClose");
  }  // check only: the file is gone when a guard would end
  ShimFile* p = Shim(f);
  sqlite3_file* o = OrigFile(p);
  // Leave the coordinator and unregister first: once Release returns no other thread can
  // reach p's counters, and no queue holds its ticket.
  LockPathClose(p);
  Registry::Get().Release(p->entry, &p->counters);
  int rc = o->pMethods ? o->pMethods->xClose(o) : SQLITE_OK;
  p->~ShimFile();
  return rc;
}

// ---- File control: PRAGMAs and the VFS name ----------------------------------------------
char* Dup(const std::string& s) { return sqlite3_mprintf("%s", s.c_str()); }

// Answers `PRAGMA safeconc_*` for this connection. Returns SQLITE_NOTFOUND for other pragmas.
int HandlePragma(ShimFile* p, char** az) {
  const char* name = az[1];
  const char* arg = az[2];
  if (strcasecmp(name, "safeconc_stats") == 0) {
    if (arg != nullptr) {
      az[0] = sqlite3_mprintf("safeconc_stats: takes no value (got '%s')", arg);
      return SQLITE_ERROR;
    }
    JsonWriter w;
    Registry::Get().WriteEntryJson(w, p->entry);
    az[0] = Dup(w.str());
    return SQLITE_OK;
  }
  Knob k;
  if (!KnobByName(name, &k)) {
    if (!HasKnobPrefix(name)) return SQLITE_NOTFOUND;  // not ours: SQLite's or another VFS's
    az[0] = sqlite3_mprintf("unknown pragma %s: the safeconc pragmas are %s and safeconc_stats",
                            Echo(name).c_str(), KnobList().c_str());
    return SQLITE_ERROR;
  }
  if (arg != nullptr) {
    int64_t v;
    std::string err;
    if (!ParseKnob(k, arg, &v, &err)) {
      az[0] = Dup(err);
      return SQLITE_ERROR;
    }
    p->knobs.Set(k, v);
  }
  az[0] = Dup(FormatKnob(k, p->knobs.Get(k)));
  return SQLITE_OK;
}

// SQLITE_FCNTL_PDB: SQLite hands the file the address of its btree's `db` field, set to
// whichever connection enters the btree. Kept as an address (Caller() reads it inside a lock
// method, when it names the caller): its value at PDB time may be another connection of a
// shared cache that entered the btree meanwhile. Under shared cache every later connection
// sends PDB again on the same file, so a second PDB means shared cache: from then on the lock
// paths call no SQLite API on a connection (see Caller()). Both mistakes were made before:
// the value read here named another connection (or a closed one's address, reused by malloc,
// hid the second connection), and a lock call asked sqlite3_txn_state of a connection whose
// thread held that connection's mutex while it waited for the btree's, which the lock call's
// thread held (SQLite's threadtest3, create_drop_index_1: a deadlock). SQLite sends PDB after
// leaving the btree's mutex, so it may come while another connection of the cache is inside a
// lock call: only atomics are touched here, and no CallGuard is taken (it made that lock call
// fail with SQLITE_MISUSE).
int NotePdb(ShimFile* p, void* arg) {
  sqlite3** expected = nullptr;
  if (!p->db_slot.compare_exchange_strong(expected, static_cast<sqlite3**>(arg),
                                          std::memory_order_relaxed)) {
    p->shared_cache.store(true, std::memory_order_release);
  }
  sqlite3_file* o = OrigFile(p);
  return o->pMethods->xFileControl(o, SQLITE_FCNTL_PDB, arg);
}

int ShimFileControl(sqlite3_file* f, int op, void* arg) {
  if (op == SQLITE_FCNTL_PDB) return NotePdb(Shim(f), arg);
  CallGuard g(Owner(f), Shim(f)->path, "xFileControl");
  ShimFile* p = Shim(f);
  sqlite3_file* o = OrigFile(p);
  switch (op) {
    case SQLITE_FCNTL_PRAGMA: {
      int rc = HandlePragma(p, static_cast<char**>(arg));
      if (rc != SQLITE_NOTFOUND) return rc;
      break;
    }
    case SQLITE_FCNTL_BUSYHANDLER: {
      // SQLite hands every VFS its wrapper around the connection's busy handler; keep it so
      // the lock path can run the handler. Still forwarded below.
      void** ap = static_cast<void**>(arg);
      p->busy_fn = reinterpret_cast<int (*)(void*)>(ap[0]);
      p->busy_arg = ap[1];
      break;
    }
    default:
      break;
  }
  int rc = o->pMethods->xFileControl(o, op, arg);
  if (op == SQLITE_FCNTL_VFSNAME && rc == SQLITE_OK) {
    char** out = static_cast<char**>(arg);
    *out = sqlite3_mprintf("%s/%z", kVfsName, *out);
  }
  return rc;
}

// Method tables, one per base iVersion: SQLite checks iVersion before using the v2 (WAL)
// and v3 (mmap) slots, so we must not advertise what the base lacks.
#define SAFECONC_IO_METHODS(version)                                                         \
  {                                                                                          \
    version, ShimClose, ShimRead, ShimWrite, ShimTruncate, ShimSync, ShimFileSize, ShimLock, \
        ShimUnlock, ShimCheckReservedLock, ShimFileControl, ShimSectorSize,                  \
        ShimDeviceCharacteristics, ShimShmMap, ShimShmLock, ShimShmBarrier, ShimShmUnmap,    \
        ShimFetch, ShimUnfetch                                                               \
  }
const sqlite3_io_methods kMethods[3] = {SAFECONC_IO_METHODS(1), SAFECONC_IO_METHODS(2),
                                        SAFECONC_IO_METHODS(3)};
#undef SAFECONC_IO_METHODS

}  // namespace

const sqlite3_io_methods* ShimMethods(int base_version) {
  if (base_version < 1) base_version = 1;
  if (base_version > 3) base_version = 3;
  return &kMethods[base_version - 1];
}

bool IsShimFile(const sqlite3_file* f) {
  return f != nullptr && f->pMethods >= &kMethods[0] && f->pMethods <= &kMethods[2];
}

ShimFile* ShimFileOf(sqlite3* db, const char* schema) {
  sqlite3_file* f = nullptr;
  if (db == nullptr) return nullptr;
  if (sqlite3_file_control(db, schema ? schema : "main", SQLITE_FCNTL_FILE_POINTER, &f) !=
      SQLITE_OK) {
    return nullptr;
  }
  return IsShimFile(f) ? reinterpret_cast<ShimFile*>(f) : nullptr;
}

int64_t ConnectionKnob(sqlite3* db, Knob k, const char* schema) {
  ShimFile* p = ShimFileOf(db, schema);
  return p ? p->knobs.Get(k) : DefaultKnob(k);
}

}  // namespace safeconc
