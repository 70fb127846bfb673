// xproc.cc - the shared write turn's protocol over the sidecar (model in xproc.h): the line,
// its fairness, futex wake-ups, liveness checks and repair after a crash.
#include "vfs/xproc.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <thread>
#include <vector>

#include "vfs/timing.h"

namespace safeconc {

using namespace xproc;  // NOLINT: this file is the protocol of that namespace's layout

namespace {

constexpr int64_t Ns(std::chrono::nanoseconds d) { return d.count(); }

// No other process is attached: nothing to coordinate across processes (a relaxed look; a
// process that attaches meanwhile meets this one at the base lock, which stays the truth).
bool Alone(const XShared* s) { return s->attached.load(std::memory_order_relaxed) <= 1; }

// getpid(), kept across calls and refreshed in a forked child.
std::atomic<int32_t> g_pid{0};
int32_t MyPid() {
  int32_t pid = g_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, [] { g_pid.store(getpid(), std::memory_order_relaxed); });
      return true;
    }();
    (void)registered;
    pid = getpid();
    g_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

// SelfStart() without its getpid() call (MyPid() is refreshed in a forked child): for
// NoteFileWriter, on every rollback write transaction's lock path.
uint64_t MyStart() {
  static std::atomic<int32_t> for_pid{0};
  static std::atomic<uint64_t> start{0};
  const int32_t pid = MyPid();
  if (for_pid.load(std::memory_order_acquire) == pid) return start.load(std::memory_order_relaxed);
  const uint64_t v = SelfStart();
  start.store(v, std::memory_order_relaxed);
  for_pid.store(pid, std::memory_order_release);
  return v;
}

void FutexWait(std::atomic<uint32_t>* word, uint32_t seen, int64_t timeout_ns) {
  if (timeout_ns <= 0) return;
  timespec ts{static_cast<time_t>(timeout_ns / 1000000000),
              static_cast<long>(timeout_ns % 1000000000)};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, seen, &ts, nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>* word, int n) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, n, nullptr, nullptr, 0);
}

// Wakes the waiter of slot `i` (if any) and everyone waiting for a change.
void WakeSlot(XShared* s, int i) {
  if (i < 0 || i >= kSlots) return;
  s->wake[i].fetch_add(1, std::memory_order_release);
  FutexWake(&s->wake[i], 1);
}

void BumpSeq(XShared* s) {
  s->seq.fetch_add(1, std::memory_order_seq_cst);
  if (s->seq_waiters.load(std::memory_order_seq_cst) > 0) FutexWake(&s->seq, INT_MAX);
}

// A waiter a release can wake: parked in the line, and awake recently (a stopped or killed
// process is not). Only live waiters are reserved for and hold newcomers back; a waiter that
// is elsewhere (between two steps of its binding's busy handler) keeps its place.
bool Live(const Slot& u, int64_t now) {
  return u.state == kWaiting && u.parked != 0 && now - u.seen_ns < Ns(timing::kXprocStale);
}

// The first live waiter in line ahead of slot `of` (the whole line if -1), other than `of`;
// -1 if none. The line is ordered by the fairness clock (LineOrder), so its front is the
// waiter standing for the longest-waiting transaction, as in a process's own line, and its
// bound is what the fairness check looks at.
int AheadOfLocked(XShared* s, int of, int64_t now) SC_REQUIRES(s->mu) {
  int best = -1;
  for (int i = 0; i < kSlots; ++i) {
    const Slot& u = s->slots[i];
    if (i == of || !Live(u, now) || (of >= 0 && !LineOrder(u, s->slots[of]))) continue;
    if (best < 0 || LineOrder(u, s->slots[best])) best = i;
  }
  return best;
}

int FrontLocked(XShared* s, int64_t now) SC_REQUIRES(s->mu) { return AheadOfLocked(s, -1, now); }

void FreeSlotLocked(XShared* s, int i) SC_REQUIRES(s->mu) {
  if (s->slots[i].state == kFree) return;
  s->slots[i].state = kFree;
  s->waiting_hint.fetch_sub(1, std::memory_order_relaxed);
}

