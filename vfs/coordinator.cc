// coordinator.cc - see coordinator.h for the model, the mutex rules and the lock order.
#include "vfs/coordinator.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

namespace safeconc {
namespace {

int64_t Micros(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

uint64_t CurrentThreadId() {
  thread_local uint64_t tid = static_cast<uint64_t>(::syscall(SYS_gettid));
  return tid;
}

// ---- Queue primitives (all under mu_) --------------------------------------------------

Ticket* Coordinator::FrontLocked() const {
  Ticket* t = head_;
  while (t != nullptr && t->expired) t = t->next;
  return t;
}

bool Coordinator::EligibleLocked(Ticket* t) const {
  if (holder_ != nullptr) return false;
  Ticket* f = FrontLocked();
  return f == nullptr || f == t;
}

void Coordinator::LinkLocked(Ticket* t, bool at_front, Clock::time_point now) {
  if (t->queued) RemoveLocked(t);
  t->seq = at_front ? 0 : ++next_seq_;  // 0: first in line by construction
  t->arrived = now;
  t->confirmed = false;
  t->expired = false;
  t->passed = 0;
  if (at_front) {
    t->prev = nullptr;
    t->next = head_;
    if (head_)
      head_->prev = t;
    else
      tail_ = t;
    head_ = t;
  } else {
    t->prev = tail_;
    t->next = nullptr;
    if (tail_)
      tail_->next = t;
    else
      head_ = t;
    tail_ = t;
  }
  t->queued = true;
  ++queue_len_;
  stats_.max_queue = std::max(stats_.max_queue, queue_len_);
  UpdateHintLocked();
}

void Coordinator::EnqueueLocked(Ticket* t, bool confirmed, Clock::time_point now) {
  if (!t->queued) LinkLocked(t, /*at_front=*/false, now);  // a retry keeps its place
  if (confirmed) ConfirmLocked(t, now);
  RefreshFrontLocked(now);
}

void Coordinator::EnqueueFrontLocked(Ticket* t, Clock::time_point now) {
  LinkLocked(t, /*at_front=*/true, now);
  ConfirmLocked(t, now);
  RefreshFrontLocked(now);
}

void Coordinator::RemoveLocked(Ticket* t) {
  if (!t->queued) return;
  if (t->prev)
    t->prev->next = t->next;
  else
    head_ = t->next;
  if (t->next)
    t->next->prev = t->prev;
  else
    tail_ = t->prev;
  t->prev = t->next = nullptr;
  t->queued = false;
  --queue_len_;
  if (ready_ == t) ready_ = nullptr;
  UpdateHintLocked();
}

void Coordinator::ConfirmLocked(Ticket* t, Clock::time_point now) {
  if (!t->queued) return;
  if (!t->confirmed) {
    t->confirmed = true;
    // It was waiting all along: grants that passed it while it looked abandoned overtook it.
    stats_.overtakes += t->passed;
    t->passed = 0;
  }
  if (t->expired) {
    t->expired = false;
    ready_ = nullptr;  // the front may have changed back to t
  }
  if (ready_ == t) t->lease_start = now;  // renew: its owner is alive
}

void Coordinator::RefreshFrontLocked(Clock::time_point now) {
  if (holder_ != nullptr) return;
  Ticket* f = FrontLocked();
  if (f == nullptr || f == ready_) return;
  ready_ = f;
  f->ready_since = now;
  f->lease_start = now;
  // Only the front is woken: one wake-up per hand-over. Whoever waits behind it notices a
  // lease running out through the capped sleep of WakeDeadlineLocked.
  f->cv.Signal();
}

Clock::time_point Coordinator::LeaseDeadlineLocked(Ticket* self) const {
  if (holder_ != nullptr && holder_pre_read_) return holder_since_ + kPreReadLease;
  if (holder_ != nullptr || ready_ == nullptr || ready_ == self) return Clock::time_point::max();
  return ready_->lease_start + (ready_->confirmed ? kConfirmedLease : kTentativeLease);
}

Clock::time_point Coordinator::WakeDeadlineLocked(Ticket* self, Clock::time_point until,
                                                  Clock::time_point now) const {
  // A waiter is not woken when the ticket ahead of it becomes front (that would be a second
  // wake-up per hand-over, measured at ~1.2 extra context switches per transaction). So it
  // never sleeps longer than the shortest lease: a front that became ready while it slept
  // cannot have used up its lease before the waiter wakes, re-reads LeaseDeadlineLocked and
  // times its next sleep to that lease's end exactly.
  return std::min({until, LeaseDeadlineLocked(self), now + kTentativeLease});
}

void Coordinator::RevokeStaleLocked(Clock::time_point now) {
  if (holder_ == nullptr || !holder_pre_read_ || now < holder_since_ + kPreReadLease) return;
  ++stats_.revoked;
  holder_ = nullptr;
  holder_tid_ = 0;
  holder_pre_read_ = false;
  releases_.fetch_add(1, std::memory_order_release);
  UpdateHintLocked();
  RefreshFrontLocked(now);
  BumpGenerationLocked();
}

bool Coordinator::ReadStarted(Ticket* t) {
  MutexLock l(&mu_);
  if (holder_ != t) return false;  // revoked (RevokeStaleLocked)
  holder_pre_read_ = false;
  return true;
}

void Coordinator::ExpireLocked(Clock::time_point now) {
  RevokeStaleLocked(now);
  while (holder_ == nullptr && ready_ != nullptr &&
         now >= ready_->lease_start + (ready_->confirmed ? kConfirmedLease : kTentativeLease)) {
    ready_->expired = true;
    ++stats_.lease_expired;
    ready_ = nullptr;
    RefreshFrontLocked(now);
  }
}

void Coordinator::GrantLocked(Ticket* t, uint64_t tid, Clock::time_point now) {
  // Expired tickets ahead of t are passed. A confirmed one is still waiting: an overtake.
  // An unconfirmed one is counted only if its owner turns out to be waiting after all.
  for (Ticket* e = head_; e != nullptr && e != t; e = e->next) {
    if (!e->expired) break;
    if (e->confirmed)
      ++stats_.overtakes;
    else
      ++e->passed;
  }
  if (t->queued) {
    ++stats_.waits;
    stats_.wait_us.Add(static_cast<uint64_t>(Micros(now - t->arrived)));
    if (ready_ == t) {
      stats_.release_to_grant_us.Add(static_cast<uint64_t>(Micros(now - t->ready_since)));
    }
    RemoveLocked(t);
  }
  ++stats_.acquisitions;
  holder_ = t;
  holder_tid_ = tid;
  holder_since_ = now;
  holder_pre_read_ = false;
  UpdateHintLocked();
  // The next in line becomes the one right behind the holder: wake it to spin.
  if (SpinEnabled()) {
    if (Ticket* next = FrontLocked()) next->cv.Signal();
  }
}

void Coordinator::UpdateHintLocked() {
  contended_.store(holder_ != nullptr || queue_len_ > 0, std::memory_order_relaxed);
}

bool Coordinator::SpinEnabled() {
  static const bool enabled = std::thread::hardware_concurrency() >= 4;
  return enabled;
}

void Coordinator::SpinBehindHolderLocked(Ticket* /*t*/) {
  const uint64_t seen = releases_.load(std::memory_order_acquire);
  mu_.Unlock();
  const Clock::time_point until = Clock::now() + kSpin;
  while (releases_.load(std::memory_order_acquire) == seen && Clock::now() < until) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  mu_.Lock();
}

void Coordinator::BumpGenerationLocked() {
  ++generation_;
  if (change_waiters_ > 0) changed_.SignalAll();
}

// ---- The write turn --------------------------------------------------------------------

Coordinator::Grant Coordinator::AcquireTurn(Ticket* t, bool may_wait, bool confirmed,
                                            Clock::time_point deadline, uint64_t tid,
                                            bool pre_read) {
  MutexLock l(&mu_);
  Clock::time_point now = Clock::now();
  if (holder_ == t) return Grant::kGranted;
  ExpireLocked(now);
  if (holder_ != nullptr && holder_tid_ == tid) {
    // Waiting would wait for ourselves. (SQLite connections are not re-entrant across
    // threads mid-call, so a holder on this thread cannot make progress while we wait.)
    ++stats_.self_deadlocks;
    if (t->queued) {
      RemoveLocked(t);
      RefreshFrontLocked(now);
    }
    return Grant::kSelfDeadlock;
  }
  if (EligibleLocked(t)) {
    GrantLocked(t, tid, now);
    holder_pre_read_ = pre_read;
    return Grant::kGranted;
  }
  if (!may_wait) {
    EnqueueLocked(t, confirmed, now);
    ++stats_.busy_returns;
    return Grant::kQueued;
  }
  EnqueueLocked(t, /*confirmed=*/true, now);
  for (bool spun = false;;) {
    if (!spun && SpinEnabled() && holder_ != nullptr && FrontLocked() == t) {
      SpinBehindHolderLocked(t);
      spun = true;
    } else {
      t->cv.WaitUntil(&mu_, WakeDeadlineLocked(t, deadline, now));
      spun = false;
    }
    now = Clock::now();
    ExpireLocked(now);
    if (EligibleLocked(t)) {
      GrantLocked(t, tid, now);
      holder_pre_read_ = pre_read;
      return Grant::kGranted;
    }
    if (holder_ != nullptr && holder_tid_ == tid) {  // cannot happen: only we act for tid
      ++stats_.self_deadlocks;
      RemoveLocked(t);
      RefreshFrontLocked(now);
      return Grant::kSelfDeadlock;
    }
    if (now >= deadline) {
      ++stats_.timeouts;
      RemoveLocked(t);
      RefreshFrontLocked(now);
      return Grant::kTimeout;
    }
  }
}

Coordinator::Grant Coordinator::TryTurn(Ticket* t, uint64_t tid) {
  MutexLock l(&mu_);
  if (holder_ == t) return Grant::kGranted;
  const Clock::time_point now = Clock::now();
  ExpireLocked(now);
  if (!EligibleLocked(t)) return Grant::kRefused;
  GrantLocked(t, tid, now);
  return Grant::kGranted;
}

void Coordinator::FastFail(Ticket* t) {
  MutexLock l(&mu_);
  ++stats_.fast_failed;
  if (!t->queued) return;
  RemoveLocked(t);
  RefreshFrontLocked(Clock::now());
}

void Coordinator::ReleaseTurn(Ticket* t) {
  MutexLock l(&mu_);
  if (holder_ != t) return;
  holder_ = nullptr;
  holder_tid_ = 0;
  releases_.fetch_add(1, std::memory_order_release);
  UpdateHintLocked();
  RefreshFrontLocked(Clock::now());
  BumpGenerationLocked();
}

void Coordinator::YieldTurnKeepPlace(Ticket* t) {
  MutexLock l(&mu_);
  if (holder_ != t) return;
  holder_ = nullptr;
  holder_tid_ = 0;
  releases_.fetch_add(1, std::memory_order_release);
  --stats_.acquisitions;  // the grant did not stick
  ++stats_.cross_process_busy;
  EnqueueFrontLocked(t, Clock::now());
  BumpGenerationLocked();
}

Coordinator::TurnWait Coordinator::WaitForTurn(Ticket* t, Clock::time_point until, bool confirm) {
  MutexLock l(&mu_);
  Clock::time_point now = Clock::now();
  if (!t->queued) return TurnWait::kNotQueued;
  if (confirm) ConfirmLocked(t, now);
  RefreshFrontLocked(now);
  for (bool spun = false;;) {
    ExpireLocked(now);
    if (!t->queued) return TurnWait::kNotQueued;
    if (EligibleLocked(t)) return TurnWait::kReady;
    if (now >= until) return TurnWait::kTimedOut;
    if (!spun && SpinEnabled() && holder_ != nullptr && FrontLocked() == t) {
      SpinBehindHolderLocked(t);
      spun = true;
    } else {
      t->cv.WaitUntil(&mu_, WakeDeadlineLocked(t, until, now));
      spun = false;
    }
    now = Clock::now();
    if (confirm && ready_ == t) t->lease_start = now;
  }
}

void Coordinator::Cancel(Ticket* t, CancelWhy why) {
  MutexLock l(&mu_);
  if (!t->queued) return;
  switch (why) {
    case CancelWhy::kTimeout:
      ++stats_.timeouts;
      break;
    case CancelWhy::kFastFail:
      ++stats_.fast_failed;
      break;
    case CancelWhy::kClosed:
    case CancelWhy::kGaveUp:
      break;
  }
  RemoveLocked(t);
  RefreshFrontLocked(Clock::now());
}

void Coordinator::Close(Ticket* t) {
  MutexLock l(&mu_);
  const Clock::time_point now = Clock::now();
  t->open = false;
  RemoveLocked(t);
  if (t->reading) {
    if (t->rprev)
      t->rprev->rnext = t->rnext;
    else
      readers_ = t->rnext;
    if (t->rnext) t->rnext->rprev = t->rprev;
    t->reading = false;
    --reader_count_;
  }
  if (holder_ == t) {  // SQLite unlocks before closing; stay safe if it did not
    holder_ = nullptr;
    holder_tid_ = 0;
    releases_.fetch_add(1, std::memory_order_release);
  }
  UpdateHintLocked();
  RefreshFrontLocked(now);
  BumpGenerationLocked();
}

bool Coordinator::IsOpen(Ticket* t) {
  MutexLock l(&mu_);
  return t->open;
}

// ---- Readers ---------------------------------------------------------------------------

void Coordinator::ReaderEnter(Ticket* t, uint64_t tid) {
  MutexLock l(&mu_);
  if (t->reading) return;
  t->reading = true;
  t->reader_tid = tid;
  t->read_since = Clock::now();
  t->rprev = nullptr;
  t->rnext = readers_;
  if (readers_) readers_->rprev = t;
  readers_ = t;
  ++reader_count_;
}

void Coordinator::ReaderLeave(Ticket* t) {
  MutexLock l(&mu_);
  if (!t->reading) return;
  if (t->rprev)
    t->rprev->rnext = t->rnext;
  else
    readers_ = t->rnext;
  if (t->rnext) t->rnext->rprev = t->rprev;
  t->rprev = t->rnext = nullptr;
  t->reading = false;
  --reader_count_;
  BumpGenerationLocked();
}

void Coordinator::CountOtherReaders(Ticket* t, uint64_t tid, int* others, int* on_tid) {
  MutexLock l(&mu_);
  *others = 0;
  *on_tid = 0;
  for (Ticket* r = readers_; r != nullptr; r = r->rnext) {
    if (r == t) continue;
    ++*others;
    if (r->reader_tid == tid) ++*on_tid;
  }
}

bool Coordinator::TurnHeldByThread(Ticket* t, uint64_t tid) {
  MutexLock l(&mu_);
  return holder_ != nullptr && holder_ != t && holder_tid_ == tid;
}

void Coordinator::NotifyRelease() {
  MutexLock l(&mu_);
  BumpGenerationLocked();
}

uint64_t Coordinator::Generation() {
  MutexLock l(&mu_);
  return generation_;
}

void Coordinator::WaitForChange(uint64_t gen, Clock::time_point until) {
  MutexLock l(&mu_);
  while (generation_ == gen && Clock::now() < until) {
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
    b.held_ms = Micros(Clock::now() - holder_since_) / 1000;
  }
  b.queued = queue_len_;
  b.readers = reader_count_;
  return b;
}

void Coordinator::WriteJson(JsonWriter& w) {
  MutexLock l(&mu_);
  const Clock::time_point now = Clock::now();
  w.BeginObject()
      .Field("acquisitions", static_cast<int64_t>(stats_.acquisitions))
      .Field("waits", static_cast<int64_t>(stats_.waits))
      .Key("wait_us");
  stats_.wait_us.WriteJson(w);
  w.Key("release_to_grant_us");
  stats_.release_to_grant_us.WriteJson(w);
  w.Field("in_lock_waits", static_cast<int64_t>(stats_.in_lock_waits)).Key("in_lock_wait_us");
  stats_.in_lock_wait_us.WriteJson(w);
  w.Field("timeouts", static_cast<int64_t>(stats_.timeouts))
      .Field("fast_failed_upgrades", static_cast<int64_t>(stats_.fast_failed))
      .Field("overtakes", static_cast<int64_t>(stats_.overtakes))
      .Field("lease_expired", static_cast<int64_t>(stats_.lease_expired))
      .Field("self_deadlocks", static_cast<int64_t>(stats_.self_deadlocks))
      .Field("revoked", static_cast<int64_t>(stats_.revoked))
      .Field("busy_returns", static_cast<int64_t>(stats_.busy_returns))
      .Field("cross_process_busy", static_cast<int64_t>(stats_.cross_process_busy))
      .Field("busy_handlers_installed", static_cast<int64_t>(stats_.handlers_installed))
      .Field("queue_depth", queue_len_)
      .Field("max_queue_depth", stats_.max_queue)
      .Field("readers", reader_count_)
      .Key("write_turn");
  if (holder_ == nullptr) {
    w.Null();
  } else {
    w.BeginObject()
        .Field("handle", static_cast<int64_t>(holder_->handle))
        .Field("thread", static_cast<int64_t>(holder_tid_))
        .Field("held_ms", Micros(now - holder_since_) / 1000)
        .EndObject();
  }
  w.EndObject();
}

}  // namespace safeconc
