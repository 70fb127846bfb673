// lock_paths.cc - what each lock call of a main-database file does in front of the base
// file: the coordinator's state machine.
//
//   rollback journal                      WAL
//   xLock(SHARED)     lock period starts  xShmLock(READ_i, SHARED)  lock period starts
//   xLock(RESERVED)   write turn          xShmLock(WRITE, EXCL)     write turn
//   xLock(EXCLUSIVE)  commit (waits for readers here)
//   xUnlock(SHARED)   write turn ends     xShmLock(WRITE, UNLOCK)   write turn ends
//   xUnlock(NONE)     lock period ends    xShmLock(READ_i, UNLOCK)  lock period ends
//
// Every call still reaches the base file; the coordinator only decides whether to call it
// now, wait first (at safe points), or refuse at once (SQLITE_BUSY, with the waiting done in
// the busy handler after SQLite dropped its locks). See locking.h for the wait points and
// vfs/timing.h for the fairness policy.
//
// Only the calling connection is ever passed to an SQLite API (Caller(p)); under shared cache
// it is unknown, and the paths fall back to what needs no connection: no look-ahead at the
// running statements, every write start treated as one SQLite may not retry (it takes a free
// turn or is refused at once, as the base lock would refuse it), no handler installed.
//
// Thread safety: SQLite calls one method of a file at a time, so the ShimFile fields used
// here are the calling thread's; the shared state is in the Coordinator, behind its mutex,
// which is never held across a base call.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <algorithm>
#include <chrono>

#include <thread>

#include "base/thread_id.h"
#include "vfs/locking.h"
#include "vfs/lookahead.h"
#include "vfs/shim.h"
#include "vfs/timing.h"