// Every field back in range and dead processes out: after a process died inside an update
// (EOWNERDEAD), or when a field is found out of range.
void RepairLocked(XShared* s) SC_REQUIRES(s->mu) {
  ++s->repairs;
  if (s->holder_pid < 0 || (s->holder_pid != 0 && !ProcessAlive(s->holder_pid, s->holder_pstart))) {
    if (s->holder_pid != 0) ++s->dead_holders;
    s->holder_pid = 0;
  }
  uint32_t waiting = 0;
  for (int i = 0; i < kSlots; ++i) {
    Slot& u = s->slots[i];
    if (u.state == kWaiting && ProcessAlive(u.pid, u.pstart)) {
      u.parked = u.parked != 0;
      ++waiting;
    } else {
      if (u.state == kWaiting) ++s->dead_waiters;
      u.state = kFree;
    }
  }
  if (s->reserved < -1 || s->reserved >= kSlots ||
      (s->reserved >= 0 && s->slots[s->reserved].state != kWaiting)) {
    s->reserved = -1;
  }
  const int64_t now = NowNs();
  if (s->released_at_ns > now || s->released_at_ns < 0) s->released_at_ns = 0;
  if (s->reserved_until_ns > now + Ns(timing::kClaimLease)) s->reserved_until_ns = now;
  s->waiting_hint.store(waiting, std::memory_order_relaxed);
  s->holder_hint.store(s->holder_pid, std::memory_order_relaxed);
}

// The turn is free: reserves it for the front waiter if that one has waited its bound.
// Returns the slot to wake (the reserved one, or the front), -1 if none.
int OnFreeLocked(XShared* s, int64_t now) SC_REQUIRES(s->mu) {
  s->released_at_ns = now;
  if (s->reserved >= 0 &&
      (s->slots[s->reserved].state != kWaiting || now >= s->reserved_until_ns)) {
    ++s->claim_lapsed;
    s->reserved = -1;
  }
  if (s->reserved >= 0) return s->reserved;
  const int f = FrontLocked(s, now);
  if (f >= 0 && now - s->slots[f].arrived_ns >= s->slots[f].fair_ns) {
    s->reserved = f;
    s->reserved_until_ns = now + Ns(timing::kClaimLease);
  }
  return f;
}

int ReleaseLocked(XShared* s, int64_t now) SC_REQUIRES(s->mu) {
  s->holder_pid = 0;
  s->holder_ticket = 0;
  s->holder_hint.store(0, std::memory_order_relaxed);
  return OnFreeLocked(s, now);
}

// A holder in another process that has held the turn a while is checked for life (at most
// once per kXprocRecheck by all its waiters together): a killed one's turn is taken back.
// Returns the slot to wake, -1 if none.
int CheckHolderLocked(XShared* s, int64_t now, int32_t me) SC_REQUIRES(s->mu) {
  if (s->reserved < -1 || s->reserved >= kSlots) RepairLocked(s);  // corrupt
  if (s->holder_pid == 0 || s->holder_pid == me ||
      now - s->holder_checked_ns < Ns(timing::kXprocRecheck)) {
    return -1;
  }
  s->holder_checked_ns = now;
  if (s->holder_pre_read != 0 && now - s->holder_since_ns >= Ns(timing::kPreReadLease)) {
    ++s->revoked;  // its read start never came back (an I/O error, say)
    return ReleaseLocked(s, now);
  }
  if (ProcessAlive(s->holder_pid, s->holder_pstart)) return -1;
  ++s->dead_holders;
  return ReleaseLocked(s, now);
}

bool MayTakeLocked(XShared* s, int slot, bool upgrade, int64_t now, int32_t me) SC_REQUIRES(s->mu) {
  if (s->holder_pid != 0) return s->holder_pid == me;  // ours already: passes to this handle
  if (upgrade) return true;
  if (s->reserved >= 0) {
    if (s->reserved == slot) return true;
    if (s->slots[s->reserved].state == kWaiting && now < s->reserved_until_ns) return false;
    ++s->claim_lapsed;
    s->reserved = -1;
  }
  const int f = AheadOfLocked(s, slot, now);
  return f < 0 || now - s->slots[f].arrived_ns < s->slots[f].fair_ns;
}

