// shim.h - the `safeconc` VFS: internal interface shared by vfs/ and ext/.
//
// The VFS wraps the VFS that was the process default when the extension was loaded
// (normally "unix"). Main database files get a ShimFile in front of the base file; journals,
// WAL files and temp files are opened by the base VFS directly and never see the shim.
// Every method of a ShimFile forwards to the base file; the lock methods and
// xFileControl are the only places with logic of their own.
//
// Thread safety: SQLite never calls two methods of one sqlite3_file at once, so a ShimFile's
// plain fields are owned by whichever thread is inside SQLite for that connection.
// Fields read by other threads (knobs, counters) are atomics. A binding that breaks that rule
// (a connection opened with SQLITE_OPEN_NOMUTEX used by two threads at once) is detected by
// `call_owner` (vfs/misuse.h): counted, logged, and refused with SQLITE_MISUSE where it can be.
#ifndef SAFECONC_VFS_SHIM_H
#define SAFECONC_VFS_SHIM_H

#include <sqlite3.h>

#include <atomic>
#include <memory>
#include <string>

#include "vfs/coordinator.h"
#include "vfs/knobs.h"
#include "vfs/registry.h"

namespace safeconc {

constexpr const char* kVfsName = "safeconc";

// One open main-database file (one per connection per attached database). SQLite
// allocates szOsFile bytes for it; the base VFS's file lives right after this struct.
// SQLite promises only 8-byte alignment for that memory (the pager carves it out of a larger
// allocation at ROUND8 offsets), so ShimFile must not ask for more (see the static_asserts).
struct ShimFile {
  sqlite3_file base;  // must be first: SQLite sees only this
  // Constant after xOpen.
  sqlite3_vfs* base_vfs;  // the wrapped VFS
  DbEntry* entry;         // the registry entry for this file's inode
  const char* path;       // the name SQLite opened (owned by SQLite, valid until xClose)
  // Written by the connection's thread, read by diagnostics anywhere (atomics inside).
  KnobSet knobs;                   // this connection's knob values
  LockCounters counters;           // this handle's lock calls
  std::shared_ptr<Ticket> ticket;  // place in the coordinator's line (shared with busy records)
  uint64_t handle_id = 0;          // process-unique, for diagnostics
  // Where SQLite keeps the connection using the file (SQLITE_FCNTL_PDB hands over the address
  // of the shared btree's `db` field, which SQLite sets to the connection that enters the
  // btree, so it names the caller of any lock method, which runs inside the btree). Under
  // shared cache one file serves several connections and SQLite sends PDB once per connection:
  // from the second one on, `shared_cache` is set and the lock paths call no SQLite API on a
  // connection (see Caller()). Atomics: another connection's open writes them while this
  // one's thread reads them.
  std::atomic<sqlite3**> db_slot{nullptr};
  std::atomic<bool> shared_cache{false};
  // Owned by the connection's thread (SQLite calls one method of a file at a time; under
  // shared cache, one connection at a time, under the shared btree's mutex).
  int (*busy_fn)(void*) = nullptr;  // SQLite's busy-handler wrapper (SQLITE_FCNTL_BUSYHANDLER)
  void* busy_arg = nullptr;
  int level = SQLITE_LOCK_NONE;  // the base lock level this handle holds
  int read_marks = 0;            // WAL read-mark (READ_i shared) locks held
  unsigned turn_reasons = 0;     // TurnReason bits; non-zero iff this handle holds the turn
  bool pre_read_turn = false;    // the turn was taken before a WAL read start (xShmBarrier)
  bool xproc_pre_read = false;   // ... and so was the shared one (vfs/xproc.h MarkPreRead)
  // A turn wait of this lock period gave up (timeout, or the binding's handler gave up) and
  // the read went on without the turn: no second wait until the period ends, and its write
  // fails at once rather than wait a second timeout.
  bool turn_gave_up = false;
  // A WAL read start of this lock period stopped waiting for the turn because a rollback-mode
  // writer is ahead (Coordinator::FileWriterAheadLocked, during a journal_mode switch): its read
  // goes on without the turn, and is not asked again until the period ends.
  bool turn_yielded = false;
  // WAL: the write lock was taken without the turn (a rollback-mode writer was ahead): the lock
  // period does not end before it is released (wal.c's log restart drops the read mark while
  // holding it, and the next read mark must not wait for the turn).
  bool base_write = false;
  // Its mark is in the sidecar (CrossProcess::NoteFileWriter): it holds RESERVED, or an
  // EXCLUSIVE lock it was granted (not the PENDING a refused SHARED->EXCLUSIVE leaves).
  bool xproc_file_writer = false;
  bool ckpt_held = false;  // WAL CKPT lock held: a checkpoint, not a read start
  bool upgraded = false;   // rollback: this write transaction began as a read (an upgrade)
  // An upgrade that found the turn held by a writing statement not yet at its write lock
  // (Coordinator::GoPastHolder) asked the base itself, as stock SQLite would, and holds
  // the base write lock without the turn until it releases it (lock_paths.cc, WriteStart).
  bool past_holder = false;
  // This write already waited for open read transactions (DeferToReadTxns in lock_paths.cc):
  // its retries do not wait again. Cleared once its write lock is taken, or when a lock period
  // starts that is not the retry of a refused request (a new statement).
  bool deferred = false;
  enum class Handler { kUnknown, kOurs, kBinding };
  Handler handler = Handler::kUnknown;  // whose busy handler the connection runs
  // The current refused request, until it is granted or fails (owned by vfs/refusal.cc).
  struct Pending {
    bool active = false;
    bool final = false;          // its last refusal was final: no retry continues it
    const char* lock = "";       // what was asked for ("RESERVED", "WAL WRITE", ...)
    Clock::time_point arrived;   // first refusal
    Clock::time_point last;      // latest refusal (a retry comes back within kStaleTicket)
    Clock::time_point deadline;  // arrived + safeconc_timeout
  } pending;
  // JSON: why this connection's last lock request failed ("" if none). Guarded by a mutex in
  // vfs/refusal.cc (under shared cache other connections read it).
  std::string last_busy;
  // Misuse detection: the thread inside a method of this file (the address of a thread-local,
  // 0 if none). Plain relaxed load/store, no read-modify-write: correct use is serialised by
  // SQLite's own mutexes (connection or shared-cache btree), whose release/acquire orders one
  // call's clearing store before the next call's load, so it never reports correct use; a
  // real overlap is seen at the second call's entry or the first call's exit.
  std::atomic<uintptr_t> call_owner{0};
};

static_assert(alignof(ShimFile) <= 8, "SQLite aligns sqlite3_file memory to 8 bytes only");
static_assert(sizeof(ShimFile) % 8 == 0, "the base file after a ShimFile must stay 8-aligned");

// The base file, stored right after the ShimFile.
inline sqlite3_file* OrigFile(ShimFile* p) { return reinterpret_cast<sqlite3_file*>(p + 1); }

// The connection making p's VFS calls, when it can be known: null under shared cache (and
// before SQLite said). Only the calling connection may be passed to an SQLite API from
// inside a VFS method.
inline sqlite3* Caller(const ShimFile* p) {
  if (p->shared_cache.load(std::memory_order_acquire)) return nullptr;
  // Read only inside the file's lock methods (the connection holds the btree: the field is
  // the caller and nobody writes it meanwhile).
  sqlite3** slot = p->db_slot.load(std::memory_order_relaxed);
  return slot != nullptr ? *slot : nullptr;
}

// Registers the VFS (once per process; later calls are harmless) and makes it the
// default. Returns an SQLite code; on failure *err says why.
int RegisterVfs(std::string* err);

// False when another copy of this library (loaded from a different path) had registered
// `safeconc` first and RegisterVfs deferred to it: this copy must then add nothing of its
// own (its functions would read its own, empty registry and knob defaults).
bool VfsOwnedByThisCopy();
// The `safeconc` VFS registered by another copy of this library, or null if this copy owns it
// (or nothing was loaded yet).
sqlite3_vfs* VfsOfOtherCopy();

// Applies the URI knobs of database file name `name` (as SQLite hands it to xOpen) to
// `knobs`. Returns false, and logs why through sqlite3_log, when a safeconc_ parameter names
// no knob or has a bad value: the open must fail then.
bool ApplyUriKnobs(const char* name, KnobSet* knobs);

// The io_methods table for a base file of the given iVersion (1..3).
const sqlite3_io_methods* ShimMethods(int base_version);

// True if `f` is a main-database file opened through the safeconc VFS.
bool IsShimFile(const sqlite3_file* f);

// The shim file behind `db`'s database `schema` ("main" if null), or null when that
// database does not go through safeconc (another VFS, :memory:, not open yet).
// Must be called on the connection's thread (it uses sqlite3_file_control).
ShimFile* ShimFileOf(sqlite3* db, const char* schema = nullptr);

// The connection's value of knob `k` for `schema`; the process default when the database
// does not go through safeconc.
int64_t ConnectionKnob(sqlite3* db, Knob k, const char* schema = nullptr);

// The VFS's own diagnostics: name, base, whether it is still the default.
void WriteVfsJson(JsonWriter& w);

}  // namespace safeconc

#endif  // SAFECONC_VFS_SHIM_H
