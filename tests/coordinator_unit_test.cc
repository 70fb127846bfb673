// coordinator_unit_test.cc - the write turn's line and its fairness policy, driven directly
// through vfs/coordinator.h (no SQLite in the loop): strict FIFO at safeconc_fair_ms=0,
// barging within the bound, the hand-off past it, upgrades, lapsed reservations, timeouts,
// close, and threads that are not owners.
#include "vfs/coordinator.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/histogram.h"
#include "base/json.h"

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

using Ask = Coordinator::Ask;
using Grant = Coordinator::Grant;
using Deferral = Coordinator::Deferral;
constexpr Clock::duration kFifo = milliseconds(0);
constexpr Clock::duration kNeverFair = milliseconds(600000);

// Takes the free turn for t (the test's setup step).
void Take(Fixture& f, Ticket* t, uint64_t tid) {
  ASSERT_EQ(f.c->TryTurn(t, Ask::kWrite, tid, kFifo, /*queue=*/false), Grant::kGranted);
}

// `vanished` queues behind the holder and waits in the busy handler's way (WaitForTurn); the
// returned thread ends when the turn may be its, and it never comes back to claim it.
std::thread VanishingWaiter(Fixture& f, Ticket* vanished) {
  EXPECT_EQ(f.c->TryTurn(vanished, Ask::kWrite, 2, kFifo, /*queue=*/true), Grant::kQueued);
  std::thread gone([&f, vanished] {
    EXPECT_EQ(f.c->WaitForTurn(vanished, In(milliseconds(60000))), Coordinator::TurnWait::kReady);
  });
  WaitUntil([&] { return f.c->Rest().parked == 1; });
  return gone;
}

// With safeconc_fair_ms=0 every release hands the turn to the front waiter: grants follow
// arrival order whatever order the OS wakes threads in, and nothing barges. Would catch a
// notify_all/"first to wake wins" line, or barging when the knob says FIFO.
TEST(CoordinatorLine, FairZeroIsStrictFifo) {
  Fixture f;
  Ticket* holder = f.New();
  Take(f, holder, 1);
  constexpr int kWaiters = 8;
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    Ticket* t = f.New();
    threads.emplace_back([&, t, i] {
      ASSERT_EQ(f.c->AcquireTurn(t, In(milliseconds(60000)), 100 + i, kFifo), Grant::kGranted);
      {
        std::lock_guard<std::mutex> l(mu);
        order.push_back(i);
      }
      f.c->ReleaseTurn(t);
    });
    WaitUntil([&] { return f.c->Rest().parked == i + 1; });  // arrival order is i
  }
  f.c->ReleaseTurn(holder);
  for (auto& th : threads) th.join();
  std::vector<int> expected(kWaiters);
  for (int i = 0; i < kWaiters; ++i) expected[i] = i;
  EXPECT_EQ(order, expected);
  EXPECT_EQ(f.Stat("barges"), 0);
  EXPECT_EQ(f.Stat("handoffs"), kWaiters);
  EXPECT_EQ(f.Stat("waits"), kWaiters);
}

// Runs the calling thread on `cpu` only; with `idle`, also in SCHED_IDLE, so that when woken
// it never preempts a normal thread on that CPU. Returns false where the system refuses.
bool PinThread(int cpu, bool idle) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0) return false;
  if (!idle) return true;
  sched_param param{};
  return pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) == 0;
}