// Grants the turn; returns the release-to-grant time in ns when the grant ends a wait that
// a release ended (-1 otherwise).
int64_t GrantLocked(XShared* s, int slot, bool upgrade, uint64_t ticket, uint64_t tid, int64_t now,
                    int32_t me) SC_REQUIRES(s->mu) {
  if (slot >= 0) FreeSlotLocked(s, slot);
  if (s->holder_pid == me) {  // within the process: a new handle of the same holder
    s->holder_ticket = ticket;
    s->holder_tid = tid;
    return -1;
  }
  const int f = (slot >= 0 && s->reserved == slot) ? -1 : AheadOfLocked(s, slot, now);
  if (f >= 0) {
    ++s->barges;
    const int64_t waited = std::max<int64_t>(0, now - s->slots[f].arrived_ns);
    if (!upgrade || waited < s->slots[f].fair_ns) {
      s->max_overtaken_wait_us = std::max<uint64_t>(s->max_overtaken_wait_us, waited / 1000);
    }
  }
  int64_t r2g = -1;
  if (slot >= 0) {
    ++s->waits;
    if (s->reserved == slot) ++s->handoffs;
    if (s->released_at_ns > s->slots[slot].entered_ns) r2g = now - s->released_at_ns;
  }
  s->reserved = -1;
  ++s->acquisitions;
  s->holder_pid = me;
  s->holder_pstart = SelfStart();
  s->holder_tid = tid;
  s->holder_ticket = ticket;
  s->holder_since_ns = now;
  s->holder_checked_ns = now;
  s->holder_pre_read = 0;
  s->holder_hint.store(me, std::memory_order_relaxed);
  return r2g;
}

// Frees the slots of dead processes among those not awake for kXprocStale (a liveness check
// each, so only the stale ones are looked at), so that they stop counting as waiting.
void SweepLocked(XShared* s, int64_t now) SC_REQUIRES(s->mu) {
  for (int i = 0; i < kSlots; ++i) {
    Slot& u = s->slots[i];
    if (u.state == kWaiting && now - u.seen_ns >= Ns(timing::kXprocStale) &&
        !ProcessAlive(u.pid, u.pstart)) {
      ++s->dead_waiters;
      FreeSlotLocked(s, i);
    }
  }
}

// A free slot for a new waiter (taking back the slot of a dead process if none is free).
int AllocLocked(XShared* s, int64_t now) SC_REQUIRES(s->mu) {
  for (int i = 0; i < kSlots; ++i) {
    if (s->slots[i].state == kFree) return i;
  }
  for (int i = 0; i < kSlots; ++i) {
    Slot& u = s->slots[i];
    if (!Live(u, now) && !ProcessAlive(u.pid, u.pstart)) {
      ++s->dead_waiters;
      FreeSlotLocked(s, i);
      return i;
    }
  }
  return -1;
}

void EnterLocked(XShared* s, int i, uint64_t ticket, uint64_t tid, int64_t fair, int64_t now,
                 int32_t me) SC_REQUIRES(s->mu) {
  Slot& u = s->slots[i];
  u.pid = me;
  u.pstart = SelfStart();
  u.tid = tid;
  u.ticket = ticket;
  u.order = s->next_order++;
  u.arrived_ns = now;
  u.entered_ns = now;
  u.seen_ns = now;
  u.fair_ns = fair;
  u.parked = 0;
  u.state = kWaiting;
  s->waiting_hint.fetch_add(1, std::memory_order_relaxed);
}

// Is slot `i` still the place of `ticket` of this process? (A slot of a process that did not
// run for kXprocStale may have been given to another.)
bool MineLocked(XShared* s, int i, int32_t me, uint64_t ticket) SC_REQUIRES(s->mu) {
  return i >= 0 && i < kSlots && s->slots[i].state == kWaiting && s->slots[i].pid == me &&
         s->slots[i].ticket == ticket;
}

