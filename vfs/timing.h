// timing.h - every timing constant of the lock coordinator in one place, each with the
// reason or the measurement behind it, and the fairness policy they implement.
//
// Fairness (eventual fairness, as Go's sync.Mutex and parking_lot): the write turn is a lock
// with a FIFO line of waiters. While the waiter at the front of the line has waited less than
// its connection's safeconc_fair_ms, the turn may be taken by whoever asks when it is free:
// the writer that just released it (it runs its next transaction on a warm page cache) or a
// newcomer. A release then wakes the front waiter, which competes for the turn and parks
// again if it lost. Once the front waiter has waited safeconc_fair_ms, the next release hands
// the turn to it (a reservation nobody else may take) and every other request queues behind
// it, so no waiter that the coordinator can wake is overtaken after safeconc_fair_ms (plus the
// length of the transaction that was running when it crossed the bound). safeconc_fair_ms=0
// is a hand-off on every release: strict FIFO.
//
// Exceptions, each so that loading the extension never fails what stock SQLite would serve:
//  - A read transaction that asks to write (SQLite does not retry it) gets the turn whenever
//    it is free, whoever waits: stock SQLite grants it whenever no one holds the write lock.
//    Held for a write SQLite retries (a writing statement not yet at its write lock), it asks
//    the base lock itself (Coordinator::GoPastHolder).
//  - A waiter that is not inside the coordinator when the turn is released (its binding's
//    busy handler sleeps without going through the VFS, or has given up) cannot be woken, so
//    it is not reserved for; it keeps its place in line and is reserved for again as soon as
//    it waits in the coordinator.
//
// The default safeconc_fair_ms (knobs.h: 5 ms, the contract's upper limit) is the best of the
// bench sweep (0, 1, 2, 5 ms): 16 WAL writers 0.15x, 0.27x, 0.38x, 0.52x an application
// mutex, with the worst case 12-14 ms at 1-5 ms against the mutex's 430 ms. A line deeper
// than fair_ms / (one transaction) is first-come-first-served whatever the knob.
//
// Why barging, measured with bench_locks on this project's 2-core machine: strict FIFO paid a
// context switch and a page-cache reload (another connection's cache, invalidated by the last
// commit) per transaction and reached 0.27-0.87x an application mutex; the mutex retakes the
// lock on a warm cache but lets waiters starve for ~1 s. See docs/architecture.md, "Measuring",
// and the safeconc_fair_ms sweep printed by `make bench` for the trade-off.
#ifndef SAFECONC_VFS_TIMING_H
#define SAFECONC_VFS_TIMING_H

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace safeconc {
namespace timing {

using std::chrono::microseconds;
using std::chrono::milliseconds;

// How long a turn reserved for a woken waiter stays reserved while that waiter is on its way
// back (it returns from the busy handler through SQLite, which retries the lock). Normally
// microseconds; on a loaded 2-core machine a woken thread can wait a few scheduler slices
// (~4 ms each) before it runs. Past this, the reservation lapses and the turn is free again:
// the cost of a waiter that never comes back (its lock retry failed for another reason).
constexpr milliseconds kClaimLease{20};

// A turn taken before a WAL read start whose read mark is not held yet: if that read start
// fails (an I/O error, say), SQLite may never call this handle again to give the turn back.
// Waiters revoke such a turn after this long. A read start takes microseconds; the bound only
// has to outlast a preempted one.
constexpr milliseconds kPreReadLease{250};

// A queued ticket whose owner has not waited in the coordinator for this long has left (its
// binding's handler gave up, or sleeps outside the VFS): its next request is a new arrival,
// at the back of the line, not a retry keeping an old place. SQLite's default busy handler
// sleeps at most 100 ms per step, always through the VFS xSleep.
constexpr milliseconds kStaleTicket{250};

// Waiting at a safe point inside a lock call for an in-process holder: the holder's release
// wakes the waiter; it also re-checks this often in case the holder is in another process.
constexpr milliseconds kInProcessRecheck{50};

// Polling a lock held by another process (no wake-up can come from there): 1, 2, 4, 8, then
// every 10 ms, the same steps for the in-lock wait, the busy handler and its fallback.
constexpr milliseconds kPollMax{10};
inline milliseconds PollStep(int polls) {
  return milliseconds(std::min<int64_t>(int64_t{1} << (polls < 4 ? polls : 4), kPollMax.count()));
}

// A WAL WRITE refused by the base while this connection holds the turn: wal.c's recovery check
// takes WRITE for microseconds and waits for nobody. Retried with these sleeps (10 us doubling
// to 5.12 ms, ~10 ms in all) before the refusal is reported; only for a turn held from before
// or a write SQLite retries (not a read transaction's first write, nor rollback RESERVED:
// see BaseForTurnHolder and WriteStart in lock_paths.cc).
constexpr microseconds kBaseRetryFirst{10};
constexpr microseconds kBaseRetryLast{5120};

// After a refusal that retrying cannot cure, a sleep on the same thread within this window is
// SQLite's busy handler sleeping for it: it returns at once so the handler gives up quickly.
constexpr milliseconds kFinalSleepWindow{100};

// ---- Across processes (vfs/xproc.h) ------------------------------------------------------

// A waiter in the shared line wakes at least this often (a release anywhere wakes it at
// once): it refreshes its slot and checks that the holder's process is still alive, so a
// holder killed with SIGKILL costs the others at most about this long.
constexpr milliseconds kXprocRecheck{25};

// A slot whose waiter has not been awake for this long (a stopped or killed process) is
// skipped in the line; a dead one is freed.
constexpr milliseconds kXprocStale{250};

// Longest wait for the sidecar's mutex. It is held for microseconds; past this, its holder is
// stopped (SIGSTOP, a debugger) and the request goes on without the sidecar, as stock SQLite
// would: the sidecar may change order and wake-ups, never make anything wait longer.
constexpr milliseconds kXprocMutexWait{50};
// After such a wait, requests of this process go without the sidecar for this long before
// trying its mutex again.
constexpr milliseconds kXprocSkip{250};

// A process killed while attached never counts itself out of the sidecar's `attached`. A
// process that finds no other holding or waiting asks the kernel, at most this often, whether
// any other process still holds the attach lock; if none does, it is alone again, and its
// lock path skips the shared turn as before the other came.
constexpr milliseconds kXprocRecount{1000};

}  // namespace timing
}  // namespace safeconc

#endif  // SAFECONC_VFS_TIMING_H