// Within the bound, a running writer retakes the turn it just released ahead of a waiter (a
// warm cache, no context switch); the waiter is woken and gets it when the writer stops.
// Would catch a coordinator that still hands off on every release.
//
// Whether the woken waiter or the writer gets to the turn first is up to the scheduler (on a
// loaded machine the freshly woken waiter often preempts the writer). To make the writer's
// retake the likely outcome, both run on one CPU and the waiter in SCHED_IDLE, which never
// preempts the writer: the waiter runs when the writer sleeps. Where pinning is refused, the
// attempts are plain races, repeated.
TEST(CoordinatorLine, RunningWriterBargesWithinTheBound) {
  Fixture f;
  Ticket *writer = f.New(), *waiter = f.New();
  cpu_set_t saved;
  const bool have_saved = pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) == 0;
  int cpu = -1;
  for (int i = 0; have_saved && i < CPU_SETSIZE && cpu < 0; ++i) {
    if (CPU_ISSET(i, &saved)) cpu = i;
  }
  const bool pinned = cpu >= 0 && PinThread(cpu, /*idle=*/false);
  // Lets an idle-class waiter run (a yield might not).
  auto sleep_until = [](const std::function<bool()>& cond) {
    while (!cond()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  };
  int retaken = 0;
  // Each attempt: the writer holds the turn, a waiter parks behind it, and the writer releases
  // and retakes while the waiter is parked. Retakes until the woken waiter happens to be
  // quicker (also allowed); a new attempt if that happened before any retake.
  for (int attempt = 0; attempt < 200 && f.Stat("barges") == 0; ++attempt) {
    Take(f, writer, 1);
    std::atomic<bool> waiter_done{false};
    std::thread th([&] {
      if (pinned) PinThread(cpu, /*idle=*/true);
      EXPECT_EQ(f.c->AcquireTurn(waiter, In(milliseconds(60000)), 2, kNeverFair), Grant::kGranted);
      f.c->ReleaseTurn(waiter);
      waiter_done = true;
    });
    for (int i = 0; i < 100; ++i) {
      sleep_until([&] { return f.c->Rest().parked == 1 || waiter_done.load(); });
      const bool waiter_gone = waiter_done.load();  // it took the turn and left meanwhile
      f.c->ReleaseTurn(writer);
      if (waiter_gone ||
          f.c->TryTurn(writer, Ask::kWrite, 1, kNeverFair, /*queue=*/false) != Grant::kGranted) {
        break;
      }
      ++retaken;
      if (i == 99) f.c->ReleaseTurn(writer);
    }
    th.join();
    f.c->ReleaseTurn(writer);  // if the last retake came after the waiter left
  }
  if (have_saved) pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
  // A retake that passed the parked waiter is a barge, with that waiter's wait recorded. (A
  // retake after the woken waiter took the turn and left is not one.)
  EXPECT_GT(f.Stat("barges"), 0) << "pinned: " << pinned;
  EXPECT_LE(f.Stat("barges"), retaken);
  EXPECT_GE(f.Stat("max_overtaken_wait_us"), 0);
  EXPECT_LT(f.Stat("max_overtaken_wait_us"), 600000000);
}

// Once the front waiter has waited its bound, the release reserves the turn for it: the
// releasing writer cannot retake it, the waiter gets it (a hand-off). Would catch starvation.
TEST(CoordinatorLine, WaiterPastItsBoundGetsTheHandoff) {
  Fixture f;
  Ticket *writer = f.New(), *waiter = f.New();
  Take(f, writer, 1);
  std::atomic<bool> granted{false}, done{false};
  std::thread th([&] {
    EXPECT_EQ(f.c->AcquireTurn(waiter, In(milliseconds(60000)), 2, milliseconds(1)),
              Grant::kGranted);
    granted = true;
    WaitUntil([&] { return done.load(); });  // holds the turn until the writer tried
    f.c->ReleaseTurn(waiter);
  });
  WaitUntil([&] { return f.c->Rest().parked == 1; });
  std::this_thread::sleep_for(milliseconds(5));  // the waiter passes its 1 ms bound
  f.c->ReleaseTurn(writer);
  // Reserved for the waiter, or already its: either way not the writer's.
  EXPECT_NE(f.c->TryTurn(writer, Ask::kWrite, 1, kNeverFair, /*queue=*/false), Grant::kGranted);
  done = true;
  th.join();
  EXPECT_TRUE(granted.load());
  EXPECT_EQ(f.Stat("handoffs"), 1);
  EXPECT_EQ(f.Stat("barges"), 0);
}

