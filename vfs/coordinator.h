// coordinator.h - the per-database-file lock coordinator: who holds the write turn, who
// waits for it in a FIFO line, who reads (rollback mode), and the counters behind
// safeconc_stats().
//
// The write turn is an in-process token in front of SQLite's own write lock: the
// RESERVED lock in rollback mode, the WAL WRITE lock in WAL mode, or (safeconc_txn=
// immediate/serial) a whole transaction or lock period. A connection takes it before the
// base lock call and gives it back after the base unlock.
//
// Policy (eventual fairness; vfs/timing.h states it in full): a free turn goes to whoever
// asks, unless the front waiter has waited its fairness bound (safeconc_fair_ms), in which
// case a release reserves the turn for that waiter alone. A release wakes exactly one waiter,
// the front one. A request SQLite will not retry (an upgrade) takes any free turn; held for a
// write SQLite retries, it may go past it to the base lock (GoPastHolder), and until that pass
// ends nobody else is granted the turn (a release then wakes no one; the pass's end does).
//
// Waiters wait in two places, both parked on their ticket's condition variable:
//  - inside a lock call, at a safe point (AcquireTurn): granted where they wake;
//  - in the busy handler or the VFS xSleep, after a refusal (WaitForTurn): woken when the
//    turn may be theirs, they return through SQLite, whose retry claims it (TryTurn).
// Only a parked ticket is "live": a release can wake it, so a reservation for it will be
// claimed. A ticket whose owner is elsewhere (a binding's handler sleeping outside the VFS,
// or gone) keeps its place but is skipped until it parks again.
//
// Threads are not owners: nothing here is refused because of the calling thread. The
// thread a handle was last used on (Ticket::last_tid) is reported, never enforced.
//
// Mutex rules: mu_ guards every field below marked SC_GUARDED_BY(mu_) and the Place of every
// Ticket of this coordinator (the ticket's line and reader links, its parked count, arrival,
// fairness bound and condition variable), which only Coordinator code can reach, through
// accessors that require mu_. Nothing is called out of this file with mu_ held: no SQLite
// call, no callback, no mutex; the one exception is CrossProcess::MarkedByOther and Engaged
// (WatchCrossProcess), which only load atomics. Lock order: Registry::mu_ before mu_
// (diagnostics); mu_ is otherwise a leaf.
//
// Lifetime: shared_ptr, held by the registry entry and by every Ticket, so a busy record
// left in a thread-local after its file closed can still be inspected safely. The watched
// CrossProcess is its DbEntry's, deleted after the last handle's Close(): it is read only
// under mu_, by calls of open handles (a closed ticket's WaitForTurn returns before).
#ifndef SAFECONC_VFS_COORDINATOR_H
#define SAFECONC_VFS_COORDINATOR_H

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include "base/histogram.h"
#include "base/intrusive_list.h"
#include "base/json.h"
#include "base/sync.h"

namespace safeconc {

using Clock = std::chrono::steady_clock;

// Why a handle holds the write turn; it gives the turn back when no reason is left.
enum TurnReason : unsigned {
  kReasonWrite = 1,  // holds RESERVED (rollback) or WAL WRITE
  kReasonTxn = 2,    // safeconc_txn=immediate/serial: for the whole lock period
};

class Ticket;
class CrossProcess;

// What a refused request was up against, for safeconc_last_busy().
struct BlockerInfo {
  bool held = false;
  uint64_t holder_handle = 0;
  uint64_t holder_tid = 0;       // the thread that took the turn
  uint64_t holder_last_tid = 0;  // the thread of the holder's latest lock call
  int64_t held_ms = 0;
  int64_t queued = 0;
  int64_t readers = 0;
};

// The coordinator's moving parts, for tests that check it came back to rest.
struct RestState {
  bool held = false;      // someone holds the turn
  bool reserved = false;  // a turn is reserved for a woken waiter
  int64_t queued = 0;     // tickets in line
  int64_t parked = 0;     // threads waiting on a ticket
  int64_t readers = 0;    // rollback readers
  bool passing = false;   // an upgrade went past the holder (GoPastHolder), not yet ended
  int64_t read_txns = 0;  // readers in explicit transactions (DeferToReadTxns)
  int64_t deferring = 0;  // writers in DeferToReadTxns
};

class Coordinator {
 public:
  enum class Ask {
    kWrite,    // a request SQLite retries, or a wait at a safe point: the fairness rule applies
    kUpgrade,  // a read transaction that asks to write (never retried): any free turn will do
  };
  // kYielded: asked with `holds_read_lock` while the holder, or an upgrade past it, holds its
  // file's lock above SHARED (see AcquireTurn).
  enum class Grant { kGranted, kQueued, kTimeout, kRefused, kYielded };
  enum class CancelWhy { kClosed, kTimeout, kGaveUp };

