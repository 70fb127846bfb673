// coordinator_unit_test.cc - the write-turn queue and its state machine, driven directly
// through vfs/coordinator.h (no SQLite in the loop): FIFO grants, places kept across a
// refusal, leases for vanished waiters, same-thread deadlock, timeouts, close.
#include "vfs/coordinator.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "vfs/histogram.h"
#include "vfs/json.h"

namespace safeconc {
namespace {

using std::chrono::milliseconds;

struct Fixture {
  std::shared_ptr<Coordinator> c = std::make_shared<Coordinator>();
  std::vector<std::unique_ptr<Ticket>> tickets;
  Ticket* New() {
    tickets.push_back(std::make_unique<Ticket>(c, tickets.size() + 1));
    return tickets.back().get();
  }
  int64_t Queued() { return c->Blocker().queued; }
  std::string Stats() {
    JsonWriter w;
    c->WriteJson(w);
    return w.str();
  }
  // Crude field read from the stats JSON ("name":123).
  int64_t Stat(const std::string& name) {
    const std::string s = Stats();
    const size_t at = s.find("\"" + name + "\":");
    return at == std::string::npos ? -1 : std::stoll(s.substr(at + name.size() + 3));
  }
};

Clock::time_point In(milliseconds d) { return Clock::now() + d; }

void WaitUntil(const std::function<bool()>& cond) {
  while (!cond()) std::this_thread::yield();
}

// Waiters are granted in the order they arrived, whatever order the OS wakes threads in.
// Would catch a notify_all/"first to wake wins" queue.
TEST(CoordinatorQueue, GrantsInArrivalOrder) {
  Fixture f;
  Ticket* holder = f.New();
  ASSERT_EQ(f.c->AcquireTurn(holder, false, true, In(milliseconds(0)), 1),
            Coordinator::Grant::kGranted);
  constexpr int kWaiters = 8;
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    Ticket* t = f.New();
    threads.emplace_back([&, t, i] {
      auto g = f.c->AcquireTurn(t, /*may_wait=*/true, true, In(milliseconds(60000)), 100 + i);
      ASSERT_EQ(g, Coordinator::Grant::kGranted);
      {
        std::lock_guard<std::mutex> l(mu);
        order.push_back(i);
      }
      f.c->ReleaseTurn(t);
    });
    WaitUntil([&] { return f.Queued() == i + 1; });  // arrival order is i
  }
  f.c->ReleaseTurn(holder);
  for (auto& th : threads) th.join();
  std::vector<int> expected(kWaiters);
  for (int i = 0; i < kWaiters; ++i) expected[i] = i;
  EXPECT_EQ(order, expected);
  EXPECT_EQ(f.Stat("overtakes"), 0);
  EXPECT_EQ(f.Stat("waits"), kWaiters);
}

// A request refused where it may not wait keeps its place while its owner is in the busy
// handler; a later arrival that may wait is not served first. Would catch an overtake on
// the retry path (the request leaving the queue when SQLITE_BUSY is returned).
TEST(CoordinatorQueue, RefusedRequestKeepsItsPlace) {
  Fixture f;
  Ticket *holder = f.New(), *refused = f.New(), *later = f.New();
  ASSERT_EQ(f.c->AcquireTurn(holder, false, true, In(milliseconds(0)), 1),
            Coordinator::Grant::kGranted);
  ASSERT_EQ(f.c->AcquireTurn(refused, /*may_wait=*/false, true, In(milliseconds(0)), 2),
            Coordinator::Grant::kQueued);
  std::atomic<bool> later_granted{false};
  std::thread th([&] {
    EXPECT_EQ(f.c->AcquireTurn(later, true, true, In(milliseconds(60000)), 3),
              Coordinator::Grant::kGranted);
    later_granted = true;
    f.c->ReleaseTurn(later);
  });
  WaitUntil([&] { return f.Queued() == 2; });
  f.c->ReleaseTurn(holder);
  // The busy handler's wait: it is `refused`'s turn, not `later`'s.
  EXPECT_EQ(f.c->WaitForTurn(refused, In(milliseconds(60000)), true),
            Coordinator::TurnWait::kReady);
  EXPECT_FALSE(later_granted.load());
  EXPECT_EQ(f.c->AcquireTurn(refused, false, true, In(milliseconds(0)), 2),
            Coordinator::Grant::kGranted);
  f.c->ReleaseTurn(refused);
  th.join();
  EXPECT_TRUE(later_granted.load());
  EXPECT_EQ(f.Stat("overtakes"), 0);
}

// A refused request whose owner never comes back (SQLite failed it at once) does not block
// the queue for longer than its lease, and is not counted as overtaken. Would catch a
// queue that stalls forever behind a vanished waiter.
TEST(CoordinatorQueue, VanishedWaiterIsPassedAfterLease) {
  Fixture f;
  Ticket *holder = f.New(), *vanished = f.New(), *waiter = f.New();
  ASSERT_EQ(f.c->AcquireTurn(holder, false, true, In(milliseconds(0)), 1),
            Coordinator::Grant::kGranted);
  ASSERT_EQ(f.c->AcquireTurn(vanished, false, /*confirmed=*/false, In(milliseconds(0)), 2),
            Coordinator::Grant::kQueued);
  Clock::duration waited{};
  std::thread th([&] {
    const Clock::time_point start = Clock::now();
    EXPECT_EQ(f.c->AcquireTurn(waiter, true, true, In(milliseconds(4000)), 3),
              Coordinator::Grant::kGranted);
    waited = Clock::now() - start;
    f.c->ReleaseTurn(waiter);
  });
  WaitUntil([&] { return f.Queued() == 2; });
  f.c->ReleaseTurn(holder);
  th.join();
  // Passed when the 100 ms lease ran out, not at the waiter's own 4 s deadline (which would
  // mean nobody watched the lease). 3 s: a generous bound for a loaded machine.
  EXPECT_LT(waited, milliseconds(3000));
  EXPECT_EQ(f.Stat("lease_expired"), 1);
  EXPECT_EQ(f.Stat("overtakes"), 0);
  // Had it been waiting after all (it confirms late), the pass is an overtake and counted.
  EXPECT_EQ(f.c->WaitForTurn(vanished, In(milliseconds(60000)), true),
            Coordinator::TurnWait::kReady);
  EXPECT_EQ(f.Stat("overtakes"), 1);
  f.c->Cancel(vanished, Coordinator::CancelWhy::kGaveUp);
}

// Asking for the turn on the thread that already holds it through another handle fails at
// once instead of waiting for itself. Would catch a wait that can only end in a timeout.
TEST(CoordinatorQueue, SameThreadRequestIsSelfDeadlock) {
  Fixture f;
  Ticket *a = f.New(), *b = f.New();
  ASSERT_EQ(f.c->AcquireTurn(a, false, true, In(milliseconds(0)), 42),
            Coordinator::Grant::kGranted);
  const Clock::time_point start = Clock::now();
  EXPECT_EQ(f.c->AcquireTurn(b, true, true, In(milliseconds(60000)), 42),
            Coordinator::Grant::kSelfDeadlock);
  EXPECT_LT(Clock::now() - start, milliseconds(30000));  // did not wait for the deadline
  EXPECT_EQ(f.Stat("self_deadlocks"), 1);
  EXPECT_EQ(f.Queued(), 0);
}

// A waiter gives up at its deadline and leaves the line; the next one is still served.
TEST(CoordinatorQueue, TimeoutLeavesTheLine) {
  Fixture f;
  Ticket *holder = f.New(), *impatient = f.New(), *next = f.New();
  ASSERT_EQ(f.c->AcquireTurn(holder, false, true, In(milliseconds(0)), 1),
            Coordinator::Grant::kGranted);
  EXPECT_EQ(f.c->AcquireTurn(impatient, true, true, In(milliseconds(20)), 2),
            Coordinator::Grant::kTimeout);
  EXPECT_EQ(f.Stat("timeouts"), 1);
  EXPECT_EQ(f.Queued(), 0);
  ASSERT_EQ(f.c->AcquireTurn(next, false, true, In(milliseconds(0)), 3),
            Coordinator::Grant::kQueued);
  f.c->ReleaseTurn(holder);
  EXPECT_EQ(f.c->WaitForTurn(next, In(milliseconds(60000)), true), Coordinator::TurnWait::kReady);
}

// Closing a handle takes it out of the line and gives back a turn it still held, waking the
// next waiter. Would catch a closed connection blocking the database forever.
TEST(CoordinatorQueue, CloseLeavesTheLineAndFreesTheTurn) {
  Fixture f;
  Ticket *holder = f.New(), *queued = f.New(), *next = f.New();
  ASSERT_EQ(f.c->AcquireTurn(holder, false, true, In(milliseconds(0)), 1),
            Coordinator::Grant::kGranted);
  ASSERT_EQ(f.c->AcquireTurn(queued, false, true, In(milliseconds(0)), 2),
            Coordinator::Grant::kQueued);
  ASSERT_EQ(f.c->AcquireTurn(next, false, true, In(milliseconds(0)), 3),
            Coordinator::Grant::kQueued);
  f.c->Close(queued);
  f.c->Close(holder);
  EXPECT_EQ(f.c->WaitForTurn(next, In(milliseconds(60000)), true), Coordinator::TurnWait::kReady);
  EXPECT_EQ(f.c->WaitForTurn(queued, In(milliseconds(0)), true), Coordinator::TurnWait::kNotQueued);
}

// The holder yielding after a refusal by another process stays first in line.
TEST(CoordinatorQueue, YieldKeepsFirstPlace) {
  Fixture f;
  Ticket *a = f.New(), *b = f.New();
  ASSERT_EQ(f.c->AcquireTurn(a, false, true, In(milliseconds(0)), 1), Coordinator::Grant::kGranted);
  f.c->YieldTurnKeepPlace(a);
  EXPECT_EQ(f.c->AcquireTurn(b, false, true, In(milliseconds(0)), 2), Coordinator::Grant::kQueued);
  EXPECT_EQ(f.c->AcquireTurn(a, false, true, In(milliseconds(0)), 1), Coordinator::Grant::kGranted);
  EXPECT_EQ(f.Stat("cross_process_busy"), 1);
}

// Percentiles come out of the right buckets (upper bounds within ~25%).
TEST(Histogram, PercentilesAndMax) {
  Histogram h;
  for (uint64_t v = 1; v <= 1000; ++v) h.Add(v);
  EXPECT_EQ(h.count(), 1000u);
  EXPECT_EQ(h.max(), 1000u);
  EXPECT_GE(h.Percentile(50), 500u);
  EXPECT_LE(h.Percentile(50), 625u);
  EXPECT_GE(h.Percentile(99), 990u);
  EXPECT_LE(h.Percentile(99), 1000u);
  Histogram empty;
  EXPECT_EQ(empty.Percentile(50), 0u);
}

}  // namespace
}  // namespace safeconc