// A read transaction that asks to write takes any free turn, even one reserved for a waiter
// (stock SQLite grants a free write lock whoever waits). Would catch more upgrade failures
// than stock.
TEST(CoordinatorLine, UpgradeTakesAFreeTurnWhoeverWaits) {
  Fixture f;
  Ticket *writer = f.New(), *waiter = f.New(), *upgrader = f.New();
  Take(f, writer, 1);
  ASSERT_EQ(f.c->TryTurn(waiter, Ask::kWrite, 2, kFifo, /*queue=*/true), Grant::kQueued);
  std::atomic<int> stage{0};
  std::thread th([&] {  // the busy handler's side of the waiter
    EXPECT_EQ(f.c->WaitForTurn(waiter, In(milliseconds(60000))), Coordinator::TurnWait::kReady);
    stage = 1;
    WaitUntil([&] { return stage.load() == 2; });
    // Its retry: the upgrader holds the turn now; it queues again, keeping its place.
    EXPECT_EQ(f.c->TryTurn(waiter, Ask::kWrite, 2, kFifo, /*queue=*/true), Grant::kQueued);
    EXPECT_EQ(f.c->WaitForTurn(waiter, In(milliseconds(60000))), Coordinator::TurnWait::kReady);
    EXPECT_EQ(f.c->TryTurn(waiter, Ask::kWrite, 2, kFifo, /*queue=*/true), Grant::kGranted);
    f.c->ReleaseTurn(waiter);
  });
  WaitUntil([&] { return f.c->Rest().parked == 1; });
  f.c->ReleaseTurn(writer);  // reserved for the waiter (fair = 0)
  WaitUntil([&] { return stage.load() == 1; });
  EXPECT_TRUE(f.c->Rest().reserved);
  EXPECT_EQ(f.c->TryTurn(upgrader, Ask::kUpgrade, 3, kFifo, /*queue=*/false), Grant::kGranted);
  EXPECT_EQ(f.Stat("upgrade_barges"), 1);
  stage = 2;
  WaitUntil([&] { return f.c->Rest().parked == 1; });
  f.c->ReleaseTurn(upgrader);
  th.join();
  EXPECT_FALSE(f.c->Rest().held);
}

// Threads are not owners: a request on the thread the holder was last used on waits like any
// other (a thread pool may finish the holder's transaction elsewhere), and the coordinator
// reports the thread. Would catch the old same-thread refusal.
TEST(CoordinatorLine, SameThreadWaitsAndIsReported) {
  Fixture f;
  Ticket *a = f.New(), *b = f.New();
  a->last_tid = 42;
  Take(f, a, 42);
  EXPECT_TRUE(f.c->HolderLastOnThread(b, 42));
  EXPECT_FALSE(f.c->HolderLastOnThread(a, 42));
  std::thread other([&] {  // another thread finishes a's transaction
    WaitUntil([&] { return f.c->Rest().parked == 1; });
    f.c->ReleaseTurn(a);
  });
  EXPECT_EQ(f.c->AcquireTurn(b, In(milliseconds(60000)), 42, kFifo), Grant::kGranted);
  other.join();
  f.c->ReleaseTurn(b);
}