  // Waits (parked, at a safe point) until t holds the turn, or `deadline` (kTimeout: t keeps
  // its place in line, for a wait that goes on after asking the busy handler; Cancel() it when
  // giving up).
  // `fair` is t's fairness bound. `pre_read`: taken before a WAL read start whose read mark is
  // not held yet; revocable after timing::kPreReadLease until ReadStarted(t) (if that read
  // start fails, SQLite may never call this handle again to give the turn back).
  // `holds_read_lock`: t's connection holds the database file's SHARED lock while it waits (a
  // WAL read start). It stops waiting (kYielded; a place t already had in line is kept:
  // Cancel() it) whenever a file writer is ahead (FileWriterAheadLocked): that writer is in
  // rollback mode (a journal_mode switch is under way) and its commit waits for t's SHARED lock.
  Grant AcquireTurn(Ticket* t, Clock::time_point deadline, uint64_t tid, Clock::duration fair,
                    bool pre_read = false, bool holds_read_lock = false) SC_EXCLUDES(mu_);
  // Grants the turn if t may take it now (kGranted). Otherwise, with `queue`, puts t in line
  // (a retry keeps its place) and returns kQueued; without, changes nothing (kRefused).
  // `pre_read` and `holds_read_lock` as for AcquireTurn (kYielded: t not queued by this call).
  Grant TryTurn(Ticket* t, Ask ask, uint64_t tid, Clock::duration fair, bool queue,
                bool pre_read = false, bool holds_read_lock = false) SC_EXCLUDES(mu_);
  // t's handle took (true) or gave back (false) its file's lock above SHARED (RESERVED or more
  // in rollback mode; EXCLUSIVE in WAL mode while it closes the WAL or in locking_mode=
  // EXCLUSIVE): sets t->file_writer, and wakes the waiters AcquireTurn must stop.
  void NoteFileWriter(Ticket* t, bool held) SC_EXCLUDES(mu_);
  // The file's sidecar (its DbEntry's; null to stop): a handle of another process that holds
  // the file's write lock (CrossProcess::MarkedByOther) is a file writer ahead too, for every
  // waiter of this line that holds a read lock (FileWriterAheadLocked): in-process waiters
  // behind a holder that waits in the shared line would close the same cycle. No wake-up
  // comes from another process: such waiters park at most kXprocRecheck at a time.
  void WatchCrossProcess(const CrossProcess* xproc) {
    xproc_.store(xproc, std::memory_order_release);
  }

  // A request SQLite will not retry was refused: counts the fast failure, leaves the line.
  void FastFail(Ticket* t) SC_EXCLUDES(mu_);
  // The read mark a pre-read turn was taken for is held: the turn is no longer revocable.
  // False if it was revoked meanwhile (t no longer holds the turn).
  bool ReadStarted(Ticket* t) SC_EXCLUDES(mu_);
  // Gives the turn back (t must hold it) and wakes the front waiter.
  void ReleaseTurn(Ticket* t) SC_EXCLUDES(mu_);
  // The base lock refused a turn holder (another process has it): give the turn back but
  // stay first in line while t polls. Only for a request SQLite retries.
  // `cross_process`: counted as refused by another process (false: by a pass in this one).
  void YieldTurnKeepPlace(Ticket* t, bool cross_process = true) SC_EXCLUDES(mu_);
  // Busy-handler side: parks until t may take the turn (kReady) or `until` (kTimedOut).
  // kNotQueued at once if t is not in line. kReady too, at once, for a request queued with
  // holds_read_lock while a file writer is ahead: its retry goes to the base lock.
  enum class TurnWait { kReady, kTimedOut, kNotQueued };
  // t leaves to claim the turn through SQLite's retry: if the turn is reserved for t, the next
  // waiter is told to time its sleep to the reservation's end in case t never comes back.
  TurnWait WaitForTurn(Ticket* t, Clock::time_point until) SC_EXCLUDES(mu_);
  // Takes t out of the line (if queued) and counts why.
  void Cancel(Ticket* t, CancelWhy why) SC_EXCLUDES(mu_);
  // The file closed: leave every list, never hold the turn again.
  void Close(Ticket* t) SC_EXCLUDES(mu_);
  // False once t's file closed.
  bool IsOpen(Ticket* t) SC_EXCLUDES(mu_);

