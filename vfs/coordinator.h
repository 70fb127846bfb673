// coordinator.h - the per-database-file lock coordinator: who holds the write turn, who
// waits for it in FIFO order, who reads (rollback mode), and the counters behind
// safeconc_stats().
//
// The write turn is an in-process token in front of SQLite's own write lock: the
// RESERVED lock in rollback mode, the WAL WRITE lock in WAL mode, or (safeconc_txn=
// immediate/serial) a whole transaction or lock period. A connection takes it before the
// base lock call and gives it back after the base unlock. Conflicting requests queue as
// Tickets in arrival order; a release wakes exactly the front ticket (no sleep, no poll).
//
// Where a request may not wait (the connection holds a read lock: waiting could deadlock),
// the ticket is queued and SQLITE_BUSY returned at once; the ticket keeps its place while
// SQLite drops its locks and runs the busy handler, whose wait (our handler, or the VFS
// xSleep used by SQLite's default handler) ends when this ticket reaches the front with the
// turn free. A ticket that is front and free but not claimed within its lease is passed
// (marked expired) so a waiter that vanished never blocks the queue.
//
// Mutex rules: mu_ guards every field below marked SC_GUARDED_BY(mu_) and the
// SC_GUARDED_BY fields of every Ticket of this coordinator. Nothing is called out of this
// file with mu_ held: no SQLite call, no callback. Lock order: Registry::mu_ before mu_
// (diagnostics); mu_ is otherwise a leaf.
//
// Lifetime: shared_ptr, held by the registry entry and by every Ticket, so a busy record
// left in a thread-local after its file closed can still be inspected safely.
#ifndef SAFECONC_VFS_COORDINATOR_H
#define SAFECONC_VFS_COORDINATOR_H

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include "vfs/histogram.h"
#include "vfs/json.h"
#include "vfs/sync.h"

namespace safeconc {

using Clock = std::chrono::steady_clock;

// Why a handle holds the write turn; it gives the turn back when no reason is left.
enum TurnReason : unsigned {
  kReasonWrite = 1,  // holds RESERVED (rollback) or WAL WRITE
  kReasonTxn = 2,    // safeconc_txn=immediate/serial: for the whole lock period
};

// The calling thread's kernel id, for diagnostics and same-thread deadlock detection.
uint64_t CurrentThreadId();

class Coordinator;

// One per open shim file: its place in line and what the coordinator knows of it.
struct Ticket {
  Ticket(std::shared_ptr<Coordinator> c, uint64_t handle_id)
      : coord(std::move(c)), handle(handle_id) {}

  // Constant after construction.
  const std::shared_ptr<Coordinator> coord;
  const uint64_t handle;  // process-unique id of the shim file (diagnostics)

  // The rest is guarded by coord->mu_ (not expressible as an annotation on a member of
  // another object; every access is inside Coordinator methods that hold mu_).
  Ticket* prev = nullptr;  // queue links
  Ticket* next = nullptr;
  bool queued = false;
  bool open = true;               // false once the file closed
  uint64_t seq = 0;               // arrival order
  bool confirmed = false;         // its owner is known to come back (in a wait, or its handler ran)
  bool expired = false;           // lease ran out while it was front: grants may pass it
  uint64_t passed = 0;            // grants that passed it while expired and unconfirmed
  Clock::time_point arrived;      // when this request was first refused
  Clock::time_point ready_since;  // when it became front with the turn free (stats)
  Clock::time_point lease_start;  // ready_since, renewed while its owner is seen waiting
  Ticket* rprev = nullptr;        // reader links (rollback SHARED holders)
  Ticket* rnext = nullptr;
  bool reading = false;
  uint64_t reader_tid = 0;
  Clock::time_point read_since;
  CondVar cv;  // signalled when this ticket becomes front with the turn free
};

// What a refused request was up against, for safeconc_last_busy().
struct BlockerInfo {
  bool held = false;
  uint64_t holder_handle = 0;
  uint64_t holder_tid = 0;
  int64_t held_ms = 0;
  int64_t queued = 0;
  int64_t readers = 0;
};

class Coordinator {
 public:
  enum class Grant { kGranted, kQueued, kSelfDeadlock, kTimeout, kRefused };
  enum class CancelWhy { kClosed, kTimeout, kFastFail, kGaveUp };

  // Leases: how long a front ticket with the turn free may stay unclaimed. An unconfirmed
  // ticket's owner may never come back (the lock paths queue only requests SQLite retries,
  // as confirmed ones); a confirmed one was woken and is retrying.
  static constexpr std::chrono::milliseconds kTentativeLease{100};
  static constexpr std::chrono::milliseconds kConfirmedLease{1000};