// An upgrade (never retried by SQLite) may ask the base itself past a holder that took the
// turn for a write SQLite retries, never past one that protects a read-then-write, nor past
// itself or a free turn, nor while another pass is under way. Until the pass ends nobody else
// is granted the turn, the holder's release notwithstanding: the base write lock may be the
// upgrade's (a safeconc_txn=immediate read-then-write granted the turn then failed at its
// write, found in review). Would catch the flag ignored, or the turn granted during a pass.
TEST(CoordinatorLine, UpgradeGoesPastOnlyAHolderWhoseWriteIsRetried) {
  Fixture f;
  Ticket *holder = f.New(), *upgrader = f.New(), *other = f.New(), *third = f.New();
  EXPECT_FALSE(f.c->GoPastHolder(upgrader));  // free turn: it would simply take it
  holder->write_retried = false;              // safeconc_txn=immediate: a read-then-write's
  Take(f, holder, 1);
  EXPECT_FALSE(f.c->GoPastHolder(upgrader));
  f.c->ReleaseTurn(holder);
  holder->write_retried = true;  // a writing statement's turn
  Take(f, holder, 1);
  EXPECT_FALSE(f.c->GoPastHolder(holder));  // not past itself
  ASSERT_TRUE(f.c->GoPastHolder(upgrader));
  EXPECT_FALSE(f.c->GoPastHolder(third));  // one pass at a time
  f.c->ReleaseTurn(holder);                // refused by the base, the holder gave up its turn
  EXPECT_NE(f.c->TryTurn(other, Ask::kWrite, 2, kFifo, /*queue=*/false), Grant::kGranted);
  EXPECT_NE(f.c->TryTurn(third, Ask::kUpgrade, 3, kFifo, /*queue=*/false), Grant::kGranted);
  EXPECT_TRUE(f.c->Contended());
  EXPECT_TRUE(f.c->Rest().passing);
  // Only the upgrade's connection can end the pass: a request on the thread it was last used
  // on must not wait for it (it would wait for itself; found in review).
  upgrader->last_tid = 7;
  EXPECT_TRUE(f.c->HolderLastOnThread(other, 7));
  EXPECT_FALSE(f.c->HolderLastOnThread(upgrader, 7));
  f.c->EndPast(upgrader);  // its write lock released
  EXPECT_FALSE(f.c->Rest().passing);
  EXPECT_FALSE(f.c->HolderLastOnThread(other, 7));
  EXPECT_EQ(f.c->TryTurn(other, Ask::kWrite, 2, kFifo, /*queue=*/false), Grant::kGranted);
  f.c->ReleaseTurn(other);
}

// Rollback mode: a writer about to take its write lock for a write SQLite retries defers to the
// explicit read transactions of other connections (DeferToReadTxns), until they end, one of
// them goes past it to write, or its bound. Would catch a writer that waits for autocommit
// reads, for itself, for a reader last used on its own thread (it would wait for itself), for
// read transactions begun after it came, or that goes on waiting after a pass or a reader's
// end.
TEST(CoordinatorLine, WriterDefersToReadTransactionsUntilTheyEndOrWrite) {
  Fixture f;
  Ticket *writer = f.New(), *txn = f.New(), *autocommit = f.New(), *third = f.New(),
         *other = f.New();
  const Clock::time_point never = In(milliseconds(600000));
  EXPECT_FALSE(f.c->ReadTxnsOpen());
  EXPECT_EQ(Deferral::kNone, f.c->DeferToReadTxns(writer, 1, never));  // no reader at all
  f.c->ReaderEnter(autocommit);  // an autocommit SELECT's read
  EXPECT_FALSE(f.c->ReadTxnsOpen());
  EXPECT_EQ(Deferral::kNone, f.c->DeferToReadTxns(writer, 1, never));
  txn->last_tid = 2;
  f.c->ReaderEnter(txn, /*read_txn=*/true);  // BEGIN; SELECT
  EXPECT_TRUE(f.c->ReadTxnsOpen());
  EXPECT_EQ(Deferral::kNone, f.c->DeferToReadTxns(txn, 1, never));     // not for itself
  EXPECT_EQ(Deferral::kNone, f.c->DeferToReadTxns(writer, 2, never));  // its own thread's reader
  // A retry (its deadline already past) does not wait again.
  EXPECT_EQ(Deferral::kNone, f.c->DeferToReadTxns(writer, 1, Clock::now()));
  // Bounded: a read transaction that never ends holds the writer up to its deadline only.
  EXPECT_EQ(Deferral::kWaited, f.c->DeferToReadTxns(writer, 1, In(milliseconds(20))));

  // The reader's end lets the writer go.
  std::atomic<bool> done{false};
  std::thread w([&] {
    EXPECT_EQ(f.c->DeferToReadTxns(writer, 1, never), Deferral::kWaited);
    done = true;
  });
  WaitUntil([&] { return f.Stat("deferring") == 1; });
  EXPECT_FALSE(done.load());
  // A read transaction begun meanwhile is not waited for (with reads overlapping, a writer
  // that waited for newcomers too would wait its whole bound at every write).
  f.c->ReaderEnter(third, /*read_txn=*/true);
  f.c->ReaderLeave(txn);
  w.join();
  f.c->ReaderLeave(third);
  EXPECT_FALSE(f.c->ReadTxnsOpen());
  EXPECT_EQ(f.Stat("read_txns"), 0);

  // So does the reader's write: it goes past the writer, which holds the turn for a write
  // SQLite retries, and the writer's base lock request then meets that write lock.
  f.c->ReaderEnter(txn, /*read_txn=*/true);
  writer->write_retried = true;
  Take(f, writer, 1);
  done = false;
  std::thread w2([&] {
    EXPECT_EQ(f.c->DeferToReadTxns(writer, 1, never), Deferral::kPassed);
    done = true;
  });
  WaitUntil([&] { return f.Stat("deferring") == 1; });
  ASSERT_TRUE(f.c->GoPastHolder(txn));
  w2.join();
  // While the pass lasts, nobody defers to the other read transactions: the pass's commit
  // waits for their read locks, and a writer that held its own would hold up that commit. The
  // holder passed before it came is told so at once (its base request would race the pass's).
  f.c->ReaderEnter(third, /*read_txn=*/true);
  EXPECT_EQ(Deferral::kNone, f.c->DeferToReadTxns(other, 1, never));
  EXPECT_EQ(Deferral::kPassed, f.c->DeferToReadTxns(writer, 1, never));
  EXPECT_EQ(Deferral::kPassed, f.c->DeferToReadTxns(writer, 1, Clock::now()));  // a retry too
  f.c->EndPast(txn);
  f.c->ReleaseTurn(writer);
  // A reader that closes with its read lock held (SQLite unlocks first) stops counting.
  f.c->Close(third);
  f.c->ReaderLeave(txn);
  f.c->ReaderLeave(autocommit);
  EXPECT_FALSE(f.c->ReadTxnsOpen());
  EXPECT_EQ(f.Stat("reader_deferrals"), 3);
  EXPECT_EQ(f.c->Rest().deferring, 0);
  EXPECT_EQ(f.c->Rest().read_txns, 0);
}