namespace safeconc {
namespace {

constexpr int kWalWriteLock = 0;  // WAL_WRITE_LOCK
constexpr int kWalCkptLock = 1;   // WAL_CKPT_LOCK
constexpr int kWalReadLock0 = 3;  // WAL_READ_LOCK(0); READ_i = 3 + i, i < 5
constexpr int kWalReadLocks = 5;

Coordinator& Coord(ShimFile* p) { return *p->ticket->coord; }

Clock::duration Fair(ShimFile* p) { return std::chrono::milliseconds(p->knobs.Get(Knob::kFairMs)); }

CrossProcess& Xp(ShimFile* p) { return p->entry->xproc(); }

// Is the turn busy here or in another process? (Then a lock period that will write waits
// for it at its start, a safe point.)
bool Contended(ShimFile* p) { return Coord(p).Contended() || Xp(p).Contended(); }

// After the in-process turn, the shared one (other processes, vfs/xproc.h). True when held,
// or when the sidecar cannot be had (no sidecar, its mutex not available in time): the base
// lock then decides, as without it. `until`: wait in the shared line until then; none: only
// a free turn a newcomer may take. `since`: when the request began waiting in this process.
// `yielded`: given for a WAL read start (which holds the database file's SHARED lock); set,
// and false returned, when a handle of another process holds the file's lock above SHARED
// (CrossProcess::OtherFileWriter): a rollback-mode writer of a journal_mode switch, whose
// commit waits for that SHARED lock while it holds the shared turn, or waits for its holder.
bool TakeShared(ShimFile* p, uint64_t tid, const Clock::time_point* until,
                Clock::time_point since = Clock::now(), bool* yielded = nullptr) {
  // Waiting in the shared line, this handle holds up this process's line: its fairness
  // clock there starts when the longest-waiting of them began (looked up only if the shared
  // line is in use: a process alone skips the coordinator's mutex on every park).
  if (until != nullptr && !Xp(p).Engaged()) return true;
  const CrossProcess::Grant g =
      until != nullptr
          ? Xp(p).Take(p->handle_id, tid, Fair(p), Coord(p).OldestWaitSince(p->ticket.get(), since),
                       *until, yielded != nullptr)
          : Xp(p).TryTake(p->handle_id, tid, /*upgrade=*/false);
  if (g == CrossProcess::Grant::kGranted || g == CrossProcess::Grant::kUnavailable) return true;
  if (yielded != nullptr &&
      (g == CrossProcess::Grant::kYielded || (until == nullptr && Xp(p).OtherFileWriter()))) {
    *yielded = true;
    Coord(p).CountFileWriterYield();
  }
  return false;
}

// Gives back the write turn: the in-process one and the shared one.
void ReleaseTurns(ShimFile* p) {
  // The shared turn first: otherwise another handle of this process could take the in-process
  // turn and find the shared one still held by this process, passing it on without the
  // shared line's fairness check.
  Xp(p).Release(p->handle_id);
  Coord(p).ReleaseTurn(p->ticket.get());
}

// Does this handle hold the database file's lock above SHARED (as far as the lock paths know:
// a failed EXCLUSIVE counts as PENDING)? In WAL mode only while it closes the WAL (the
// checkpoint of a close or of journal_mode=DELETE, under EXCLUSIVE: wal.c makes no WAL-index
// lock calls then, so no CKPT lock tells it apart from a read start) or in
// locking_mode=EXCLUSIVE. A WAL read start does not wait for the turn then: every other
// connection of the file waits for that lock, possibly holding the turn (taken at its lock
// period's start, then waiting for SHARED), and the wait deadlocks (threadtest3's walthread2
// hung so, forever with its busy handler that never gives up).
bool HoldsFileLock(ShimFile* p) { return p->level > SQLITE_LOCK_SHARED; }

// Records the base lock level; tells the coordinator when the handle's lock crosses SHARED
// (Coordinator::NoteFileWriter: WAL connections do not wait for such a turn holder), and the
// sidecar when it holds RESERVED or a granted EXCLUSIVE (CrossProcess::NoteFileWriter: WAL
// connections of other processes do not wait for the shared turn meanwhile). Only those: a
// SHARED->EXCLUSIVE that was refused (a WAL connection closing beside others) is recorded as
// PENDING, waits for nobody, and must not overwrite the one mark the sidecar has (RESERVED is
// one handle's at a time in all processes, and a granted EXCLUSIVE excludes every other lock).
void SetLevel(ShimFile* p, int level) {
  const bool was = HoldsFileLock(p);
  p->level = level;
  if (HoldsFileLock(p) != was) Coord(p).NoteFileWriter(p->ticket.get(), !was);
  const bool mark = level == SQLITE_LOCK_RESERVED || level == SQLITE_LOCK_EXCLUSIVE ||
                    (level == SQLITE_LOCK_PENDING && p->xproc_file_writer);
  if (mark != p->xproc_file_writer) {
    p->xproc_file_writer = mark;
    Xp(p).NoteFileWriter(p->handle_id, mark);
  }
}

// Does this lock period take the write turn first?
bool TxnWantsTurn(ShimFile* p) {
  sqlite3* db = Caller(p);
  if (db == nullptr) return p->knobs.txn() == TxnMode::kSerial;
  switch (p->knobs.txn()) {
    case TxnMode::kSerial:
      return true;
    case TxnMode::kImmediate:
      if (sqlite3_get_autocommit(db) == 0) return true;
      break;
    case TxnMode::kDeferred:
      break;
  }
  // Only worth a look at the running statements when the turn is busy: otherwise the write
  // lock request that follows gets the turn at once anyway.
  return Contended(p) && StatementWillWrite(db);
}

// Does a WAL read start (its barrier, or its read mark if the barrier did not ask) take the
// turn first? Not when this lock period already holds or went past it, already stopped
// waiting for a rollback-mode writer (turn_yielded), or the handle holds the file's lock
// above SHARED (HoldsFileLock).
bool WalReadStartWantsTurn(ShimFile* p) {
  return p->read_marks == 0 && p->turn_reasons == 0 && !p->past_holder && !p->turn_yielded &&
         !HoldsFileLock(p) && TxnWantsTurn(p);
}

void TakeReason(ShimFile* p, unsigned reason) { p->turn_reasons |= reason; }

// A WAL request yielded to a file writer (Coordinator::FileWriterAheadLocked), which may be
// another process's mark (CrossProcess::MarkedByOther, no liveness check): looks at that
// process now, outside every mutex, so that the mark of one killed while it held the write
// lock is cleared, not left to make every later WAL request of this process yield.
void YieldedToFileWriter(ShimFile* p) { (void)Xp(p).OtherFileWriter(); }

void DropReason(ShimFile* p, unsigned reason) {
  if (reason & kReasonTxn) p->pre_read_turn = p->xproc_pre_read = false;
  if ((p->turn_reasons & reason) == 0) return;
  p->turn_reasons &= ~reason;
  if (p->turn_reasons == 0) ReleaseTurns(p);
}

// An upgrade that went past the turn holder (WriteStart) gave its base write lock back: the
// holder may be waiting for it (refused by the base, it polls): wake it, here or in another
// process.
void EndPastHolder(ShimFile* p) {
  if (!p->past_holder) return;
  p->past_holder = false;
  Xp(p).Release(p->handle_id);  // if it took the shared turn (WriteStart)
  Coord(p).EndPast(p->ticket.get());
  Xp(p).NotifyChange();
}

// Records the thread of this handle's lock call: diagnostics say where a holder was last used.
void Touch(ShimFile* p, uint64_t tid) {
  std::atomic<uint64_t>& last = p->ticket->last_tid;
  if (last.load(std::memory_order_relaxed) != tid) last.store(tid, std::memory_order_relaxed);
}

// Waits inside a lock call (a safe point) until `attempt` succeeds, following the
// connection's busy policy. With a binding's busy handler, the handler runs between tries as
// SQLite would run it (RunHandlerInLock); the sleep it asks for through the VFS is spent here,
// parked, woken (and tried again) at each release: a binding's timeout bounds the wait, its
// handler is called as often as stock SQLite calls it, and the wait does not wake at each of
// its delay steps. When the handler that runs is safeconc's own, or none (ours is then
// installed), the wait goes on until the request's deadline (safeconc_timeout).
// `park(gen, until)`: waits until `until`, trying the request at each release; true once it
// succeeded. Returns true on success.
template <typename Attempt, typename Park>
bool WaitInLock(ShimFile* p, const char* lock, Attempt attempt, Park park) {
  Coordinator& c = Coord(p);
  uint64_t gen = 0;
  for (bool use_handler = p->busy_fn != nullptr;;) {
    gen = c.Generation();
    if (attempt()) return true;
    if (!use_handler) break;
    InLockWait w{Caller(p)};
    const int again = RunHandlerInLock(p, &w);
    if (w.reached_ours || (again == 0 && !w.slept && !w.gave_up)) {
      break;  // safeconc's own handler, or none: wait by safeconc_timeout
    }
    if (again == 0) return false;  // the binding's handler gave up
    if (park(gen, Clock::now() + w.slept_for)) return true;
  }
  return park(gen, RefusalDeadline(p, lock));
}

// Takes the write turn at the start of a lock period (a safe point: no lock of this file is
// held, or in WAL only the database's SHARED lock, which only a rollback-mode writer waits
// for: see `wal` below). Returns false
// if it could not: the period then goes on without the turn, as stock SQLite would serve it
// (counted as turn_skipped). A holder last used on this very thread is not waited for: if
// this thread is the one to finish its transaction, it cannot while we wait, and the read
// needs no turn.
// `wal`: a WAL read start, which holds the database file's SHARED lock while it waits; it
// stops waiting when a rollback-mode writer is ahead (Coordinator::FileWriterAheadLocked: during a
// journal_mode switch, that writer's commit waits for this SHARED lock), or in the shared line
// when a handle of another process holds the file's lock above SHARED
// (CrossProcess::OtherFileWriter), and goes on without the turn, as stock SQLite would
// (turn_yielded).
bool TakeTurnForTxn(ShimFile* p, const char* lock, bool pre_read, bool wal) {
  Coordinator& c = Coord(p);
  Ticket* t = p->ticket.get();
  const uint64_t tid = CurrentThreadId();
  // Taken for a writing statement (TxnWantsTurn's look-ahead), its write starts from no
  // transaction and SQLite retries it if refused; taken for safeconc_txn, it protects a
  // read-then-write, whose write SQLite does not retry.
  sqlite3* db = Caller(p);
  const TxnMode mode = p->knobs.txn();
  t->write_retried.store(db != nullptr && mode != TxnMode::kSerial &&
                             (mode != TxnMode::kImmediate || sqlite3_get_autocommit(db) != 0),
                         std::memory_order_relaxed);
  if (p->turn_gave_up || c.HolderLastOnThread(t, tid)) {
    if (c.TryTurn(t, Coordinator::Ask::kWrite, tid, Fair(p), /*queue=*/false, pre_read, wal) ==
        Coordinator::Grant::kGranted) {
      if (TakeShared(p, tid, nullptr)) {
        TakeReason(p, kReasonTxn);
        return true;
      }
      c.ReleaseTurn(t);
    }
    c.CountTurnSkipped();
    return false;
  }
  const bool had_refusal = RefusalActive(p);
  // The in-process turn first (a handle that got it keeps it across the tries), then the
  // shared one: one waiter per process in the shared line.
  bool yielded = false;  // to a holder of the file's write lock (`wal`): ends the wait
  const Clock::time_point since = Clock::now();
  bool* const yield_shared = wal ? &yielded : nullptr;  // the same, in the shared line
  auto take = [&] {
    const Coordinator::Grant g =
        c.TryTurn(t, Coordinator::Ask::kWrite, tid, Fair(p), /*queue=*/true, pre_read, wal);
    yielded = g == Coordinator::Grant::kYielded;
    return yielded || (g == Coordinator::Grant::kGranted &&
                       (TakeShared(p, tid, nullptr, since, yield_shared) || yielded));
  };
  const bool got = WaitInLock(p, lock, take, [&](uint64_t, Clock::time_point until) {
    // Parked in line (keeping its place on a timeout) and granted where it wakes.
    const Coordinator::Grant g = c.AcquireTurn(t, until, tid, Fair(p), pre_read, wal);
    yielded = g == Coordinator::Grant::kYielded;
    return yielded || (g == Coordinator::Grant::kGranted &&
                       (TakeShared(p, tid, &until, since, yield_shared) || yielded));
  });
  if (yielded) {
    // Not a timeout: nothing to report, and the lock period goes on as in stock SQLite.
    YieldedToFileWriter(p);
    c.ReleaseTurn(t);  // held if the shared line was the one yielded
    Xp(p).Cancel(p->handle_id, /*timed_out=*/false);
    c.Cancel(t, Coordinator::CancelWhy::kGaveUp);
    c.CountTurnSkipped();
    p->turn_yielded = true;
    if (!had_refusal) ClearRefusal(p);
    return false;
  }
  if (got) {
    TakeReason(p, kReasonTxn);
    // Whatever this lock period retries was waiting for the turn: granted.
    ClearRefusal(p);
    return true;
  }
  c.ReleaseTurn(t);  // held if only the shared turn could not be had
  Xp(p).Cancel(p->handle_id);
  c.Cancel(t, Coordinator::CancelWhy::kTimeout);
  c.CountTurnSkipped();
  RecordFailure(p, lock, Outcome::kTimeout, "the write turn");
  p->turn_gave_up = true;
  // The read goes on and succeeds; nothing of this wait may stay pending for the next
  // request, except the refusal it was a retry of.
  if (!had_refusal) ClearRefusal(p);
  return false;
}

// A write SQLite does not retry takes the shared turn if it is free at all, as stock SQLite
// grants a free write lock; held by another process, the base lock decides (as without the
// sidecar): the sidecar must not fail what stock SQLite would serve.
void UpgradeShared(ShimFile* p, uint64_t tid) {
  Xp(p).TryTake(p->handle_id, tid, /*upgrade=*/true);
}

// TakeTurnForWrite's answer for a WAL write start while a rollback-mode writer is ahead.
constexpr int kBaseDecides = -1;

// Asks for the write turn where waiting is unsafe (the connection holds a read lock).
// Returns SQLITE_OK with the turn taken, or SQLITE_BUSY with the request queued (retried
// through the busy handler) or failed. `will_retry`: WillRetry(p), looked up by the caller.
// `wal`: a WAL write start; kBaseDecides (the turn not taken) when a rollback-mode writer is
// ahead (Coordinator::FileWriterAheadLocked), or the shared turn is refused while a handle of
// another process holds the file's lock above SHARED (CrossProcess::OtherFileWriter): it holds no
// WAL write lock, its commit waits for this connection's SHARED lock, and stock SQLite would
// grant this write.
int TakeTurnForWrite(ShimFile* p, const char* lock, bool will_retry, bool wal) {
  Coordinator& c = Coord(p);
  Ticket* t = p->ticket.get();
  const uint64_t tid = CurrentThreadId();
  t->write_retried.store(will_retry, std::memory_order_relaxed);
  if (Caller(p) == nullptr) {
    // Shared cache: whether SQLite retries is unknown. Any free turn is taken (an upgrade
    // would get it from stock SQLite); a refused request queues, and if SQLite does retry it
    // through the busy handler, it waits there like any other (a request never retried never
    // parks, so it is skipped by everyone and goes stale).
    const Coordinator::Grant g = c.TryTurn(t, Coordinator::Ask::kUpgrade, tid, Fair(p),
                                           /*queue=*/true, /*pre_read=*/false, wal);
    if (g == Coordinator::Grant::kGranted) {
      UpgradeShared(p, tid);
      return SQLITE_OK;
    }
    if (g == Coordinator::Grant::kYielded) {
      YieldedToFileWriter(p);
      return kBaseDecides;
    }
    NoteRefusal(p, lock, BusyKind::kTurn);
    return SQLITE_BUSY;
  }
  if (!will_retry) {
    // An upgrade: SQLite fails it at once when refused, so it takes any free turn, as stock
    // SQLite grants any free write lock, whoever waits.
    const Coordinator::Grant g = c.TryTurn(t, Coordinator::Ask::kUpgrade, tid, Fair(p),
                                           /*queue=*/false, /*pre_read=*/false, wal);
    if (g == Coordinator::Grant::kGranted) {
      p->upgraded = true;
      UpgradeShared(p, tid);
      return SQLITE_OK;
    }
    if (g == Coordinator::Grant::kYielded) {
      YieldedToFileWriter(p);
      return kBaseDecides;
    }
    if (c.GoPastHolder(t)) {
      // The holder took the turn for a writing statement and may not be at its write lock
      // yet: stock SQLite would grant this write if the base lock is free, and the holder, if
      // then refused, waits and retries. Failing here failed read-then-writes stock SQLite
      // serves: 8 threads of autocommit INSERTs beside 8 of deferred read-then-write in one
      // process, rollback: 1.8-2.1x stock's failures. Until the pass ends (EndPastHolder) the
      // coordinator grants the turn to nobody else: a read-then-write that takes it
      // (safeconc_txn=immediate) must not meet this write lock at its own write.
      p->past_holder = true;
      return SQLITE_OK;
    }
    c.FastFail(t);
    ClearRefusal(p);
    RecordFailure(p, lock, Outcome::kFastFail, "the write turn");
    return SQLITE_BUSY;
  }
  if (p->turn_gave_up) {
    // This lock period already waited its timeout for the turn at its start
    // (safeconc_last_busy() tells of that wait): a second wait would double it.
    const Coordinator::Grant g = c.TryTurn(t, Coordinator::Ask::kWrite, tid, Fair(p),
                                           /*queue=*/false, /*pre_read=*/false, wal);
    if (g == Coordinator::Grant::kGranted) {
      UpgradeShared(p, tid);
      return SQLITE_OK;
    }
    if (g == Coordinator::Grant::kYielded) {
      YieldedToFileWriter(p);
      return kBaseDecides;
    }
    NoteRefusal(p, lock, BusyKind::kFinal);
    return SQLITE_BUSY;
  }
  const Coordinator::Grant g = c.TryTurn(t, Coordinator::Ask::kWrite, tid, Fair(p),
                                         /*queue=*/true, /*pre_read=*/false, wal);
  if (g == Coordinator::Grant::kYielded) {
    YieldedToFileWriter(p);
    return kBaseDecides;
  }
  if (g == Coordinator::Grant::kGranted) {
    if (TakeShared(p, tid, nullptr)) return SQLITE_OK;
    if (wal && Xp(p).OtherFileWriter()) {
      // A rollback-mode writer of another process (a journal_mode switch) may hold that turn,
      // its commit waiting for this connection's SHARED lock: as for one of this process.
      c.ReleaseTurn(t);
      c.CountFileWriterYield();
      return kBaseDecides;
    }
    // Another process has the turn (or its waiter is past its bound): SQLite retries after
    // the busy handler, which waits for a release there; first place here is kept.
    c.YieldTurnKeepPlace(t);
    NoteRefusal(p, lock, BusyKind::kCross);
    return SQLITE_BUSY;
  }
  NoteRefusal(p, lock, BusyKind::kTurn);
  return SQLITE_BUSY;
}

// Ends the WAL lock period if it is over: no read mark held, no write under way (wal.c swaps
// READ_0 for another read mark while it holds WRITE, in walRestartLog: the first write into an
// empty or fully checkpointed WAL), and not a read start whose pre-read turn still waits for
// its read mark (wal.c takes and drops WRITE there for a recovery check after a torn WAL-index
// header read). Dropping the turn earlier would hand it to another connection while this
// one's cursors still read (their next write would fail) or send the read start to the back
// of the line. Called after each read-mark and WRITE release.
void MaybeEndWalPeriod(ShimFile* p) {
  if (p->read_marks != 0 || (p->turn_reasons & kReasonWrite) != 0 || p->pre_read_turn ||
      p->past_holder || p->base_write) {
    return;
  }
  p->turn_gave_up = p->turn_yielded = false;
  p->upgraded = false;
  DropReason(p, kReasonTxn);
}

// Rollback mode, a write SQLite retries (a writing statement's, from no read transaction)
// about to take RESERVED: waits up to the connection's fairness bound (safeconc_fair_ms) while
// the explicit read transactions that other connections of this process have open now are
// still open, until none is left or one of them writes (it goes past this handle's turn:
// GoPastHolder). Once this handle holds RESERVED, such a transaction fails at its first write
// (SQLite never retries that), and this handle's commit waits for every read lock to go
// anyway, so taking RESERVED first gains it only the overlap of its own statement. Stock
// SQLite's writers, sleeping in their busy handler, leave the write lock free for such writes;
// writers handed the turn at once did not: 8 threads of autocommit INSERTs beside 8 of
// deferred read-then-write in one process, rollback, failed 3-6 points more of them than stock.
//
// True if one of them went past this handle to write: this handle's request is then refused
// as if by the base lock (which the pass is taking), without racing it there. Once per write:
// `deferred` stays set until the write lock is taken or a new statement starts, so a request
// SQLite retries (after a pass, or a refusal by another process) does not wait again, and the
// connection's busy timeout is stretched by one bound at most. A retry, or a connection with
// safeconc_fair_ms=0, still learns of a pass at once.
bool DeferToReadTxns(ShimFile* p) {
  const Clock::time_point now = Clock::now();
  const Clock::time_point until = p->deferred ? now : now + Fair(p);
  const Coordinator::Deferral d =
      Coord(p).DeferToReadTxns(p->ticket.get(), CurrentThreadId(), until);
  if (d == Coordinator::Deferral::kWaited) p->deferred = true;
  return d == Coordinator::Deferral::kPassed;
}

// Calls the base for a lock the coordinator granted. In WAL mode the base may still refuse
// for a moment: a reader that read a torn index header takes WRITE for a recovery check
// (microseconds, and it waits for nobody while holding it). `retry_blips`: retry briefly
// before reporting SQLITE_BUSY, so a transaction that holds the turn does not fail over such
// a blip (not an upgrade that took the turn for this request: see WriteStart). Never in
// rollback mode: there a refused RESERVED means another process's writer,
// which at its commit waits for every SHARED lock to go, this connection's included; retrying
// while holding SHARED stalled that commit for the whole ~10 ms of retries, with its RESERVED
// held, and every other read-then-write meanwhile failed (4 processes x 4 threads of deferred
// read-then-write: 30-70% more failures than stock SQLite; stock fails the request at once).
template <typename Attempt>
int BaseForTurnHolder(Attempt attempt, bool retry_blips) {
  int rc = attempt();
  if (!retry_blips) return rc;
  for (auto d = timing::kBaseRetryFirst; rc == SQLITE_BUSY && d <= timing::kBaseRetryLast; d *= 2) {
    std::this_thread::sleep_for(d);
    rc = attempt();
  }
  return rc;
}

// The base refused a write lock to a turn holder: another process (or a connection that does
// not go through safeconc) holds it. `took`: the turn was taken for this very request.
// SQLite retries: poll, keeping first place so no in-process newcomer overtakes. It does not
// (a read transaction is open): the request has failed; give back a turn taken for it.
void BaseRefused(ShimFile* p, const char* lock, bool took) {
  if (WillRetry(p)) {
    if (took) {
      Coord(p).YieldTurnKeepPlace(p->ticket.get());
      Xp(p).Release(p->handle_id);
    }
    NoteRefusal(p, lock, BusyKind::kCross);
    return;
  }
  if (took) ReleaseTurns(p);
  Coord(p).CountBusyReturn(/*cross_process=*/true);
  ClearRefusal(p);
  RecordFailure(p, lock, Outcome::kBusy, "the write lock");
}

// A write start (RESERVED, WAL WRITE): takes the turn unless held, then the base lock. A
// holder refused by the base (another process) keeps its place in line and polls.
// `wal`: the WAL WRITE lock (see BaseForTurnHolder).
template <typename Attempt>
int WriteStart(ShimFile* p, const char* lock, bool wal, Attempt attempt) {
  const bool held = p->turn_reasons != 0;
  const bool will_retry = !held && WillRetry(p);  // one look, only when it matters
  // A pass past the holder lasts until its write lock is released (EndPastHolder). Asked
  // again meanwhile (never seen), the base decides in the branch below, which keeps the pass
  // if the lock is still held.
  if (!held && !p->past_holder) {
    const int rc = TakeTurnForWrite(p, lock, will_retry, wal);
    if (rc == kBaseDecides) {
      // A rollback-mode writer is ahead (a journal_mode switch is under way): the WAL write
      // lock alone decides, without the turn, as in stock SQLite. A place an earlier refusal
      // queued is given up (it would hold up the line, or a reservation, for nothing).
      Coord(p).Cancel(p->ticket.get(), Coordinator::CancelWhy::kGaveUp);
      Xp(p).Cancel(p->handle_id, /*timed_out=*/false);
      const int base = attempt();
      if (base == SQLITE_OK) {
        ClearRefusal(p);
        p->base_write = true;
      } else if (base == SQLITE_BUSY) {
        BaseRefused(p, lock, /*took=*/false);
      }
      return base;
    }
    if (rc != SQLITE_OK) return rc;
  }
  if (p->past_holder) {
    // An upgrade past a holder that has not taken its write lock (TakeTurnForWrite): the base
    // alone decides, once, as in stock SQLite.
    const int rc = attempt();
    if (rc == SQLITE_OK) {
      p->upgraded = true;
      // The shared turn too, if another process does not hold it (this process's, the
      // holder's, passes to this handle): another process's read-then-write must not take it
      // and then meet this write lock at its own write. Only once the write lock is this
      // handle's: taken before, a holder that won the base race would have lost its shared
      // turn to a pass that then ended.
      UpgradeShared(p, CurrentThreadId());
      ClearRefusal(p);
      return SQLITE_OK;
    }
    EndPastHolder(p);
    if (rc == SQLITE_BUSY) {
      Coord(p).FastFail(p->ticket.get());
      ClearRefusal(p);
      RecordFailure(p, lock, Outcome::kFastFail, "the write lock");
    }
    return rc;
  }
  // Not for an upgrade SQLite will not retry (a read transaction's first write) that took the
  // turn just now: it makes the one base call stock SQLite makes. A refusal there is almost
  // always another process's writer (the base cannot say whose lock it is), whose commit makes
  // this read transaction's snapshot stale anyway (SQLITE_BUSY_SNAPSHOT after the wait), and
  // retrying kept the in-process turn from every other local upgrade for ~10 ms: 4 processes x
  // 4 threads of deferred read-then-write in WAL failed 4-5 points more often than stock (about
  // 30% against 26%). Under shared cache (no caller) whether SQLite retries is unknown: kept.
  const bool retry = held || will_retry || Caller(p) == nullptr;
  if (!wal && Coord(p).ReadTxnsOpen() && Caller(p) != nullptr &&
      (will_retry ||
       (held && p->ticket->write_retried.load(std::memory_order_relaxed) && WillRetry(p))) &&
      DeferToReadTxns(p)) {
    // One of those read transactions went past this handle to write (the pass takes the base
    // lock): refused as by that lock. SQLite drops this connection's SHARED lock (the pass's
    // commit waits for it) and retries; a turn taken for this request keeps first place, and
    // the busy handler waits on it, woken when the pass ends.
    if (!held) {
      Coord(p).YieldTurnKeepPlace(p->ticket.get(), /*cross_process=*/false);
      Xp(p).Release(p->handle_id);
      NoteRefusal(p, lock, BusyKind::kTurn);
    } else {
      NoteRefusal(p, lock, BusyKind::kCross);
    }
    return SQLITE_BUSY;
  }
  const int rc = BaseForTurnHolder(attempt, /*retry_blips=*/wal && retry);
  if (rc == SQLITE_BUSY) {
    BaseRefused(p, lock, /*took=*/!held);
    return rc;
  }
  if (rc != SQLITE_OK) {
    if (!held) ReleaseTurns(p);
    return rc;
  }
  ClearRefusal(p);
  TakeReason(p, kReasonWrite);
  p->deferred = false;
  // Its write lock is taken: a later write of this lock period (another statement while a
  // cursor steps, say) is not the retried first write the flag was set for.
  p->ticket->write_retried.store(false, std::memory_order_relaxed);
  return SQLITE_OK;
}

// Calls `attempt` (a base lock call) until it stops returning SQLITE_BUSY, waiting between
// tries as WaitInLock says: woken at once by a release in this process; when the holder is in
// another process, for a bounded backoff step. `in_process` says whether an in-process handle
// blocks us.
template <typename Attempt, typename InProcess>
int WaitAtSafePoint(ShimFile* p, const char* lock, Attempt attempt, InProcess in_process,
                    bool one_at_a_time = false) {
  Coordinator& c = Coord(p);
  const Clock::time_point start = Clock::now();
  int rc = SQLITE_OK;
  int polls = 0, tries = 0;
  const bool had_refusal = RefusalActive(p);
  auto try_once = [&] {
    ++tries;
    rc = attempt();
    return rc != SQLITE_BUSY;
  };
  CrossProcess& xp = Xp(p);
  uint32_t xseq = xp.Seq();
  const bool ok = WaitInLock(p, lock, try_once, [&](uint64_t gen, Clock::time_point until) {
    // In-process holders wake us on release; poll now and then anyway in case another
    // process holds the lock too. A holder in another process wakes us through the sidecar
    // (if it loads libsafeconc); the poll steps stay for those that do not.
    for (;;) {
      const bool here = in_process();
      const Clock::duration step =
          here ? Clock::duration(timing::kInProcessRecheck) : timing::PollStep(polls);
      ++polls;
      const Clock::time_point wake = std::min(until, Clock::now() + step);
      if (here || !xp.Attached()) {
        c.WaitForChange(gen, wake, one_at_a_time);
      } else {
        xp.WaitForChange(xseq, wake);
      }
      gen = c.Generation();
      xseq = xp.Seq();
      if (try_once()) return true;
      if (Clock::now() >= until) return false;
    }
  });
  if (ok) {
    if (tries > 1) c.CountInLockWait(Clock::now() - start);
    // A refusal of this very request is over; one of another request (the RESERVED this
    // SHARED is a retry for) goes on with its own deadline.
    if (rc == SQLITE_OK && !had_refusal) ClearRefusal(p);
    return rc;
  }
  c.CountTimeout();
  RecordFailure(p, lock, Outcome::kTimeout,
                in_process() ? "a lock held in this process" : "a lock held by another process");
  // The pager calls the busy handler once more: it must give up at once.
  NoteRefusal(p, lock, BusyKind::kFinal);
  return SQLITE_BUSY;
}

// After an EXCLUSIVE request: a refused one may leave the base at PENDING (unixLock keeps the
// PENDING byte once it got it), which refuses new readers until the unlock; recording it
// makes that unlock wake them (LockPathUnlock) instead of leaving them to poll. Where the
// base did not get that far, the cost of the record is one needless wake-up at the unlock.
void NoteExclusiveResult(ShimFile* p, int rc) {
  if (rc == SQLITE_OK) {
    SetLevel(p, SQLITE_LOCK_EXCLUSIVE);
  } else if (p->level < SQLITE_LOCK_PENDING) {
    SetLevel(p, SQLITE_LOCK_PENDING);
  }
}

}  // namespace

int LockPathLock(ShimFile* p, int level) {
  LeaveInLockMode();
  sqlite3_file* o = OrigFile(p);
  Coordinator& c = Coord(p);
  const uint64_t tid = CurrentThreadId();
  Touch(p, tid);
  int rc;
  if (level == SQLITE_LOCK_SHARED && p->level == SQLITE_LOCK_NONE) {
    // A lock period starts (rollback mode; in WAL mode the first read of the connection).
    // A new request, not a retry of a refused one: its write may defer again.
    if (p->deferred && !RefusalActive(p)) p->deferred = false;
    bool took = false;
    if (p->turn_reasons == 0 && TxnWantsTurn(p))
      took = TakeTurnForTxn(p, "SHARED", /*pre_read=*/false, /*wal=*/false);
    sqlite3* db = Caller(p);
    if (!took && (db == nullptr || sqlite3_get_autocommit(db) == 0)) {
      // A read transaction of an explicit BEGIN (or of an unknown caller) refused by a
      // writer's lock: SQLite retries it through the busy handler, which sleeps as stock
      // SQLite sleeps. Waking such readers at the writer's release would start their read
      // transactions together, and every deferred read-then-write among them would meet the
      // others' read locks at its write (measured: 3-5x the stock failures in rollback mode).
      rc = o->pMethods->xLock(o, SQLITE_LOCK_SHARED);
      if (rc == SQLITE_OK) {
        SetLevel(p, SQLITE_LOCK_SHARED);
        // A read transaction that may yet write: in-process writers defer to it (WriteStart).
        c.ReaderEnter(p->ticket.get(), /*read_txn=*/db != nullptr);
      }
      return rc;
    }
    rc = WaitAtSafePoint(
        p, "SHARED", [&] { return o->pMethods->xLock(o, SQLITE_LOCK_SHARED); },
        // Refused by a writer's PENDING/EXCLUSIVE: the turn holder, if it is ours.
        [&] { return c.Blocker().held; }, /*one_at_a_time=*/true);
    if (rc == SQLITE_OK) {
      SetLevel(p, SQLITE_LOCK_SHARED);
      c.ReaderEnter(p->ticket.get());
    } else if (took) {
      DropReason(p, kReasonTxn);
    }
    return rc;
  }
  if (level == SQLITE_LOCK_RESERVED) {
    rc = WriteStart(p, "RESERVED", /*wal=*/false,
                    [&] { return o->pMethods->xLock(o, SQLITE_LOCK_RESERVED); });
    if (rc == SQLITE_OK) SetLevel(p, SQLITE_LOCK_RESERVED);
    return rc;
  }
  if (level == SQLITE_LOCK_EXCLUSIVE && p->level >= SQLITE_LOCK_RESERVED && !p->upgraded) {
    // Commit: wait here for the readers to leave (SQLite would retry this through the busy
    // handler; waiting here wakes on each reader's release instead of sleeping).
    rc = WaitAtSafePoint(
        p, "EXCLUSIVE", [&] { return o->pMethods->xLock(o, SQLITE_LOCK_EXCLUSIVE); },
        [&] {
          int others = 0, mine = 0;
          c.CountOtherReaders(p->ticket.get(), tid, &others, &mine);
          return others > 0;
        });
    NoteExclusiveResult(p, rc);
    return rc;
  }
  // A read-then-write transaction's commit waits as in stock SQLite (the pager retries it
  // through the busy handler): measured with bench_locks' deferred row, waking it at each
  // reader's release let more read transactions overlap its successors, and 30% more of them
  // failed than with stock. SHARED->EXCLUSIVE (hot-journal rollback, or closing the last WAL
  // connection): SQLite tries once and never retries. Both forward as is.
  rc = o->pMethods->xLock(o, level);
  if (level == SQLITE_LOCK_EXCLUSIVE) {
    NoteExclusiveResult(p, rc);
  } else if (rc == SQLITE_OK) {
    SetLevel(p, level);
  }
  return rc;
}

int LockPathUnlock(ShimFile* p, int level) {
  LeaveInLockMode();
  sqlite3_file* o = OrigFile(p);
  Touch(p, CurrentThreadId());
  const int before = p->level;
  // Even if the base fails, the pager takes the lock as released (pagerUnlockDb) and never
  // unlocks again: keeping the turn here would keep it until the file closed.
  const int rc = o->pMethods->xUnlock(o, level);
  SetLevel(p, level);
  if (level < SQLITE_LOCK_RESERVED) {
    p->upgraded = false;
    DropReason(p, kReasonWrite);
    EndPastHolder(p);
  }
  if (level == SQLITE_LOCK_NONE) {
    // The lock period ends. In WAL mode it is the read mark's period (see ShmLock), but a
    // turn taken at the first SHARED must not outlive the connection's locks either.
    p->turn_gave_up = p->turn_yielded = false;
    DropReason(p, kReasonTxn);
    Coord(p).ReaderLeave(p->ticket.get());
    Xp(p).NotifyChange();  // a commit in another process may wait for this read to end
  }
  // Readers refused by our PENDING/EXCLUSIVE may go on now (also when it was held outside
  // the turn, as a hot-journal rollback does).
  if (before >= SQLITE_LOCK_PENDING && level < SQLITE_LOCK_PENDING) Coord(p).NotifyRelease();
  return rc;
}

int LockPathShmLock(ShimFile* p, int offset, int n, int flags) {
  LeaveInLockMode();
  sqlite3_file* o = OrigFile(p);
  Touch(p, CurrentThreadId());
  const bool lock = (flags & SQLITE_SHM_LOCK) != 0;
  int rc;
  if (offset == kWalWriteLock && n == 1 && (flags & SQLITE_SHM_EXCLUSIVE)) {
    if (!lock) {
      rc = o->pMethods->xShmLock(o, offset, n, flags);
      p->base_write = false;
      DropReason(p, kReasonWrite);
      EndPastHolder(p);
      MaybeEndWalPeriod(p);
      return rc;
    }
    if (p->turn_reasons == 0 && p->read_marks == 0) {
      // Not a write transaction (SQLite always holds a read mark when it starts one): a
      // WAL-index recovery check or a checkpoint. wal.c retries those itself, and queueing
      // them behind writers would make its reader loop give up with SQLITE_PROTOCOL. The base
      // lock alone decides; a turn holder refused by it meanwhile polls as if another process
      // held it.
      return o->pMethods->xShmLock(o, offset, n, flags);
    }
    return WriteStart(p, "WAL WRITE", /*wal=*/true,
                      [&] { return o->pMethods->xShmLock(o, offset, n, flags); });
  }
  const bool read_mark = n == 1 && offset >= kWalReadLock0 &&
                         offset < kWalReadLock0 + kWalReadLocks && (flags & SQLITE_SHM_SHARED);
  if (read_mark && lock) {
    bool took = false;
    if (WalReadStartWantsTurn(p)) {
      // A SQLITE_BUSY here would make wal.c spin and report SQLITE_PROTOCOL; a read whose turn
      // cannot be had goes on without it, as stock SQLite would serve it.
      took = TakeTurnForTxn(p, "WAL READ", /*pre_read=*/false, /*wal=*/true);
    }
    rc = o->pMethods->xShmLock(o, offset, n, flags);
    if (rc == SQLITE_OK) {
      // A pre-read turn revoked meanwhile (the read start outlived kPreReadLease): the read
      // goes on without it, like one whose turn could not be had.
      // The same for the shared turn, revocable by other processes.
      const bool shared_kept = !p->xproc_pre_read || Xp(p).ReadStarted(p->handle_id);
      p->xproc_pre_read = false;
      if (++p->read_marks == 1 && p->turn_reasons != 0 &&
          (!Coord(p).ReadStarted(p->ticket.get()) || !shared_kept)) {
        DropReason(p, kReasonTxn);
      }
      p->pre_read_turn = false;
    } else if (took) {
      DropReason(p, kReasonTxn);
    }
    return rc;
  }
  if (offset == kWalCkptLock && (flags & SQLITE_SHM_EXCLUSIVE)) {
    if (lock && p->pre_read_turn) {
      // The header read the turn was taken for belongs to a checkpoint, not a read start.
      p->pre_read_turn = false;
      DropReason(p, kReasonTxn);
    }
    rc = o->pMethods->xShmLock(o, offset, n, flags);
    if (rc == SQLITE_OK) p->ckpt_held = lock;
    return rc;
  }
  rc = o->pMethods->xShmLock(o, offset, n, flags);
  if (read_mark && !lock && rc == SQLITE_OK && p->read_marks > 0 && --p->read_marks == 0) {
    MaybeEndWalPeriod(p);  // the WAL lock period ends with its read mark
  }
  return rc;
}

void LockPathShmBarrier(ShimFile* p) {
  LeaveInLockMode();
  // The first VFS call of a WAL read start (wal.c reads the WAL-index header around it). A
  // lock period that will write and finds the turn busy waits for it here, before reading the
  // header: a header that writers keep changing (or tear, when one is preempted mid-update)
  // sends wal.c into retries with quadratically growing sleeps, seen as ~1 s stalls with
  // many threads. Safe point: no read mark is held yet.
  // A checkpoint reads the header too (holding CKPT, and never taking a read mark): not here.
  // A turn wait that already gave up in this lock period is not repeated (wal.c calls the
  // barrier on every retry of its read loop). Nor is the turn waited for under the database
  // file's EXCLUSIVE lock (HoldsFileLock).
  if (!p->ckpt_held && WalReadStartWantsTurn(p)) {
    p->pre_read_turn = TakeTurnForTxn(p, "WAL READ", /*pre_read=*/true, /*wal=*/true);
    p->xproc_pre_read = p->pre_read_turn && Xp(p).MarkPreRead(p->handle_id);
  }
}

void LockPathClose(ShimFile* p) {
  ClearRefusal(p);
  SetLevel(p, SQLITE_LOCK_NONE);  // SQLite unlocks before it closes; a close is the end anyway
  EndPastHolder(p);
  Xp(p).Release(p->handle_id);
  Coord(p).Close(p->ticket.get());
  p->turn_reasons = 0;
}

}  // namespace safeconc