// A waiter leaves the line without the turn. Returns the slot to wake, -1 if none.
int LeaveLocked(XShared* s, int slot, int64_t now) SC_REQUIRES(s->mu) {
  FreeSlotLocked(s, slot);
  if (s->reserved != slot) return -1;
  s->reserved = -1;
  return s->holder_pid == 0 ? OnFreeLocked(s, now) : -1;
}

}  // namespace

bool CrossProcess::LockShared(XShared* s, bool wait) {
  bool died = false;
  const int64_t now = NowNs();
  const bool skip = now < skip_until_ns_.load(std::memory_order_relaxed);
  const std::chrono::nanoseconds limit =
      wait ? std::chrono::nanoseconds(timing::kXprocMutexWait) : std::chrono::nanoseconds(0);
  if (skip || !s->mu.Lock(limit, &died)) {
    // Held by a stopped process (or not at all usable): requests go on without the sidecar
    // for a while instead of each waiting kXprocMutexWait.
    if (!skip && wait) {
      skip_until_ns_.store(NowNs() + Ns(timing::kXprocSkip), std::memory_order_relaxed);
    }
    MutexLock l(&mu_);
    ++unavailable_;
    return false;
  }
  // Every index is checked before use: a process killed inside an update (EOWNERDEAD), or
  // another program writing the file, may have left anything.
  if (died || s->reserved < -1 || s->reserved >= kSlots || s->holder_pid < 0) RepairLocked(s);
  if (died) s->mu.MarkConsistent();
  // A release its process could not make when it was due (the mutex was not available).
  if (const uint64_t owed = s->owed_release.exchange(0, std::memory_order_acq_rel)) {
    if (s->holder_pid == static_cast<int32_t>(owed >> 32) &&
        static_cast<uint32_t>(s->holder_ticket) == static_cast<uint32_t>(owed)) {
      WakeSlot(s, ReleaseLocked(s, NowNs()));
      BumpSeq(s);
    }
  }
  return true;
}

void CrossProcess::Count(bool waited, bool timeout, int64_t wait_ns, int64_t r2g_ns) {
  MutexLock l(&mu_);
  if (waited) {
    ++waits_;
    wait_us_.Add(static_cast<uint64_t>(wait_ns / 1000));
  }
  if (timeout) ++timeouts_;
  if (r2g_ns >= 0) release_to_grant_us_.Add(static_cast<uint64_t>(r2g_ns / 1000));
}

int CrossProcess::TakeKept(uint64_t ticket) {
  if (kept_count_.load(std::memory_order_relaxed) == 0) return -1;
  MutexLock l(&mu_);
  auto it = kept_.find(ticket);
  if (it == kept_.end()) return -1;
  const int slot = it->second;
  kept_.erase(it);
  kept_count_.store(static_cast<int>(kept_.size()), std::memory_order_relaxed);
  return slot;
}

void CrossProcess::Keep(uint64_t ticket, int slot) {
  MutexLock l(&mu_);
  kept_[ticket] = slot;
  kept_count_.store(static_cast<int>(kept_.size()), std::memory_order_relaxed);
}

bool CrossProcess::Engaged() const {
  XShared* s = Shared();
  return s != nullptr && (!Alone(s) || kept_count_.load(std::memory_order_relaxed) != 0);
}