// A waiter gives up at its deadline and leaves the line; the next one is still served.
TEST(CoordinatorLine, TimeoutLeavesTheLine) {
  Fixture f;
  Ticket *holder = f.New(), *impatient = f.New(), *next = f.New();
  Take(f, holder, 1);
  EXPECT_EQ(f.c->AcquireTurn(impatient, In(milliseconds(20)), 2, kFifo), Grant::kTimeout);
  f.c->Cancel(impatient, Coordinator::CancelWhy::kTimeout);  // the lock path gives up
  EXPECT_EQ(f.Stat("timeouts"), 1);
  EXPECT_EQ(f.Queued(), 0);
  ASSERT_EQ(f.c->TryTurn(next, Ask::kWrite, 3, kFifo, /*queue=*/true), Grant::kQueued);
  f.c->ReleaseTurn(holder);
  EXPECT_EQ(f.c->WaitForTurn(next, In(milliseconds(60000))), Coordinator::TurnWait::kReady);
}

// A waiter that holds its file's read lock (a WAL connection: its read start or its write
// start) stops waiting when a writer holding the file's lock above SHARED is ahead, as holder
// or as an upgrade past the holder: that rollback-mode writer's commit waits for the waiter's
// read lock (during a journal_mode switch; threadtest3's walthread2 hung so). Checked when it
// asks, and when the writer takes its lock while the waiter is parked (woken by that: counted
// in file_writer_wakes, since parks also end on their own every kPreReadLease). A waiter
// without a read lock still waits, and after the writer gives its lock back, waiters wait
// again. Would catch the yield missing (a 60 s timeout), applied to every waiter, the pass
// ignored, or the wake-up lost.
TEST(CoordinatorLine, ReadLockHolderYieldsToAFileWriter) {
  Fixture f;
  Ticket *holder = f.New(), *reader = f.New(), *plain = f.New();
  Take(f, holder, 1);
  f.c->NoteFileWriter(holder, true);
  EXPECT_EQ(f.c->TryTurn(reader, Ask::kWrite, 2, kFifo, /*queue=*/true, /*pre_read=*/true,
                         /*holds_read_lock=*/true),
            Grant::kYielded);
  EXPECT_EQ(f.Queued(), 0);
  EXPECT_EQ(f.c->AcquireTurn(reader, In(milliseconds(60000)), 2, kFifo, true, true),
            Grant::kYielded);
  EXPECT_EQ(f.c->AcquireTurn(plain, In(milliseconds(20)), 3, kFifo), Grant::kTimeout);
  f.c->Cancel(plain, Coordinator::CancelWhy::kTimeout);
  f.c->NoteFileWriter(holder, false);
  EXPECT_EQ(f.c->AcquireTurn(reader, In(milliseconds(20)), 2, kFifo, true, true), Grant::kTimeout);
  // Parked first, then the holder takes its lock.
  Grant parked_result = Grant::kQueued;
  Clock::time_point parked_at;
  std::thread waiter([&] {
    parked_result = f.c->AcquireTurn(reader, In(milliseconds(60000)), 2, kFifo, true, true);
  });
  WaitUntil([&] { return f.c->Rest().parked == 1; });
  parked_at = Clock::now();
  f.c->NoteFileWriter(holder, true);
  waiter.join();
  EXPECT_EQ(parked_result, Grant::kYielded);
  // Woken by NoteFileWriter, unless this thread was descheduled until the waiter's own
  // periodic wake (kPreReadLease, 250 ms) came first and found the writer already.
  if (Clock::now() - parked_at < milliseconds(200)) {
    EXPECT_EQ(f.Stat("file_writer_wakes"), 1) << f.Stats();
  }
  // The busy handler's wait of a WAL write start refused for the turn (queued with
  // holds_read_lock): ready at once, its retry goes to the base lock.
  EXPECT_EQ(f.c->WaitForTurn(reader, In(milliseconds(60000))), Coordinator::TurnWait::kReady);
  f.c->Cancel(reader, Coordinator::CancelWhy::kGaveUp);
  EXPECT_EQ(f.Queued(), 0);
  f.c->NoteFileWriter(holder, false);
  // An upgrade past the holder that takes its file's lock (the version write of a switch to
  // journal_mode=DELETE is one): the same, while the holder itself is not a file writer.
  holder->write_retried = true;
  Ticket* upgrader = f.New();
  ASSERT_TRUE(f.c->GoPastHolder(upgrader));
  f.c->ReleaseTurn(holder);  // refused by the base, the holder gave its turn back
  EXPECT_EQ(f.c->AcquireTurn(reader, In(milliseconds(20)), 2, kFifo, true, true), Grant::kTimeout);
  f.c->NoteFileWriter(upgrader, true);
  EXPECT_EQ(f.c->AcquireTurn(reader, In(milliseconds(60000)), 2, kFifo, true, true),
            Grant::kYielded);
  f.c->Cancel(reader, Coordinator::CancelWhy::kGaveUp);
  f.c->NoteFileWriter(upgrader, false);
  f.c->EndPast(upgrader);
  EXPECT_EQ(f.c->TryTurn(reader, Ask::kWrite, 2, kFifo, false, true, true), Grant::kGranted);
  EXPECT_GE(f.Stat("file_writer_yields"), 4) << f.Stats();
}