  // Rollback-mode readers (SHARED holders), for commit waits and diagnostics. `read_txn`: the
  // SHARED lock of an explicit transaction's read (BEGIN; SELECT), which may yet write.
  void ReaderEnter(Ticket* t, bool read_txn = false) SC_EXCLUDES(mu_);
  void ReaderLeave(Ticket* t) SC_EXCLUDES(mu_);
  // Other readers than t, and how many of them were last used on thread tid.
  void CountOtherReaders(Ticket* t, uint64_t tid, int* others, int* on_tid) SC_EXCLUDES(mu_);
  // When the longest-waiting live request in line other than t began to wait, or `if_none`.
  // The holder waiting for the shared turn (vfs/xproc.h) holds up every waiter here: its
  // place in the shared line is as old as theirs (one fairness clock per transaction).
  Clock::time_point OldestWaitSince(Ticket* t, Clock::time_point if_none) SC_EXCLUDES(mu_);
  // An upgrade t (a write SQLite never retries) found the turn held. True if the holder took it
  // for a write SQLite retries (Ticket::write_retried) and no other pass is under way: t may
  // then ask the base lock itself, as with stock SQLite (the holder, if refused, waits and
  // retries), and until EndPast(t) nobody but t is granted the turn, since the base write lock
  // may be t's. False otherwise: t fails as before.
  bool GoPastHolder(Ticket* t) SC_EXCLUDES(mu_);
  // t's pass is over (its base write lock released, or never granted): the turn may be
  // granted again; wakes the front waiter if the turn is free. No-op if t has no pass.
  void EndPast(Ticket* t) SC_EXCLUDES(mu_);
  // True if the turn is held by a handle other than t (or an upgrade other than t went past
  // the holder and holds the base write lock outside the turn) whose latest lock call came from
  // thread tid: waiting for it may wait for ourselves (reported; see lock_paths.cc).
  bool HolderLastOnThread(Ticket* t, uint64_t tid) SC_EXCLUDES(mu_);

  // Rollback mode: t, about to take its write lock for a write SQLite retries, waits until
  // `until` while a read transaction (an explicit transaction's SHARED lock) that another
  // connection of this process had open when t came here is still open (one last used on
  // thread tid does not count: it may be this thread's own), and stops as soon as none of
  // them is left or one of them goes past t to write (GoPastHolder). Read transactions begun
  // meanwhile are not waited for: t's commit would wait for those it found anyway, so t loses
  // almost nothing, where waiting for newcomers too would stall it while reads overlap. Such a read
  // transaction that then writes fails once t holds the write lock, and t's commit must wait
  // for it to end anyway. kPassed: t was passed (before it came or while it waited), and the
  // pass's base lock request must not meet t's (t's would be refused, or win the race and fail
  // the pass). `until` already past: only looks for a pass (a retry, or safeconc_fair_ms=0).
  enum class Deferral { kNone, kWaited, kPassed };
  Deferral DeferToReadTxns(Ticket* t, uint64_t tid, Clock::time_point until) SC_EXCLUDES(mu_);
  // A racy hint for the write path: might a read transaction be open? (Relaxed, as
  // Contended(): a stale "no" only skips one deferral.)
  bool ReadTxnsOpen() const { return read_txns_hint_.load(std::memory_order_relaxed); }

