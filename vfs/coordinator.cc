// coordinator.cc - see coordinator.h for the model, the mutex rules and the lock order.
#include "vfs/coordinator.h"

#include <algorithm>

#include "vfs/timing.h"
#include "vfs/xproc.h"

namespace safeconc {
namespace {

int64_t Micros(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

// ---- The line (all under mu_) -----------------------------------------------------------

Coordinator::Place& Coordinator::Of(Ticket* t) const { return t->place_; }

Ticket* Coordinator::FrontLocked() const {
  Place* p = line_.front();
  while (p != nullptr && p->parked == 0 && p->ticket != reserved_) p = line_.Next(p);
  return p != nullptr ? p->ticket : nullptr;
}

Ticket* Coordinator::LiveAheadOfLocked(Ticket* t) const {
  // t itself counts as live: it is the one asking (woken, it is no longer parked).
  for (Place* u = line_.front(); u != nullptr && u->ticket != t; u = line_.Next(u)) {
    if (u->parked > 0 || u->ticket == reserved_) return u->ticket;
  }
  return nullptr;
}

void Coordinator::LinkLocked(Ticket* t, bool at_front) {
  if (at_front) {
    line_.PushFront(&Of(t));
  } else {
    line_.PushBack(&Of(t));
  }
  stats_.max_queue = std::max(stats_.max_queue, line_.size());
  UpdateHintLocked();
}

void Coordinator::EnqueueLocked(Ticket* t, Clock::duration fair, Clock::time_point now) {
  Place& p = Of(t);
  if (line_.Contains(&p) && now - p.seen < timing::kStaleTicket) {
    p.seen = now;  // a retry: keeps its place and its arrival time
    return;
  }
  RemoveLocked(t);  // a stale place (its owner left) is given up: a new arrival
  p.arrived = now;
  p.seen = now;
  p.fair = fair;
  LinkLocked(t, /*at_front=*/false);
}

void Coordinator::RemoveLocked(Ticket* t) {
  if (reserved_ == t) reserved_ = nullptr;
  Place& p = Of(t);
  if (!line_.Contains(&p)) return;
  line_.Remove(&p);
  UpdateHintLocked();
}

void Coordinator::ParkLocked(Ticket* t, Clock::time_point until) {
  Place& p = Of(t);
  ++p.parked;
  ++parked_;
  p.cv.WaitUntil(&mu_, until);
  --p.parked;
  --parked_;
  p.seen = Clock::now();
}

bool Coordinator::MayTakeLocked(Ticket* t, Ask ask, Clock::time_point now) {
  if (holder_ != nullptr) return false;
  if (past_ != nullptr && past_ != t) return false;  // the base write lock may be past_'s
  if (ask == Ask::kUpgrade) return true;             // stock SQLite grants any free write lock
  if (reserved_ != nullptr) {
    if (reserved_ == t) return true;
    if (Of(reserved_).parked > 0 || now < reserved_until_) return false;
    ++stats_.claim_lapsed;  // its waiter did not come back in time: the turn is free again
    reserved_ = nullptr;
  }
  Ticket* f = LiveAheadOfLocked(t);
  if (f == nullptr) return true;
  // Barging is allowed while the front waiter is within its bound (fair == 0: never).
  return now - Of(f).arrived < Of(f).fair;
}

void Coordinator::GrantLocked(Ticket* t, Ask ask, uint64_t tid, Clock::time_point now) {
  Ticket* f = reserved_ == t ? nullptr : LiveAheadOfLocked(t);
  if (f != nullptr) {
    ++stats_.barges;
    if (ask == Ask::kUpgrade && now - Of(f).arrived >= Of(f).fair) {
      ++stats_.upgrade_barges;
    } else {
      stats_.max_overtaken_wait_us =
          std::max(stats_.max_overtaken_wait_us, Micros(now - Of(f).arrived));
    }
  }
  if (reserved_ == t) {
    ++stats_.handoffs;
  }
  // A reservation for another waiter (an upgrade took the free turn) ends here too: this
  // turn's release reserves again for whoever is then at the front.
  reserved_ = nullptr;
  if (line_.Contains(&Of(t))) {
    ++stats_.waits;
    stats_.wait_us.Add(static_cast<uint64_t>(Micros(now - Of(t).arrived)));
    if (released_at_ > Of(t).arrived) {
      stats_.release_to_grant_us.Add(static_cast<uint64_t>(Micros(now - released_at_)));
    }
    RemoveLocked(t);
  }
  ++stats_.acquisitions;
  holder_ = t;
  holder_tid_ = tid;
  holder_since_ = now;
  holder_pre_read_ = false;
  UpdateHintLocked();
}

void Coordinator::OnFreeLocked(Clock::time_point now) {
  released_at_ = now;
  ++stats_.releases;
  WakeNextLocked(now);
}

void Coordinator::WakeNextLocked(Clock::time_point now) {
  if (past_ != nullptr) return;  // EndPast wakes
  if (reserved_ != nullptr && Of(reserved_).parked == 0 && now >= reserved_until_) {
    ++stats_.claim_lapsed;  // a reservation nobody came back for: gone with this release
    reserved_ = nullptr;
  }
  if (reserved_ != nullptr) {
    // Still reserved for a waiter on its way back: it claims the turn; the first parked
    // waiter must time its sleep to the reservation's end in case it never comes.
    if (Of(reserved_).parked > 0) {
      Of(reserved_).cv.Signal();
    } else if (Ticket* next = FirstParkedLocked(nullptr)) {
      Of(next).cv.Signal();
    }
    return;
  }
  Ticket* f = FrontLocked();
  if (f == nullptr) return;
  if (now - Of(f).arrived >= Of(f).fair) {
    reserved_ = f;
    reserved_until_ = now + timing::kClaimLease;
  }
  // One wake-up per release: the front waiter either takes the turn or, if a running writer
  // was quicker (allowed while it is within its bound), parks again.
  Of(f).cv.Signal();
}

Ticket* Coordinator::FirstParkedLocked(Ticket* except) const {
  for (Place* u = line_.front(); u != nullptr; u = line_.Next(u)) {
    if (u->parked > 0 && u->ticket != except) return u->ticket;
  }
  return nullptr;
}

Clock::time_point Coordinator::WakeLocked(Ticket* t, Clock::time_point until,
                                          Clock::time_point now) const {
  // A release wakes the front waiter; everything else that can free the turn is a lapse of
  // time (a reservation not claimed, a pre-read turn revoked), which no one signals: a waiter
  // never sleeps past the end of a reservation for another, nor longer than kPreReadLease.
  Clock::time_point wake = std::min(until, now + timing::kPreReadLease);
  // A waiter holding a read lock looks at the other processes' write lock again (see
  // WatchCrossProcess): no release of theirs wakes it here.
  if (Of(t).holds_read_lock) {
    const CrossProcess* x = xproc_.load(std::memory_order_acquire);
    if (x != nullptr && x->Engaged()) wake = std::min(wake, now + timing::kXprocRecheck);
  }
  if (reserved_ != nullptr && reserved_ != t && Of(reserved_).parked == 0 &&
      reserved_until_ > now && holder_ == nullptr) {
    wake = std::min(wake, reserved_until_);
  }
  return wake;
}

void Coordinator::ClearHolderLocked() {
  holder_ = nullptr;
  holder_tid_ = 0;
  holder_pre_read_ = false;
  UpdateHintLocked();
}

void Coordinator::UpdateHintLocked() {
  contended_.store(holder_ != nullptr || past_ != nullptr || !line_.empty(),
                   std::memory_order_relaxed);
}

void Coordinator::RevokeStaleLocked(Clock::time_point now) {
  if (holder_ == nullptr || !holder_pre_read_ || now < holder_since_ + timing::kPreReadLease) {
    return;
  }
  ++stats_.revoked;
  ClearHolderLocked();
  OnFreeLocked(now);
  BumpGenerationLocked();
}

bool Coordinator::ReadStarted(Ticket* t) {
  MutexLock l(&mu_);
  if (holder_ != t) return false;  // revoked (RevokeStaleLocked)
  holder_pre_read_ = false;
  return true;
}

void Coordinator::BumpGenerationLocked() {
  ++generation_;
  if (change_waiters_ > 0) changed_.SignalAll();
  // Readers waiting for a writer's lock are woken one per release, not as a herd: woken
  // together they all start read transactions at once, and every one of them that then wants
  // to write (a deferred read-then-write) meets the others' read locks and fails. One wakes;
  // its own release (the end of its lock period) wakes the next.
  if (one_waiters_ > 0) changed_one_.Signal();
}

// ---- The write turn --------------------------------------------------------------------

bool Coordinator::FileWriterAheadLocked() const {
  if ((holder_ != nullptr && holder_->file_writer.load(std::memory_order_seq_cst)) ||
      (past_ != nullptr && past_->file_writer.load(std::memory_order_seq_cst))) {
    return true;
  }
  const CrossProcess* x = xproc_.load(std::memory_order_acquire);
  return x != nullptr && x->MarkedByOther();
}

void Coordinator::NoteFileWriter(Ticket* t, bool held) {
  t->file_writer.store(held, std::memory_order_seq_cst);
  if (!held || read_lock_waiters_.load(std::memory_order_seq_cst) == 0) return;
  MutexLock l(&mu_);
  if (holder_ != t && past_ != t) return;
  for (Place* u = line_.front(); u != nullptr; u = line_.Next(u)) {
    if (u->holds_read_lock && u->parked > 0) {
      ++stats_.file_writer_wakes;
      u->cv.Signal();
    }
  }
}

Coordinator::ParkAs Coordinator::BeforeParkLocked(const Place& p) {
  if (!p.holds_read_lock) return ParkAs::kPlain;
  // Counted before the check, so that NoteFileWriter either sees this waiter or is seen.
  read_lock_waiters_.fetch_add(1, std::memory_order_seq_cst);
  if (!FileWriterAheadLocked()) return ParkAs::kCounted;  // AfterParkLocked() uncounts it
  read_lock_waiters_.fetch_sub(1, std::memory_order_seq_cst);
  ++stats_.file_writer_yields;
  return ParkAs::kYield;
}

void Coordinator::AfterParkLocked(ParkAs as) {
  if (as == ParkAs::kCounted) read_lock_waiters_.fetch_sub(1, std::memory_order_seq_cst);
}

Coordinator::Grant Coordinator::AcquireTurn(Ticket* t, Clock::time_point deadline, uint64_t tid,
                                            Clock::duration fair, bool pre_read,
                                            bool holds_read_lock) {
  MutexLock l(&mu_);
  Clock::time_point now = Clock::now();
  Place& me = Of(t);
  me.holds_read_lock = holds_read_lock;  // of this request, granted or not
  if (holder_ == t) return Grant::kGranted;
  RevokeStaleLocked(now);
  if (MayTakeLocked(t, Ask::kWrite, now)) {
    GrantLocked(t, Ask::kWrite, tid, now);
    holder_pre_read_ = pre_read;
    return Grant::kGranted;
  }
  if (holds_read_lock && FileWriterAheadLocked()) {
    ++stats_.file_writer_yields;
    return Grant::kYielded;  // a place t already had in line is kept: Cancel() it
  }
  EnqueueLocked(t, fair, now);
  for (;;) {
    const ParkAs as = BeforeParkLocked(me);
    if (as == ParkAs::kYield) return Grant::kYielded;  // in line: Cancel() it
    ParkLocked(t, WakeLocked(t, deadline, now));
    AfterParkLocked(as);
    now = Clock::now();
    RevokeStaleLocked(now);
    if (MayTakeLocked(t, Ask::kWrite, now)) {
      GrantLocked(t, Ask::kWrite, tid, now);
      holder_pre_read_ = pre_read;
      return Grant::kGranted;
    }
    if (now >= deadline) return Grant::kTimeout;  // still in line: Cancel() if giving up
  }
}

Coordinator::Grant Coordinator::TryTurn(Ticket* t, Ask ask, uint64_t tid, Clock::duration fair,
                                        bool queue, bool pre_read, bool holds_read_lock) {
  MutexLock l(&mu_);
  Of(t).holds_read_lock = holds_read_lock;  // of this request, granted or not
  if (holder_ == t) return Grant::kGranted;
  const Clock::time_point now = Clock::now();
  RevokeStaleLocked(now);
  if (MayTakeLocked(t, ask, now)) {
    GrantLocked(t, ask, tid, now);
    holder_pre_read_ = pre_read;
    return Grant::kGranted;
  }
  if (holds_read_lock && FileWriterAheadLocked()) {
    ++stats_.file_writer_yields;
    return Grant::kYielded;
  }
  if (!queue) return Grant::kRefused;
  EnqueueLocked(t, fair, now);
  ++stats_.busy_returns;
  return Grant::kQueued;
}

void Coordinator::FastFail(Ticket* t) {
  MutexLock l(&mu_);
  ++stats_.fast_failed;
  const bool was_reserved = reserved_ == t;
  RemoveLocked(t);
  if (was_reserved && holder_ == nullptr) OnFreeLocked(Clock::now());
}

void Coordinator::ReleaseTurn(Ticket* t) {
  MutexLock l(&mu_);
  if (holder_ != t) return;
  ClearHolderLocked();
  OnFreeLocked(Clock::now());
  BumpGenerationLocked();
}

void Coordinator::YieldTurnKeepPlace(Ticket* t, bool cross_process) {
  MutexLock l(&mu_);
  if (holder_ != t) return;
  const Clock::time_point now = Clock::now();
  ClearHolderLocked();
  --stats_.acquisitions;  // the grant did not stick
  if (cross_process) ++stats_.cross_process_busy;
  RemoveLocked(t);
  Of(t).arrived = now;
  Of(t).seen = now;
  LinkLocked(t, /*at_front=*/true);
  // Reserved for t: in-process newcomers would only be refused by the base lock too.
  reserved_ = t;
  reserved_until_ = now + timing::kClaimLease;
  BumpGenerationLocked();
}

Coordinator::TurnWait Coordinator::WaitForTurn(Ticket* t, Clock::time_point until) {
  MutexLock l(&mu_);
  Clock::time_point now = Clock::now();
  // A ticket whose owner stopped waiting long ago (its binding's handler gave up) is not
  // revived by an unrelated sleep on the same thread.
  Place& p = Of(t);
  if (line_.Contains(&p) && p.parked == 0 && now - p.seen > timing::kStaleTicket) {
    return TurnWait::kNotQueued;
  }
  for (;;) {
    RevokeStaleLocked(now);
    if (!line_.Contains(&p)) return TurnWait::kNotQueued;
    p.seen = now;
    if (MayTakeLocked(t, Ask::kWrite, now)) {
      // t leaves to claim the turn through SQLite's retry. If it is reserved for t, the next
      // waiter must time its sleep to the reservation's end in case t never comes back.
      if (reserved_ == t) {
        if (Ticket* next = FirstParkedLocked(t)) Of(next).cv.Signal();
      }
      return TurnWait::kReady;
    }
    if (now >= until) return TurnWait::kTimedOut;
    // A WAL write start refused while a rollback-mode writer is ahead: its retry goes to the
    // base lock (lock_paths.cc); waiting here would hold up that writer's commit.
    const ParkAs as = BeforeParkLocked(p);
    if (as == ParkAs::kYield) return TurnWait::kReady;
    ParkLocked(t, WakeLocked(t, until, now));
    AfterParkLocked(as);
    // Parked: a release that finds t at the front of the live waiters wakes it (and reserves
    // for it once it waited its bound).
    now = Clock::now();
  }
}

void Coordinator::Cancel(Ticket* t, CancelWhy why) {
  MutexLock l(&mu_);
  if (!line_.Contains(&Of(t))) return;
  if (why == CancelWhy::kTimeout) ++stats_.timeouts;
  const bool was_reserved = reserved_ == t;
  RemoveLocked(t);
  if (was_reserved && holder_ == nullptr) OnFreeLocked(Clock::now());
}

void Coordinator::Close(Ticket* t) {
  MutexLock l(&mu_);
  const Clock::time_point now = Clock::now();
  Place& p = Of(t);
  p.open = false;
  const bool was_reserved = reserved_ == t;
  RemoveLocked(t);
  if (readers_.Contains(&p)) RemoveReaderLocked(p);  // the generation is bumped below
  if (past_ == t) EndPastLocked(now);  // closed with its pass under way (SQLite unlocks first)
  if (holder_ == t) {                  // SQLite unlocks before closing; stay safe if it did not
    ClearHolderLocked();
    OnFreeLocked(now);
  } else if (was_reserved && holder_ == nullptr) {
    OnFreeLocked(now);
  }
  BumpGenerationLocked();
}

bool Coordinator::IsOpen(Ticket* t) {
  MutexLock l(&mu_);
  return Of(t).open;
}

// ---- Readers ---------------------------------------------------------------------------

void Coordinator::ReaderEnter(Ticket* t, bool read_txn) {
  MutexLock l(&mu_);
  Place& p = Of(t);
  if (readers_.Contains(&p)) return;
  readers_.PushFront(&p);
  p.read_txn = read_txn;
  p.read_seq = ++read_seq_;
  if (read_txn && ++read_txns_ == 1) read_txns_hint_.store(true, std::memory_order_relaxed);
}

void Coordinator::ReaderLeave(Ticket* t) {
  MutexLock l(&mu_);
  Place& p = Of(t);
  if (!readers_.Contains(&p)) return;
  RemoveReaderLocked(p);
  BumpGenerationLocked();
}

void Coordinator::RemoveReaderLocked(Place& p) {
  readers_.Remove(&p);
  if (p.read_txn && --read_txns_ == 0) read_txns_hint_.store(false, std::memory_order_relaxed);
  p.read_txn = false;
}

bool Coordinator::ReadTxnBlocksLocked(Ticket* t, uint64_t tid, uint64_t seq) const {
  if (read_txns_ == 0 || past_ != nullptr) return false;
  for (Place* r = readers_.front(); r != nullptr; r = readers_.Next(r)) {
    if (r->read_txn && r->read_seq <= seq && r->ticket != t &&
        r->ticket->last_tid.load(std::memory_order_relaxed) != tid) {
      return true;
    }
  }
  return false;
}

Coordinator::Deferral Coordinator::DeferToReadTxns(Ticket* t, uint64_t tid,
                                                   Clock::time_point until) {
  MutexLock l(&mu_);
  // Passed already (by one of the read transactions, before t came here): its base request
  // is under way or granted, and t's would race it or be refused.
  if (past_ != nullptr && holder_ == t) return Deferral::kPassed;
  if (Clock::now() >= until) return Deferral::kNone;  // a retry: only the pass is looked for
  const uint64_t seq = read_seq_;                     // the read transactions open now
  if (!ReadTxnBlocksLocked(t, tid, seq)) return Deferral::kNone;
  ++stats_.deferrals;
  ++deferring_;
  // Woken by every reader's release and by a pass (both bump the generation).
  while (past_ == nullptr && ReadTxnBlocksLocked(t, tid, seq) && Clock::now() < until) {
    ++change_waiters_;
    changed_.WaitUntil(&mu_, until);
    --change_waiters_;
  }
  --deferring_;
  return past_ != nullptr ? Deferral::kPassed : Deferral::kWaited;
}

void Coordinator::CountOtherReaders(Ticket* t, uint64_t tid, int* others, int* on_tid) {
  MutexLock l(&mu_);
  *others = 0;
  *on_tid = 0;
  for (Place* r = readers_.front(); r != nullptr; r = readers_.Next(r)) {
    if (r->ticket == t) continue;
    ++*others;
    if (r->ticket->last_tid.load(std::memory_order_relaxed) == tid) ++*on_tid;
  }
}

bool Coordinator::GoPastHolder(Ticket* t) {
  MutexLock l(&mu_);
  if (holder_ == nullptr || holder_ == t || past_ != nullptr ||
      !holder_->write_retried.load(std::memory_order_relaxed)) {
    return false;
  }
  past_ = t;
  ++stats_.upgrade_passes;
  UpdateHintLocked();
  BumpGenerationLocked();  // a writer deferring to t's read transaction stops (DeferToReadTxns)
  return true;
}

void Coordinator::EndPast(Ticket* t) {
  MutexLock l(&mu_);
  if (past_ != t) return;
  EndPastLocked(Clock::now());
  BumpGenerationLocked();
}

void Coordinator::EndPastLocked(Clock::time_point now) {
  past_ = nullptr;
  // A turn reserved during the pass (a holder it refused, YieldTurnKeepPlace) is claimable
  // from now: its lease would otherwise have run while nobody could claim it.
  if (reserved_ != nullptr) reserved_until_ = std::max(reserved_until_, now + timing::kClaimLease);
  UpdateHintLocked();
  if (holder_ == nullptr) WakeNextLocked(now);
}

bool Coordinator::HolderLastOnThread(Ticket* t, uint64_t tid) {
  MutexLock l(&mu_);
  // A pass (GoPastHolder) keeps the turn from everyone until it ends, and only its own
  // connection ends it: a wait on its thread would wait for itself, as for a holder.
  if (past_ != nullptr && past_ != t && past_->last_tid.load(std::memory_order_relaxed) == tid) {
    return true;
  }
  return holder_ != nullptr && holder_ != t &&
         holder_->last_tid.load(std::memory_order_relaxed) == tid;
}

Clock::time_point Coordinator::OldestWaitSince(Ticket* t, Clock::time_point if_none) {
  MutexLock l(&mu_);
  Clock::time_point oldest = if_none;
  for (Place* u = line_.front(); u != nullptr; u = line_.Next(u)) {
    if (u->ticket != t && (u->parked > 0 || u->ticket == reserved_)) {
      oldest = std::min(oldest, u->arrived);
    }
  }
  return oldest;
}

void Coordinator::NotifyRelease() {
  MutexLock l(&mu_);
  BumpGenerationLocked();
}

uint64_t Coordinator::Generation() {
  MutexLock l(&mu_);
  return generation_;
}

void Coordinator::WaitForChange(uint64_t gen, Clock::time_point until, bool one_at_a_time) {
  MutexLock l(&mu_);
  while (generation_ == gen && Clock::now() < until) {
    if (one_at_a_time) {
      ++one_waiters_;
      changed_one_.WaitUntil(&mu_, until);
      --one_waiters_;
      return;  // woken for this release (or timed out): the caller tries once
    }
    ++change_waiters_;
    changed_.WaitUntil(&mu_, until);
    --change_waiters_;
  }
}

// ---- Counters and diagnostics -----------------------------------------------------------

void Coordinator::CountBusyReturn(bool cross_process) {
  MutexLock l(&mu_);
  if (cross_process)
    ++stats_.cross_process_busy;
  else
    ++stats_.busy_returns;
}
void Coordinator::CountTimeout() {
  MutexLock l(&mu_);
  ++stats_.timeouts;
}
void Coordinator::CountHandlerInstalled() {
  MutexLock l(&mu_);
  ++stats_.handlers_installed;
}
void Coordinator::CountTurnSkipped() {
  MutexLock l(&mu_);
  ++stats_.turn_skipped;
}
void Coordinator::CountFileWriterYield() {
  MutexLock l(&mu_);
  ++stats_.file_writer_yields;
}
void Coordinator::CountInLockWait(Clock::duration waited) {
  MutexLock l(&mu_);
  ++stats_.in_lock_waits;
  stats_.in_lock_wait_us.Add(static_cast<uint64_t>(Micros(waited)));
}

BlockerInfo Coordinator::Blocker() {
  MutexLock l(&mu_);
  BlockerInfo b;
  b.held = holder_ != nullptr;
  if (holder_ != nullptr) {
    b.holder_handle = holder_->handle;
    b.holder_tid = holder_tid_;
    b.holder_last_tid = holder_->last_tid.load(std::memory_order_relaxed);
    b.held_ms = Micros(Clock::now() - holder_since_) / 1000;
  }
  b.queued = line_.size();
  b.readers = readers_.size();
  return b;
}

RestState Coordinator::Rest() {
  MutexLock l(&mu_);
  RestState r;
  r.held = holder_ != nullptr;
  r.reserved = reserved_ != nullptr;
  r.queued = line_.size();
  r.parked = parked_;
  r.readers = readers_.size();
  r.passing = past_ != nullptr;
  r.read_txns = read_txns_;
  r.deferring = deferring_;
  return r;
}

void Coordinator::WriteJson(JsonWriter& w) {
  MutexLock l(&mu_);
  const Clock::time_point now = Clock::now();
  int64_t walked = 0, walked_readers = 0;
  for (Place* u = line_.front(); u != nullptr; u = line_.Next(u)) ++walked;
  for (Place* u = readers_.front(); u != nullptr; u = readers_.Next(u)) ++walked_readers;
  w.BeginObject()
      .Field("acquisitions", static_cast<int64_t>(stats_.acquisitions))
      .Field("releases", static_cast<int64_t>(stats_.releases))
      .Field("waits", static_cast<int64_t>(stats_.waits))
      .Key("wait_us");
  stats_.wait_us.WriteJson(w);
  w.Key("release_to_grant_us");
  stats_.release_to_grant_us.WriteJson(w);
  w.Field("in_lock_waits", static_cast<int64_t>(stats_.in_lock_waits)).Key("in_lock_wait_us");
  stats_.in_lock_wait_us.WriteJson(w);
  w.Field("timeouts", static_cast<int64_t>(stats_.timeouts))
      .Field("fast_failed_upgrades", static_cast<int64_t>(stats_.fast_failed))
      .Field("barges", static_cast<int64_t>(stats_.barges))
      .Field("upgrade_barges", static_cast<int64_t>(stats_.upgrade_barges))
      .Field("upgrade_passes", static_cast<int64_t>(stats_.upgrade_passes))
      .Field("reader_deferrals", static_cast<int64_t>(stats_.deferrals))
      .Field("max_overtaken_wait_us", stats_.max_overtaken_wait_us)
      .Field("handoffs", static_cast<int64_t>(stats_.handoffs))
      .Field("claim_lapsed", static_cast<int64_t>(stats_.claim_lapsed))
      .Field("turn_skipped", static_cast<int64_t>(stats_.turn_skipped))
      .Field("revoked", static_cast<int64_t>(stats_.revoked))
      .Field("file_writer_yields", static_cast<int64_t>(stats_.file_writer_yields))
      .Field("busy_returns", static_cast<int64_t>(stats_.busy_returns))
      .Field("cross_process_busy", static_cast<int64_t>(stats_.cross_process_busy))
      .Field("busy_handlers_installed", static_cast<int64_t>(stats_.handlers_installed))
      .Field("queue_depth", line_.size())
      .Field("max_queue_depth", stats_.max_queue)
      .Field("readers", readers_.size())
      .Key("debug")
      .BeginObject()
      .Key("held")
      .Bool(holder_ != nullptr)
      .Key("reserved")
      .Bool(reserved_ != nullptr)
      .Field("queue_walked", walked)
      .Field("parked", parked_)
      .Field("readers_walked", walked_readers)
      .Field("change_waiters", static_cast<int64_t>(change_waiters_ + one_waiters_))
      .Field("read_txns", read_txns_)
      .Field("deferring", deferring_)
      .Field("file_writer_wakes", static_cast<int64_t>(stats_.file_writer_wakes))
      .EndObject()
      .Key("write_turn");
  if (holder_ == nullptr) {
    w.Null();
  } else {
    w.BeginObject()
        .Field("handle", static_cast<int64_t>(holder_->handle))
        .Field("thread", static_cast<int64_t>(holder_tid_))
        .Field("last_thread",
               static_cast<int64_t>(holder_->last_tid.load(std::memory_order_relaxed)))
        .Field("held_ms", Micros(now - holder_since_) / 1000)
        .EndObject();
  }
  w.EndObject();
}

}  // namespace safeconc