// Closing a handle takes it out of the line and gives back a turn it still held. Would catch
// a closed connection blocking the database forever.
TEST(CoordinatorLine, CloseLeavesTheLineAndFreesTheTurn) {
  Fixture f;
  Ticket *holder = f.New(), *queued = f.New(), *next = f.New();
  Take(f, holder, 1);
  ASSERT_EQ(f.c->TryTurn(queued, Ask::kWrite, 2, kFifo, /*queue=*/true), Grant::kQueued);
  ASSERT_EQ(f.c->TryTurn(next, Ask::kWrite, 3, kFifo, /*queue=*/true), Grant::kQueued);
  f.c->Close(queued);
  f.c->Close(holder);
  EXPECT_EQ(f.c->WaitForTurn(next, In(milliseconds(60000))), Coordinator::TurnWait::kReady);
  EXPECT_EQ(f.c->WaitForTurn(queued, In(milliseconds(0))), Coordinator::TurnWait::kNotQueued);
}

// The holder yielding after a refusal by another process stays first in line.
TEST(CoordinatorLine, YieldKeepsFirstPlace) {
  Fixture f;
  Ticket *a = f.New(), *b = f.New();
  Take(f, a, 1);
  f.c->YieldTurnKeepPlace(a);
  EXPECT_EQ(f.c->TryTurn(b, Ask::kWrite, 2, kFifo, /*queue=*/true), Grant::kQueued);
  EXPECT_EQ(f.c->TryTurn(a, Ask::kWrite, 1, kFifo, /*queue=*/true), Grant::kGranted);
  EXPECT_EQ(f.Stat("cross_process_busy"), 1);
}