  // Asks for the write turn for ticket t (thread `tid`). Granted at once if free and nobody
  // is ahead. Otherwise, with may_wait, waits in FIFO order until granted or `deadline`
  // (kTimeout); without, queues t (keeping an earlier place) and returns kQueued.
  // kSelfDeadlock: the turn is held by this very thread through another handle.
  // `pre_read`: taken before a WAL read start whose read mark is not held yet. If that read
  // start then fails (an I/O error, say), SQLite may never call this handle again to give
  // the turn back; waiters revoke such a turn after kPreReadLease (the base locks still
  // keep the data safe; only the ordering is lost). ReadStarted() ends the pre-read state.
  Grant AcquireTurn(Ticket* t, bool may_wait, bool confirmed, Clock::time_point deadline,
                    uint64_t tid, bool pre_read = false) SC_EXCLUDES(mu_);
  // Grants the turn if it is free and nobody waits ahead of t (kGranted); otherwise changes
  // nothing and returns kRefused. The uncontended first try of a write start.
  Grant TryTurn(Ticket* t, uint64_t tid) SC_EXCLUDES(mu_);
  // A request SQLite will not retry was refused (a read transaction that tries to write):
  // counts the fast failure and takes t out of the line if an earlier request left it there.
  void FastFail(Ticket* t) SC_EXCLUDES(mu_);
  // The read mark a pre-read turn was taken for is held: the turn is no longer revocable.
  // False if it was revoked meanwhile (t no longer holds the turn).
  bool ReadStarted(Ticket* t) SC_EXCLUDES(mu_);
  static constexpr std::chrono::milliseconds kPreReadLease{250};
  // Gives the turn back (t must hold it) and wakes the front ticket.
  void ReleaseTurn(Ticket* t) SC_EXCLUDES(mu_);
  // The base lock refused a turn holder (another process has it): give the turn back but
  // stay first in line, so no in-process newcomer overtakes while t polls. Only for a request
  // SQLite retries: a place kept for one it does not would block everyone behind it.
  void YieldTurnKeepPlace(Ticket* t) SC_EXCLUDES(mu_);
  // Busy-handler side: waits until t is front with the turn free (kReady) or `until` passes
  // (kTimedOut). `confirm` marks t's owner as alive. kNotQueued at once if t is not in line.
  enum class TurnWait { kReady, kTimedOut, kNotQueued };
  TurnWait WaitForTurn(Ticket* t, Clock::time_point until, bool confirm) SC_EXCLUDES(mu_);
  // Takes t out of the queue (if queued) and counts why.
  void Cancel(Ticket* t, CancelWhy why) SC_EXCLUDES(mu_);
  // The file closed: leave every list, never hold the turn again.
  void Close(Ticket* t) SC_EXCLUDES(mu_);
  // False once t's file closed. A thread-local busy record names its file through the ticket
  // it keeps alive; the file itself may be gone when this is false.
  bool IsOpen(Ticket* t) SC_EXCLUDES(mu_);

  // Rollback-mode readers (SHARED holders), for commit waits and diagnostics.
  void ReaderEnter(Ticket* t, uint64_t tid) SC_EXCLUDES(mu_);
  void ReaderLeave(Ticket* t) SC_EXCLUDES(mu_);
  // Other readers than t, and how many of them run on thread tid.
  void CountOtherReaders(Ticket* t, uint64_t tid, int* others, int* on_tid) SC_EXCLUDES(mu_);
  // True if the turn is held by a handle on thread tid other than t.
  bool TurnHeldByThread(Ticket* t, uint64_t tid) SC_EXCLUDES(mu_);

  // A counter bumped on every release (turn or read lock); waiters for "something was
  // released" wait for it to change.
  uint64_t Generation() SC_EXCLUDES(mu_);
  // Waits until Generation() != gen or `until`.
  void WaitForChange(uint64_t gen, Clock::time_point until) SC_EXCLUDES(mu_);
  // Something other than a turn or a read lock was released (a lock held outside the turn,
  // e.g. a hot-journal EXCLUSIVE): wake whoever waits for a change.
  void NotifyRelease() SC_EXCLUDES(mu_);

  // Counters the lock paths report.
  void CountBusyReturn(bool cross_process) SC_EXCLUDES(mu_);
  void CountTimeout() SC_EXCLUDES(mu_);
  void CountHandlerInstalled() SC_EXCLUDES(mu_);
  void CountInLockWait(Clock::duration waited) SC_EXCLUDES(mu_);

  // A racy hint, for the lock paths' fast path: is the turn held or anyone in line? Written
  // under mu_ whenever either changes, read without it (relaxed: a stale answer only means
  // a request takes the slower path, which re-checks under mu_).
  bool Contended() const { return contended_.load(std::memory_order_relaxed); }

  BlockerInfo Blocker() SC_EXCLUDES(mu_);
  // The "coordinator" object of safeconc_stats().
  void WriteJson(JsonWriter& w) SC_EXCLUDES(mu_);

