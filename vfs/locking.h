// locking.h - the lock state machine of a shim file (lock_paths.cc) and the busy-handling
// hooks (busy.cc): where a lock request waits, where it must fail fast, and how the wait
// continues in the busy handler or the VFS xSleep.
//
// Wait points (see docs/architecture.md for why each is safe):
//   rollback NONE->SHARED            waits here for an in-process writer's PENDING/EXCLUSIVE
//   rollback RESERVED->EXCLUSIVE     waits here for readers to leave (commit)
//   turn at a lock period's start    waits here in FIFO order (safeconc_txn=immediate/serial)
//   SHARED->RESERVED, WAL WRITE      never wait here: queue, return SQLITE_BUSY, and let the
//                                    busy handler wait for this ticket's turn with no locks
//                                    held (SQLite drops them before it calls the handler)
#ifndef SAFECONC_VFS_LOCKING_H
#define SAFECONC_VFS_LOCKING_H

#include <sqlite3.h>

#include <string>

namespace safeconc {

struct ShimFile;

int LockPathLock(ShimFile* p, int level);
int LockPathUnlock(ShimFile* p, int level);
int LockPathShmLock(ShimFile* p, int offset, int n, int flags);
void LockPathShmBarrier(ShimFile* p);
// The file is closing: leave the coordinator, forget thread-local records about it.
void LockPathClose(ShimFile* p);

// The busy handler the extension installs on every connection (arg: the sqlite3*). It
// waits for the refused request's turn (woken on release), up to safeconc_timeout.
int BusyHandler(void* arg, int count);
// The VFS xSleep: SQLite's default busy handler sleeps through it. Right after this thread
// was refused a lock, it waits for that request's turn instead of sleeping blindly (returning
// early only when it is this waiter's turn). Otherwise it sleeps through the base VFS.
int SleepHook(sqlite3_vfs* base, int micros);

// ---- Shared by lock_paths.cc and busy.cc -------------------------------------------------

// What kind of wait a refused request needs from the busy handler / xSleep.
enum class BusyKind {
  kTurn,   // queued for the write turn: wait until its ticket is front with the turn free
  kCross,  // another process holds the base lock: poll with backoff
  kFinal,  // will not succeed by waiting (timed out, self-deadlock): give up at once
};

// Records, for this thread, that p's request `lock` was just refused, and makes sure the
// connection has a busy handler that will come back for it (enforced busy handling).
void NoteRefusal(ShimFile* p, const char* lock, BusyKind kind);
// Makes sure p's connection has a busy handler (enforced busy handling): probes the handler
// SQLite would run (SQLITE_FCNTL_BUSYHANDLER) and installs ours if there is none. Cheap
// unless the binding's own handler was already seen, in which case it does nothing.
void EnsureBusyHandler(ShimFile* p);
// The refusal of p ended (granted, or given up): forget the thread-local record of it.
void ClearRefusal(ShimFile* p);
// Writes p->last_busy for a request that failed, and logs it through sqlite3_log.
void RecordFailure(ShimFile* p, const char* lock, const char* result, const std::string& message);
// safeconc_last_busy()'s message for a write that SQLite failed at once (a read transaction
// that tried to write while the turn was busy).
extern const char* const kFastFailMessage;

// safeconc_last_busy() for the database file of p: JSON, or "" if no request failed yet.
std::string LastBusyJson(ShimFile* p);

}  // namespace safeconc

#endif  // SAFECONC_VFS_LOCKING_H