// A turn reserved for a woken waiter that never comes back to claim it (its retry failed for
// another reason) is free again after the 20 ms claim lease, and the waiter behind gets it
// then. Would catch a line stalled for ever, or the wake-up meant for the next waiter going to
// the reserved ticket itself (it then slept to the 250 ms re-check cap with the turn idle).
// Bound: 200 ms, ten leases of scheduling noise on a loaded machine, still below that cap.
TEST(CoordinatorLine, LapseWakesTheNextWaiterPromptly) {
  Fixture f;
  Ticket *writer = f.New(), *vanished = f.New(), *next = f.New();
  Take(f, writer, 1);
  std::thread gone = VanishingWaiter(f, vanished);
  Clock::duration waited{};
  Clock::time_point released;
  std::thread th([&] {
    EXPECT_EQ(f.c->AcquireTurn(next, In(milliseconds(30000)), 3, kFifo), Grant::kGranted);
    waited = Clock::now() - released;
    f.c->ReleaseTurn(next);
  });
  WaitUntil([&] { return f.c->Rest().parked == 2; });
  released = Clock::now();
  f.c->ReleaseTurn(writer);
  gone.join();
  th.join();
  EXPECT_LT(waited, milliseconds(200));
  EXPECT_EQ(f.Stat("claim_lapsed"), 1);
  f.c->Cancel(vanished, Coordinator::CancelWhy::kGaveUp);
  const RestState r = f.c->Rest();
  EXPECT_FALSE(r.held || r.reserved || r.queued != 0 || r.parked != 0);
}

// An upgrade that takes a turn reserved for a waiter ends the reservation: the parked waiters
// neither spin on a lapsed reservation while the upgrade holds the turn, nor lose the wake-up
// of its release. Would catch both (measured before: 276 ms of CPU in a 300 ms hold, and a
// 250 ms idle turn). Bounds: generous halves of what the bugs showed.
TEST(CoordinatorLine, UpgradePastAReservationLeavesNoStaleReservation) {
  Fixture f;
  Ticket *writer = f.New(), *vanished = f.New(), *next = f.New(), *up = f.New();
  Take(f, writer, 1);
  std::thread gone = VanishingWaiter(f, vanished);
  f.c->ReleaseTurn(writer);  // reserved for `vanished`, which never claims
  gone.join();
  // An upgrade takes the free turn reserved for `vanished` (allowed whoever waits).
  ASSERT_EQ(f.c->TryTurn(up, Ask::kUpgrade, 4, kFifo, /*queue=*/false), Grant::kGranted);
  Clock::duration waited{};
  Clock::time_point released;
  std::thread th([&] {
    EXPECT_EQ(f.c->AcquireTurn(next, In(milliseconds(30000)), 3, kFifo), Grant::kGranted);
    waited = Clock::now() - released;
    f.c->ReleaseTurn(next);
  });
  WaitUntil([&] { return f.c->Rest().parked == 1; });
  const std::clock_t c0 = std::clock();
  std::this_thread::sleep_for(milliseconds(300));  // the reservation has lapsed by now
  const long cpu_ms = static_cast<long>((std::clock() - c0) * 1000 / CLOCKS_PER_SEC);
  EXPECT_LT(cpu_ms, 150) << "the parked waiter spun while the upgrade held the turn";
  released = Clock::now();
  f.c->ReleaseTurn(up);
  th.join();
  EXPECT_LT(waited, milliseconds(200));
}