CrossProcess::Grant CrossProcess::TryTake(uint64_t ticket, uint64_t tid, bool upgrade) {
  XShared* s = Shared();
  if (s != nullptr && !Alone(s)) RecountIfIdle(s);
  if (s == nullptr || (Alone(s) && kept_count_.load(std::memory_order_relaxed) == 0)) {
    return Grant::kUnavailable;
  }
  const int32_t me = MyPid();
  int slot = TakeKept(ticket);
  if (!LockShared(s)) {
    if (slot >= 0) Keep(ticket, slot);
    return Grant::kUnavailable;
  }
  const int64_t now = NowNs();
  if (slot >= 0 && !MineLocked(s, slot, me, ticket)) slot = -1;
  const int wake = CheckHolderLocked(s, now, me);
  Grant g = Grant::kRefused;
  int64_t r2g = -1, arrived = now;
  if (MayTakeLocked(s, slot, upgrade, now, me)) {
    if (slot >= 0) arrived = s->slots[slot].entered_ns;
    r2g = GrantLocked(s, slot, upgrade, ticket, tid, now, me);
    g = Grant::kGranted;
  } else if (slot >= 0) {
    s->slots[slot].seen_ns = now;
  }
  s->mu.Unlock();
  WakeSlot(s, wake);
  if (g == Grant::kGranted && slot >= 0) Count(true, false, now - arrived, r2g);
  if (g != Grant::kGranted && slot >= 0) Keep(ticket, slot);
  return g;
}

void CrossProcess::Cancel(uint64_t ticket, bool timed_out) {
  const int slot = TakeKept(ticket);
  XShared* s = Shared();
  if (slot < 0 || s == nullptr || !LockShared(s)) return;  // unlocked: the slot goes stale
  int wake = -1;
  if (MineLocked(s, slot, MyPid(), ticket)) {
    if (timed_out) ++s->timeouts;
    wake = LeaveLocked(s, slot, NowNs());
  }
  s->mu.Unlock();
  WakeSlot(s, wake);
  if (!timed_out) return;
  MutexLock l(&mu_);
  ++timeouts_;
}

CrossProcess::Grant CrossProcess::Take(uint64_t ticket, uint64_t tid, std::chrono::nanoseconds fair,
                                       std::chrono::steady_clock::time_point since,
                                       std::chrono::steady_clock::time_point until,
                                       bool holds_read_lock) {
  XShared* s = Shared();
  if (s != nullptr && !Alone(s)) RecountIfIdle(s);
  if (s == nullptr || (Alone(s) && kept_count_.load(std::memory_order_relaxed) == 0)) {
    return Grant::kUnavailable;
  }
  const int32_t me = MyPid();
  const auto steady_now = std::chrono::steady_clock::now();
  const int64_t base = NowNs();
  const int64_t until_ns =
      base + std::chrono::duration_cast<std::chrono::nanoseconds>(until - steady_now).count();
  const int64_t since_ns =
      base - std::chrono::duration_cast<std::chrono::nanoseconds>(steady_now - since).count();
  int slot = TakeKept(ticket);
  // Looked at outside the mutex (it may read /proc), before each round under it.
  bool yield = holds_read_lock && OtherFileWriter();
  if (!LockShared(s)) {
    if (slot >= 0) Keep(ticket, slot);
    return Grant::kUnavailable;
  }
  int64_t now = NowNs();  // after the mutex: earlier than another's arrival it must not be
  if (slot >= 0 && !MineLocked(s, slot, me, ticket)) slot = -1;
  int wake = CheckHolderLocked(s, now, me);
  if (slot < 0) {
    if (MayTakeLocked(s, -1, false, now, me)) {
      GrantLocked(s, -1, false, ticket, tid, now, me);
      s->mu.Unlock();
      WakeSlot(s, wake);
      return Grant::kGranted;
    }
    if (yield) {
      s->mu.Unlock();
      WakeSlot(s, wake);
      return Grant::kYielded;
    }
    slot = AllocLocked(s, now);
    if (slot < 0) {  // the line is full: this request goes on without it
      s->mu.Unlock();
      WakeSlot(s, wake);
      MutexLock l(&mu_);
      ++unavailable_;
      return Grant::kUnavailable;
    }
    EnterLocked(s, slot, ticket, tid, Ns(fair), now, me);
    // Its clock (and its place: the line is ordered by it) is that of the longest-waiting
    // request it holds up in its own process: one clock per transaction (xproc.h). At most
    // its own bound back: past its bound it is behind every waiter already past theirs (the
    // line stays first-come-first-served among them), and a process with a longer bound
    // cannot put its writers ahead of a waiter of another process for longer than that.
    s->slots[slot].arrived_ns = std::min(now, std::max(since_ns, now - Ns(fair)));
  }
  for (;;) {
    Slot& u = s->slots[slot];
    u.seen_ns = now;
    if (wake == slot) wake = -1;  // that is us
    if (MayTakeLocked(s, slot, false, now, me)) {
      const int64_t entered = u.entered_ns;
      const int64_t r2g = GrantLocked(s, slot, false, ticket, tid, now, me);
      s->mu.Unlock();
      WakeSlot(s, wake);
      Count(true, false, now - entered, r2g);
      return Grant::kGranted;
    }
    if (yield) {
      const int next = LeaveLocked(s, slot, now);
      s->mu.Unlock();
      WakeSlot(s, wake);
      WakeSlot(s, next);
      return Grant::kYielded;
    }
    if (now >= until_ns) {  // keeps its place: Cancel() if the wait gives up
      s->mu.Unlock();
      WakeSlot(s, wake);
      Keep(ticket, slot);
      return Grant::kTimeout;
    }
    const uint32_t seen = s->wake[slot].load(std::memory_order_acquire);
    u.parked = 1;
    s->mu.Unlock();
    WakeSlot(s, wake);
    FutexWait(&s->wake[slot], seen, std::min(until_ns - NowNs(), Ns(timing::kXprocRecheck)));
    yield = holds_read_lock && OtherFileWriter();
    if (!LockShared(s)) {
      Keep(ticket, slot);  // still ours if we come back before it goes stale
      return Grant::kUnavailable;
    }
    now = NowNs();
    if (MineLocked(s, slot, me, ticket)) s->slots[slot].parked = 0;
    SweepLocked(s, now);
    if (!MineLocked(s, slot, me, ticket)) {
      // Taken back while this thread did not run for kXprocStale (a stopped process): again,
      // at the back of the line.
      slot = AllocLocked(s, now);
      if (slot < 0) {
        s->mu.Unlock();
        return Grant::kUnavailable;
      }
      EnterLocked(s, slot, ticket, tid, Ns(fair), now, me);
    }
    wake = CheckHolderLocked(s, now, me);
  }
}