  // A counter bumped on every release (turn or read lock); waiters for "something was
  // released" wait for it to change.
  uint64_t Generation() SC_EXCLUDES(mu_);
  // Waits until Generation() != gen or `until`. `one_at_a_time`: one such waiter is woken per
  // release (readers refused by a writer's lock, see the .cc); it may return on a release
  // that happened before it came (gen is old) or on its own wake-up.
  void WaitForChange(uint64_t gen, Clock::time_point until, bool one_at_a_time = false)
      SC_EXCLUDES(mu_);
  // Something other than a turn or a read lock was released (a lock held outside the turn,
  // e.g. a hot-journal EXCLUSIVE): wake whoever waits for a change.
  void NotifyRelease() SC_EXCLUDES(mu_);

  // Counters the lock paths report.
  void CountBusyReturn(bool cross_process) SC_EXCLUDES(mu_);
  void CountTimeout() SC_EXCLUDES(mu_);
  void CountHandlerInstalled() SC_EXCLUDES(mu_);
  void CountInLockWait(Clock::duration waited) SC_EXCLUDES(mu_);
  void CountTurnSkipped() SC_EXCLUDES(mu_);
  // A WAL request did not wait for the shared turn: a handle of another process holds the
  // file's lock above SHARED (CrossProcess::OtherFileWriter).
  void CountFileWriterYield() SC_EXCLUDES(mu_);

  // A racy hint, for the lock paths' fast path: is the turn held or anyone in line? Written
  // under mu_ whenever either changes, read without it (relaxed: a stale answer only means
  // a request takes the slower path, which re-checks under mu_).
  bool Contended() const { return contended_.load(std::memory_order_relaxed); }

  BlockerInfo Blocker() SC_EXCLUDES(mu_);
  RestState Rest() SC_EXCLUDES(mu_);
  // The "coordinator" object of safeconc_stats().
  void WriteJson(JsonWriter& w) SC_EXCLUDES(mu_);

 private:
  // The first live ticket in line (parked, or on its way to claim a turn reserved for it).
  Ticket* FrontLocked() const SC_REQUIRES(mu_);
  // The first ticket in line with a thread parked on it, other than `except`.
  Ticket* FirstParkedLocked(Ticket* except) const SC_REQUIRES(mu_);
  // The first live ticket in line ahead of t (the whole line if t is not in it), or null.
  Ticket* LiveAheadOfLocked(Ticket* t) const SC_REQUIRES(mu_);
  // May t take the turn now? Drops a lapsed reservation on the way.
  bool MayTakeLocked(Ticket* t, Ask ask, Clock::time_point now) SC_REQUIRES(mu_);
  void GrantLocked(Ticket* t, Ask ask, uint64_t tid, Clock::time_point now) SC_REQUIRES(mu_);
  // The turn became free: wake the front waiter, reserving the turn for it if it waited its
  // fairness bound.
  void OnFreeLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // The wake-up part of OnFreeLocked (also when a pass ends: not a release).
  void WakeNextLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // Ends the pass under way (EndPast, Close): the turn may be granted again.
  void EndPastLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // Revokes a pre-read turn held longer than timing::kPreReadLease.
  void RevokeStaleLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // Puts t in line: a new arrival at the back, a retry (queued and seen lately) in its place.
  void EnqueueLocked(Ticket* t, Clock::duration fair, Clock::time_point now) SC_REQUIRES(mu_);
  void LinkLocked(Ticket* t, bool at_front) SC_REQUIRES(mu_);
  void RemoveLocked(Ticket* t) SC_REQUIRES(mu_);
  // Parks the calling thread on t's condition variable until `until` or a signal.
  void ParkLocked(Ticket* t, Clock::time_point until) SC_REQUIRES(mu_);
  // When a parked waiter must look again at the latest (see the .cc).
  Clock::time_point WakeLocked(Ticket* t, Clock::time_point until, Clock::time_point now) const
      SC_REQUIRES(mu_);
  void ClearHolderLocked() SC_REQUIRES(mu_);
  void BumpGenerationLocked() SC_REQUIRES(mu_);
  void UpdateHintLocked() SC_REQUIRES(mu_);