// The holder waiting for the shared turn (vfs/xproc.h) stands in line there with the clock of
// the longest-waiting request it holds up here: the live waiters' earliest arrival, the
// asking ticket left out, `if_none` when nobody waits. Would catch a clock taken from the
// newest waiter, from a waiter not parked, or from the asker itself.
TEST(CoordinatorLine, OldestWaitSinceIsTheLongestLiveWaiter) {
  Fixture f;
  Ticket *holder = f.New(), *first = f.New(), *second = f.New(), *idle = f.New();
  Take(f, holder, 1);
  const Clock::time_point none = Clock::now() + milliseconds(1000);
  EXPECT_EQ(f.c->OldestWaitSince(holder, none), none);
  // Queued but not parked (between two tries of its busy handler): not counted as waiting.
  ASSERT_EQ(f.c->TryTurn(idle, Ask::kWrite, 9, kFifo, /*queue=*/true), Grant::kQueued);
  EXPECT_EQ(f.c->OldestWaitSince(holder, none), none);
  f.c->Cancel(idle, Coordinator::CancelWhy::kGaveUp);
  std::vector<std::thread> threads;
  Clock::time_point before[2], after[2];
  Ticket* waiters[2] = {first, second};
  for (int i = 0; i < 2; ++i) {
    before[i] = Clock::now();
    threads.emplace_back([&f, t = waiters[i], i] {
      EXPECT_EQ(f.c->AcquireTurn(t, In(milliseconds(60000)), 2 + i, kFifo), Grant::kGranted);
      f.c->ReleaseTurn(t);
    });
    WaitUntil([&] { return f.c->Rest().parked == i + 1; });
    after[i] = Clock::now();
    std::this_thread::sleep_for(milliseconds(5));
  }
  const Clock::time_point oldest = f.c->OldestWaitSince(holder, none);
  EXPECT_GE(oldest, before[0]);
  EXPECT_LE(oldest, after[0]);
  // Asked by `first` (it holds up `second` only), the answer is `second`'s arrival.
  const Clock::time_point behind_first = f.c->OldestWaitSince(first, none);
  EXPECT_GE(behind_first, before[1]);
  EXPECT_LE(behind_first, after[1]);
  // Never later than the asker's own start: the min with `if_none`.
  EXPECT_EQ(f.c->OldestWaitSince(holder, before[0] - milliseconds(1)), before[0] - milliseconds(1));
  f.c->ReleaseTurn(holder);
  for (auto& th : threads) th.join();
}

// A waiter the turn is reserved for, on its way to claim it (not parked), still waits: it
// counts, as it does for the line's own front.
TEST(CoordinatorLine, OldestWaitSinceCountsAReservedWaiterOnItsWay) {
  Fixture f;
  Ticket *holder = f.New(), *vanished = f.New(), *asker = f.New();
  Take(f, holder, 1);
  const Clock::time_point before = Clock::now();
  std::thread gone = VanishingWaiter(f, vanished);
  const Clock::time_point after = Clock::now();
  f.c->ReleaseTurn(holder);  // reserved for `vanished`, which leaves to claim it and never does
  gone.join();
  ASSERT_TRUE(f.c->Rest().reserved);
  ASSERT_EQ(f.c->Rest().parked, 0);
  const Clock::time_point none = Clock::now() + milliseconds(1000);
  const Clock::time_point oldest = f.c->OldestWaitSince(asker, none);
  EXPECT_GE(oldest, before);
  EXPECT_LE(oldest, after);
  f.c->Cancel(vanished, Coordinator::CancelWhy::kGaveUp);
  EXPECT_EQ(f.c->OldestWaitSince(asker, none), none);
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