void CrossProcess::Release(uint64_t ticket) {
  XShared* s = Shared();
  if (s == nullptr) return;
  Cancel(ticket);  // a place kept in line, if any
  const int32_t me = MyPid();
  // Cheap look first: most releases of a handle that never took the shared turn.
  if (s->holder_hint.load(std::memory_order_relaxed) != me) return;
  if (!LockShared(s)) {
    // The mutex is held by a stopped process: the release is left in the sidecar for the next
    // process that gets the mutex (LockShared), so the turn does not stay with this one.
    s->owed_release.store(
        (static_cast<uint64_t>(static_cast<uint32_t>(me)) << 32) | static_cast<uint32_t>(ticket),
        std::memory_order_release);
    return;
  }
  int wake = -1;
  if (s->holder_pid == me && s->holder_ticket == ticket) wake = ReleaseLocked(s, NowNs());
  s->mu.Unlock();
  WakeSlot(s, wake);
  BumpSeq(s);
}

bool CrossProcess::MarkPreRead(uint64_t ticket) {
  XShared* s = Shared();
  if (s == nullptr || !LockShared(s)) return false;
  const bool mine = s->holder_pid == MyPid() && s->holder_ticket == ticket;
  if (mine) {
    s->holder_pre_read = 1;
    s->holder_since_ns = NowNs();
  }
  s->mu.Unlock();
  return mine;
}

bool CrossProcess::ReadStarted(uint64_t ticket) {
  XShared* s = Shared();
  if (s == nullptr) return true;
  if (!LockShared(s)) return true;  // not revocable meanwhile either: nobody got the mutex
  const bool mine = s->holder_pid == MyPid() && s->holder_ticket == ticket;
  if (mine) s->holder_pre_read = 0;
  s->mu.Unlock();
  return mine;
}