  // What this coordinator knows of one ticket. It lives inside the Ticket (no allocation, no
  // lookup) but is the coordinator's state, guarded by mu_: a private type only Coordinator
  // code can name, reached through Of(t), which requires mu_, or through the lists and
  // holder_/reserved_, which are SC_GUARDED_BY(mu_). Clang checks both ways in.
  struct Place {
    explicit Place(Ticket* t) : ticket(t) {}
    Ticket* const ticket;         // the ticket this is the place of (constant)
    ListLink<Place> line_link;    // in line_ while queued
    ListLink<Place> reader_link;  // in readers_ while it holds SHARED (rollback)
    bool read_txn = false;        // in readers_ for an explicit transaction's read
    uint64_t read_seq = 0;        // when it entered readers_ (DeferToReadTxns' snapshot)
    bool open = true;             // false once the file closed
    int parked = 0;               // threads of this handle waiting on cv right now (0 or 1)
    Clock::time_point arrived;    // when the current request first queued
    Clock::time_point seen;       // when its owner last waited here (kStaleTicket)
    Clock::duration fair{};       // its connection's safeconc_fair_ms
    CondVar cv;                   // signalled when the turn may be this ticket's
    // Its latest request was asked with holds_read_lock (AcquireTurn, TryTurn): while it
    // waits (there or in WaitForTurn), its connection holds the file's SHARED lock.
    bool holds_read_lock = false;
  };
  // Does the turn holder, or an upgrade past it (GoPastHolder), hold its file's lock above
  // SHARED, or a handle of another process its write lock (WatchCrossProcess)? Then a WAL
  // connection's requests are not this turn's business: that writer's commit waits for their
  // SHARED lock, and the WAL write lock is not its to hold.
  bool FileWriterAheadLocked() const SC_REQUIRES(mu_);
  // Before p's waiter parks: kYield if it must not (it holds a read lock and a file writer is
  // ahead); kCounted if it parks counted in read_lock_waiters_ (for NoteFileWriter's wake-up)
  // until AfterParkLocked; kPlain otherwise.
  enum class ParkAs { kPlain, kCounted, kYield };
  ParkAs BeforeParkLocked(const Place& p) SC_REQUIRES(mu_);
  void AfterParkLocked(ParkAs as) SC_REQUIRES(mu_);
  friend class Ticket;  // holds its Place
  Place& Of(Ticket* t) const SC_REQUIRES(mu_);
  void RemoveReaderLocked(Place& p) SC_REQUIRES(mu_);
  bool ReadTxnBlocksLocked(Ticket* t, uint64_t tid, uint64_t seq) const SC_REQUIRES(mu_);

  Mutex mu_;
  // The write turn.
  Ticket* holder_ SC_GUARDED_BY(mu_) = nullptr;
  uint64_t holder_tid_ SC_GUARDED_BY(mu_) = 0;
  Clock::time_point holder_since_ SC_GUARDED_BY(mu_);
  bool holder_pre_read_ SC_GUARDED_BY(mu_) = false;
  Clock::time_point released_at_ SC_GUARDED_BY(mu_);  // the latest release (stats)
  // A free turn reserved for a woken waiter that waited its fairness bound, until it claims
  // it or reserved_until_ passes while it is not parked.
  Ticket* reserved_ SC_GUARDED_BY(mu_) = nullptr;
  Clock::time_point reserved_until_ SC_GUARDED_BY(mu_);
  // An upgrade that went past the holder to the base lock (GoPastHolder), until EndPast.
  Ticket* past_ SC_GUARDED_BY(mu_) = nullptr;
  // The line, in arrival order.
  IntrusiveList<Place, &Place::line_link> line_ SC_GUARDED_BY(mu_);
  int64_t parked_ SC_GUARDED_BY(mu_) = 0;
  // Readers (rollback mode).
  IntrusiveList<Place, &Place::reader_link> readers_ SC_GUARDED_BY(mu_);
  int64_t read_txns_ SC_GUARDED_BY(mu_) = 0;  // readers_ with read_txn set
  uint64_t read_seq_ SC_GUARDED_BY(mu_) = 0;  // bumped by every ReaderEnter
  int64_t deferring_ SC_GUARDED_BY(mu_) = 0;  // writers in DeferToReadTxns now
  std::atomic<bool> read_txns_hint_{false};   // read_txns_ > 0 (see ReadTxnsOpen())
  // Release notifications.
  uint64_t generation_ SC_GUARDED_BY(mu_) = 0;
  int change_waiters_ SC_GUARDED_BY(mu_) = 0;
  CondVar changed_;
  int one_waiters_ SC_GUARDED_BY(mu_) = 0;
  CondVar changed_one_;
  std::atomic<bool> contended_{false};  // see Contended()
  // Threads parked whose place has holds_read_lock (NoteFileWriter wakes them). Read
  // without the mutex by NoteFileWriter after its store to file_writer, both seq_cst: either
  // it sees the waiter, or the waiter sees file_writer before it parks.
  std::atomic<int> read_lock_waiters_{0};
  std::atomic<const CrossProcess*> xproc_{nullptr};  // WatchCrossProcess

