// refusal.h - the one owner of a refused lock request's record: when it began, its deadline
// (computed once, at the first refusal), the thread-local record through which the busy
// handler and the VFS xSleep come back for it, and how a failure is reported
// (safeconc_last_busy() and sqlite3_log), with every message text in one place.
//
// A request is refused, SQLite drops its locks and runs the busy handler, then retries the
// same request: the retries belong to the same refused request and keep its deadline. The
// record ends when the request is granted (ClearRefusal) or fails (RecordFailure).
//
// Thread safety: ShimFile::pending is the connection's (SQLite calls one method of a file at
// a time). The busy record is thread_local; it holds a shared_ptr to the refused handle's
// Ticket, never a bare pointer the xSleep path would follow alone: a connection may be closed
// on another thread while this thread's record still names it (busy.cc checks IsOpen).
#ifndef SAFECONC_VFS_REFUSAL_H
#define SAFECONC_VFS_REFUSAL_H

#include <sqlite3.h>

#include <memory>
#include <string>

#include "vfs/coordinator.h"

namespace safeconc {

struct ShimFile;

// What kind of wait a refused request needs from the busy handler / xSleep.
enum class BusyKind {
  kTurn,   // queued for the write turn: wait until its ticket may take the turn
  kCross,  // another process holds the base lock: poll with backoff
  kFinal,  // will not succeed by waiting (timed out): give up at once
};

// Why a request failed, as safeconc_last_busy() names it in "result".
enum class Outcome {
  kTimeout,   // waited its timeout (safeconc_timeout, or the binding's busy handler gave up)
  kFastFail,  // a read transaction asked to write while the write turn was held
  kBusy,      // the same, refused by a lock held outside the coordinator (another process)
};

// The refused request's deadline: set at its first refusal (now + safeconc_timeout) and kept
// by its retries. Starts the record if none is active.
Clock::time_point RefusalDeadline(ShimFile* p, const char* lock);
// True while a refused request of p is being retried.
bool RefusalActive(const ShimFile* p);

// Records, for this thread, that p's request `lock` was just refused and how the busy
// handler / xSleep should wait for it; makes sure the connection has a busy handler that will
// come back for it (enforced busy handling) unless the refusal is final.
void NoteRefusal(ShimFile* p, const char* lock, BusyKind kind);
// The refusal of p ended (granted, or given up): forget it, and the thread-local record.
void ClearRefusal(ShimFile* p);
// p's request failed: writes safeconc_last_busy()'s JSON (with what the coordinator knows of
// the holder) and logs it through sqlite3_log. `what` says what was waited for.
void RecordFailure(ShimFile* p, const char* lock, Outcome why, const char* what);

// The thread-local busy record (busy.cc's side of the protocol).
struct BusyRecord {
  std::shared_ptr<Ticket> ticket;  // keeps the coordinator alive; null: no record
  // Valid only while the ticket's file is open (Coordinator::IsOpen), and then only inside
  // SQLite on `db` (the busy handler).
  ShimFile* file = nullptr;
  sqlite3* db = nullptr;
  Clock::time_point refused_at;  // the latest refusal this record stands for
  BusyKind kind = BusyKind::kFinal;
  Clock::time_point deadline;
  int polls = 0;  // cross-process backoff step
  // Set by a refusal, cleared once a handler or xSleep woke the waiter for its turn: later
  // sleeps on this thread (wal.c's own retry loop sleeps through xSleep too) are ordinary
  // sleeps until the next refusal.
  bool armed = false;
};
BusyRecord& ThreadBusyRecord();

// safeconc_last_busy() for the database file of p: JSON, or "" if no request failed yet.
std::string LastBusyJson(ShimFile* p);

}  // namespace safeconc

#endif  // SAFECONC_VFS_REFUSAL_H
