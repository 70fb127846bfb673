// locking.h - the lock state machine of a shim file (lock_paths.cc) and the busy-handling
// hooks (busy.cc): where a lock request waits, where it must fail fast, and how the wait
// continues in the busy handler or the VFS xSleep.
//
// Wait points (see docs/architecture.md for why each is safe):
//   rollback NONE->SHARED            waits here for an in-process writer's PENDING/EXCLUSIVE
//   rollback RESERVED->EXCLUSIVE     waits here for readers to leave (commit)
//   turn at a lock period's start    waits here for the turn (safeconc_txn=immediate/serial,
//                                    or a writing statement); if it cannot be had, the period
//                                    goes on without it, as stock SQLite would
//   SHARED->RESERVED, WAL WRITE      never wait here: a request SQLite retries queues and gets
//                                    SQLITE_BUSY, and the busy handler waits for its turn with
//                                    no locks held; an upgrade (never retried) takes a free
//                                    turn or fails at once
// Every wait here is bounded by the connection's busy policy: its binding's busy handler, or
// safeconc_timeout when the binding set none.
#ifndef SAFECONC_VFS_LOCKING_H
#define SAFECONC_VFS_LOCKING_H

#include <sqlite3.h>

#include "vfs/refusal.h"

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

// Makes sure p's connection has a busy handler that will come back for a refused request
// (enforced busy handling): probes the handler SQLite would run (SQLITE_FCNTL_BUSYHANDLER)
// and installs ours if there is none. Does nothing once the binding's own handler was seen,
// or when the calling connection cannot be known (shared cache).
void EnsureBusyHandler(ShimFile* p);
// A connection opens (the auto-extension): forget what was known of the busy handler of a
// closed connection that had the same address.
void ForgetConnection(sqlite3* db);

// A wait inside a lock call (a safe point) that follows the connection's busy policy: after a
// refused try, the lock path runs the connection's busy handler through SQLite's wrapper,
// exactly as SQLite itself would between two tries. A sleep the handler asks for through the
// VFS xSleep is not slept there: it returns at once and the lock path spends that time parked
// in the coordinator, woken and trying again at each release (lock_paths.cc, WaitInLock).
struct InLockWait {
  sqlite3* db;                  // the connection whose handler runs (null: shared cache)
  Clock::duration slept_for{};  // the sleeps it asked for, to be spent by the lock path
  bool reached_ours = false;    // the handler that ran is safeconc's own
  bool slept = false;           // the handler slept through the VFS xSleep
  bool gave_up = false;         // the binding's handler (seen before) returned 0 at once
};
// Runs p's busy handler once for `w`. Returns what the handler said (non-zero: retry).
// Afterwards w's flags tell what happened. A handler that returns 0 without sleeping through the
// VFS is indistinguishable from no handler, unless the binding's handler was seen on this
// connection before (then it gave up); with none, safeconc's own is installed.
int RunHandlerInLock(ShimFile* p, InLockWait* w);
// Called at the start of every lock method: a lock call made while this thread runs a
// connection's handler for an in-lock wait (the handler itself ran SQL) ends that in-lock
// mode for the rest of the handler's run, so the nested connection's own waits and sleeps are
// never taken for the outer wait's.
void LeaveInLockMode();

}  // namespace safeconc

#endif  // SAFECONC_VFS_LOCKING_H