  struct Stats {
    uint64_t acquisitions = 0;      // turns granted
    uint64_t releases = 0;          // turns given back (or revoked, or freed by a close)
    uint64_t waits = 0;             // grants that had to wait
    Histogram wait_us;              // first refusal -> grant
    Histogram release_to_grant_us;  // release -> grant of a woken waiter
    uint64_t timeouts = 0;
    uint64_t fast_failed = 0;           // refused where SQLite does not retry (upgrades)
    uint64_t barges = 0;                // grants ahead of a live waiter
    uint64_t upgrade_barges = 0;        // of which upgrades past a waiter at its bound
    uint64_t upgrade_passes = 0;        // upgrades that asked the base past a holder
    uint64_t deferrals = 0;             // writers that waited for read transactions
    int64_t max_overtaken_wait_us = 0;  // longest wait of a waiter at a barge (not upgrades)
    uint64_t handoffs = 0;              // grants of a reserved turn
    uint64_t claim_lapsed = 0;          // reservations that lapsed unclaimed
    uint64_t turn_skipped = 0;          // lock periods that went on without the turn
    uint64_t busy_returns = 0;          // SQLITE_BUSY returned at once (unsafe wait points)
    uint64_t cross_process_busy = 0;    // base lock refused: another process
    uint64_t handlers_installed = 0;    // busy handlers enforced on connections without one
    uint64_t in_lock_waits = 0;         // waits inside a lock call (safe points)
    uint64_t revoked = 0;               // pre-read turns revoked after a failed read start
    uint64_t file_writer_yields = 0;    // WAL requests that did not wait (FileWriterAheadLocked)
    uint64_t file_writer_wakes = 0;     // parked such waiters woken by NoteFileWriter
    Histogram in_lock_wait_us;
    int64_t max_queue = 0;
  } stats_ SC_GUARDED_BY(mu_);
};

// One per open shim file: its place in line and what the coordinator knows of it.
class Ticket {
 public:
  Ticket(std::shared_ptr<Coordinator> c, uint64_t handle_id)
      : coord(std::move(c)), handle(handle_id), place_(this) {}

  // Constant after construction.
  const std::shared_ptr<Coordinator> coord;
  const uint64_t handle;  // process-unique id of the shim file (diagnostics)
  // The thread of this handle's latest lock call. Written (relaxed) by the lock paths of the
  // handle, read by diagnostics on any thread: a hint that never orders anything.
  std::atomic<uint64_t> last_tid{0};
  // The write this handle asks the turn for is one SQLite retries if the base refuses it (a
  // writing statement's lock period, which holds no read transaction yet), not a
  // read-then-write the turn protects. Written by the handle's lock paths before they ask
  // for the turn (so a holder's value is published by the coordinator's mutex) and cleared
  // once its write lock is taken; read under the mutex by GoPastHolder.
  std::atomic<bool> write_retried{false};
  // The handle holds its file's lock above SHARED (Coordinator::NoteFileWriter). Written by
  // the handle's lock paths through NoteFileWriter; read under the coordinator's mutex, of
  // the holder or of an upgrade past it (FileWriterAheadLocked).
  std::atomic<bool> file_writer{false};

 private:
  friend class Coordinator;
  Coordinator::Place place_;  // the coordinator's, under coord->mu_ (see Coordinator::Place)
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_COORDINATOR_H