 private:
  Ticket* FrontLocked() const SC_REQUIRES(mu_);
  bool EligibleLocked(Ticket* t) const SC_REQUIRES(mu_);
  void GrantLocked(Ticket* t, uint64_t tid, Clock::time_point now) SC_REQUIRES(mu_);
  // Revokes a pre-read turn held longer than kPreReadLease.
  void RevokeStaleLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // Puts t at the back (or the front) of the line as a new arrival.
  void LinkLocked(Ticket* t, bool at_front, Clock::time_point now) SC_REQUIRES(mu_);
  void EnqueueLocked(Ticket* t, bool confirmed, Clock::time_point now) SC_REQUIRES(mu_);
  void EnqueueFrontLocked(Ticket* t, Clock::time_point now) SC_REQUIRES(mu_);
  void RemoveLocked(Ticket* t) SC_REQUIRES(mu_);
  void ConfirmLocked(Ticket* t, Clock::time_point now) SC_REQUIRES(mu_);
  // Marks front tickets whose lease ran out as expired; wakes the next.
  void ExpireLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // After any change: the front ticket, if the turn is free, becomes ready and is woken.
  void RefreshFrontLocked(Clock::time_point now) SC_REQUIRES(mu_);
  // When the current front's lease would run out (time_point::max() if not applicable).
  Clock::time_point LeaseDeadlineLocked(Ticket* self) const SC_REQUIRES(mu_);
  // When waiter `self` must wake at the latest: its own deadline, the front's lease end, and
  // never later than kTentativeLease from now (see the .cc).
  Clock::time_point WakeDeadlineLocked(Ticket* self, Clock::time_point until,
                                       Clock::time_point now) const SC_REQUIRES(mu_);
  void BumpGenerationLocked() SC_REQUIRES(mu_);
  void UpdateHintLocked() SC_REQUIRES(mu_);
  // The ticket right behind the turn holder spins for a moment instead of parking, so the
  // hand-over costs no futex wake-up and reschedule when the holder is quick. Releases mu_
  // while spinning; returns with it held. Only with 4 or more hardware threads: measured on
  // 2 cores (bench_locks), any spin steals the CPU the holder needs and costs 1.2-6x
  // throughput, and so does the wake-up that puts the next waiter into its spin.
  void SpinBehindHolderLocked(Ticket* t) SC_REQUIRES(mu_);
  static constexpr std::chrono::microseconds kSpin{20};
  static bool SpinEnabled();

  Mutex mu_;
  // The write turn.
  Ticket* holder_ SC_GUARDED_BY(mu_) = nullptr;
  uint64_t holder_tid_ SC_GUARDED_BY(mu_) = 0;
  Clock::time_point holder_since_ SC_GUARDED_BY(mu_);
  bool holder_pre_read_ SC_GUARDED_BY(mu_) = false;
  // The FIFO queue (intrusive, in arrival order).
  Ticket* head_ SC_GUARDED_BY(mu_) = nullptr;
  Ticket* tail_ SC_GUARDED_BY(mu_) = nullptr;
  Ticket* ready_ SC_GUARDED_BY(mu_) = nullptr;  // the front ticket last made ready
  uint64_t next_seq_ SC_GUARDED_BY(mu_) = 0;
  int64_t queue_len_ SC_GUARDED_BY(mu_) = 0;
  // Readers (rollback mode).
  Ticket* readers_ SC_GUARDED_BY(mu_) = nullptr;
  int64_t reader_count_ SC_GUARDED_BY(mu_) = 0;
  // Release notifications.
  uint64_t generation_ SC_GUARDED_BY(mu_) = 0;
  int change_waiters_ SC_GUARDED_BY(mu_) = 0;
  CondVar changed_;
  // Bumped (release) on every turn release, under mu_; a spinning waiter reads it (acquire)
  // without mu_ to see a release as soon as it happens, then re-checks under mu_.
  std::atomic<uint64_t> releases_{0};
  std::atomic<bool> contended_{false};  // see Contended()

  struct Stats {
    uint64_t acquisitions = 0;      // turns granted
    uint64_t waits = 0;             // grants that had to wait
    Histogram wait_us;              // first refusal -> grant
    Histogram release_to_grant_us;  // release -> grant of the woken front ticket
    uint64_t timeouts = 0;
    uint64_t fast_failed = 0;  // refused where SQLite does not retry (upgrades)
    uint64_t overtakes = 0;    // grants ahead of a still-waiting earlier arrival
    uint64_t lease_expired = 0;
    uint64_t self_deadlocks = 0;
    uint64_t busy_returns = 0;        // SQLITE_BUSY returned at once (unsafe wait points)
    uint64_t cross_process_busy = 0;  // base lock refused: another process
    uint64_t handlers_installed = 0;  // busy handlers enforced on connections without one
    uint64_t in_lock_waits = 0;       // waits inside a lock call (safe points)
    uint64_t revoked = 0;             // pre-read turns revoked after kPreReadLease
    Histogram in_lock_wait_us;
    int64_t max_queue = 0;
  } stats_ SC_GUARDED_BY(mu_);
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_COORDINATOR_H