bool CrossProcess::Contended() const {
  XShared* s = Shared();
  if (s == nullptr) return false;
  const int32_t h = s->holder_hint.load(std::memory_order_relaxed);
  return (h != 0 && h != MyPid()) || s->waiting_hint.load(std::memory_order_relaxed) > 0;
}

void CrossProcess::NoteFileWriter(uint64_t ticket, bool held) {
  XShared* s = Shared();
  if (s == nullptr) return;
  const uint64_t me =
      (static_cast<uint64_t>(static_cast<uint32_t>(MyPid())) << 32) | static_cast<uint32_t>(ticket);
  if (held) {
    s->file_writer_start.store(MyStart(), std::memory_order_relaxed);
    s->file_writer.store(me, std::memory_order_release);
  } else {
    // Only its own mark: a mark of a dead process's handle cleared meanwhile, and another
    // handle's set since (it holds RESERVED now), stay.
    uint64_t expected = me;
    s->file_writer.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
  }
}

bool CrossProcess::MarkedByOther() const {
  XShared* s = Shared();
  if (s == nullptr) return false;
  const uint64_t w = s->file_writer.load(std::memory_order_acquire);
  return w != 0 && static_cast<int32_t>(w >> 32) != MyPid();
}

bool CrossProcess::OtherFileWriter() {
  XShared* s = Shared();
  if (s == nullptr) return false;
  uint64_t w = s->file_writer.load(std::memory_order_acquire);
  const int32_t pid = static_cast<int32_t>(w >> 32);
  if (w == 0 || pid == MyPid()) return false;
  const uint64_t start = s->file_writer_start.load(std::memory_order_acquire);
  // The start time, trusted only if the mark did not change around its read (0: only the pid
  // is checked). Not a proof that it is this mark's (the stores are not one atomic step), but
  // a mismatch needs a new mark within the read, and a wrong answer costs one yield or one
  // wait of kXprocRecheck, never a lost mark: the compare-and-swap below clears only `w`.
  const bool same = s->file_writer.load(std::memory_order_acquire) == w;
  if (ProcessAlive(pid, same ? start : 0)) return true;
  // Killed while holding its lock: its locks went with it.
  s->file_writer.compare_exchange_strong(w, 0, std::memory_order_acq_rel);
  return false;
}

uint32_t CrossProcess::Seq() const {
  XShared* s = Shared();
  return s == nullptr ? 0 : s->seq.load(std::memory_order_seq_cst);
}

void CrossProcess::WaitForChange(uint32_t seq, std::chrono::steady_clock::time_point until) {
  XShared* s = Shared();
  const auto left = until - std::chrono::steady_clock::now();
  if (s == nullptr) {
    if (left > left.zero()) std::this_thread::sleep_for(left);
    return;
  }
  s->seq_waiters.fetch_add(1, std::memory_order_seq_cst);
  if (s->seq.load(std::memory_order_seq_cst) == seq) {
    FutexWait(&s->seq, seq, std::chrono::duration_cast<std::chrono::nanoseconds>(left).count());
  }
  s->seq_waiters.fetch_sub(1, std::memory_order_seq_cst);
}

void CrossProcess::NotifyChange() {
  // Only when someone waits: a waiter that registers just after this look sleeps at most its
  // poll step, as without the sidecar.
  XShared* s = Shared();
  if (s != nullptr && s->seq_waiters.load(std::memory_order_seq_cst) > 0) BumpSeq(s);
}

bool CrossProcess::OtherHolder(int32_t* pid, uint64_t* tid, int64_t* held_ms) {
  XShared* s = Shared();
  if (s == nullptr || !LockShared(s, /*wait=*/false)) return false;
  const bool other = s->holder_pid != 0 && s->holder_pid != MyPid();
  if (other) {
    *pid = s->holder_pid;
    *tid = s->holder_tid;
    *held_ms = (NowNs() - s->holder_since_ns) / 1000000;
  }
  s->mu.Unlock();
  return other;
}

}  // namespace safeconc
