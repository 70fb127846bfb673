// trampoline_lifecycle_test.cc - the UDF trampoline table's waits and teardown, through the
// built .so as a binding uses it: a call that times out fails cleanly, closing an owner fails
// what is queued and waits for hook calls in progress, destructors run on the owner thread (and
// never for a failed create), and a connection closed or a function replaced while a call is in
// flight leaves nothing dangling. Part of the trampoline_test executable.
#include "tests/trampoline_fixture.h"

namespace trampoline_test {
namespace {

// A worker waits at most safeconc_call_timeout: when the owner does not run the call, the
// statement fails with a message naming the function, the owner and the timeout, and the
// task is skipped when the owner finally drains. Would catch an unbounded wait (the seed's
// hang) or a late callback run.
TEST_F(Trampoline, TimeoutFailsCleanlyAndLateTaskIsSkipped) {
  sctest::Db db(uri_ + "?safeconc_call_timeout=100");
  ASSERT_EQ(A()->create_function(db.get(), "count_calls", 1, 0, owner_, nullptr, Count, nullptr),
            SQLITE_OK);
  g_calls = 0;
  std::string err;
  std::thread worker([&] {
    if (db.Exec("SELECT count_calls(1)") != SQLITE_OK) err = db.error();
  });
  worker.join();  // the owner (this thread) never drained meanwhile
  EXPECT_NE(err.find("count_calls"), std::string::npos) << err;
  EXPECT_NE(err.find("owner #"), std::string::npos) << err;
  EXPECT_NE(err.find("safeconc_call_timeout=100"), std::string::npos) << err;
  EXPECT_EQ(A()->owner_drain(owner_, 0), 1);  // the abandoned task, skipped
  EXPECT_EQ(g_calls.load(), 0) << "a call whose worker gave up still ran";
  const std::string stats = db.Text("SELECT safeconc_stats()");
  EXPECT_GE(db.Int("SELECT json_extract('" + stats + "', '$.udf.timeouts')"), 1) << stats;
  EXPECT_GE(db.Int("SELECT json_extract('" + stats + "', '$.udf.failed')"), 1) << stats;
}

// The owner closes while a call waits in its queue: the worker is released at once with an
// error naming the owner, not after the timeout; later calls fail the same way; calls made
// after close never reach the host. Would catch a worker stuck until timeout, or a crash.
TEST_F(Trampoline, OwnerCloseFailsQueuedAndFutureCalls) {
  sctest::Db db(uri_ + "?safeconc_call_timeout=60000");
  ASSERT_EQ(A()->create_function(db.get(), "count_calls", 1, 0, owner_, nullptr, Count, nullptr),
            SQLITE_OK);
  g_calls = 0;
  std::string err;
  Clock::duration took{};
  std::thread worker([&] {
    const Clock::time_point start = Clock::now();
    if (db.Exec("SELECT count_calls(1)") != SQLITE_OK) err = db.error();
    took = Clock::now() - start;
  });
  // Wait until the call is queued (the fd becomes readable), then close without draining.
  pollfd p{A()->owner_fd(owner_), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 30000), 1);
  ASSERT_EQ(A()->owner_close(owner_), SQLITE_OK) << A()->errmsg();
  worker.join();
  EXPECT_NE(err.find("was closed"), std::string::npos) << err;
  EXPECT_LT(took, std::chrono::seconds(30));  // far below the 60 s timeout
  EXPECT_EQ(g_calls.load(), 0);
  // Later: on a worker and on this thread, the call fails cleanly.
  std::thread later([&] { EXPECT_NE(db.Exec("SELECT count_calls(2)"), SQLITE_OK); });
  later.join();
  EXPECT_NE(db.Exec("SELECT count_calls(3)"), SQLITE_OK);
  EXPECT_NE(db.error().find("closed"), std::string::npos) << db.error();
  EXPECT_EQ(g_calls.load(), 0);
  // The handle is now refused everywhere.
  EXPECT_EQ(A()->owner_drain(owner_, 0), -SQLITE_MISUSE);
  EXPECT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, nullptr, Count, nullptr),
            SQLITE_MISUSE);
  EXPECT_NE(std::string(A()->errmsg()).find("closed"), std::string::npos);
  owner_ = nullptr;
}

// A callback may close its own owner while it runs: that call completes, the next fails.
TEST_F(Trampoline, OwnerClosedFromInsideRunningCallback) {
  sctest::Db db(uri_);
  static safeconc_owner* s_owner;
  s_owner = owner_;
  auto close_self = [](safeconc_ctx* c) {
    A()->owner_close(s_owner);
    A()->result_int64(c, 42);
  };
  ASSERT_EQ(
      A()->create_function(db.get(), "close_self", 0, 0, owner_, nullptr, close_self, nullptr),
      SQLITE_OK);
  std::vector<std::string> rows;
  OnWorker(A(), owner_, [&] { rows = db.Rows("SELECT close_self()"); });
  EXPECT_EQ(rows, std::vector<std::string>{"42"});
  EXPECT_NE(db.Exec("SELECT close_self()"), SQLITE_OK);
  owner_ = nullptr;
}

// A hook owner: the binding's loop holds tasks when the owner closes. The waiting worker is
// released with an error; running the stale task afterwards is a harmless no-op; a hook that
// refuses a task fails that call at once.
TEST_F(Trampoline, HookOwnerCloseWithTasksInHostLoop) {
  struct Loop {
    std::mutex mu;
    std::vector<safeconc_task*> tasks;
    bool refuse = false;
  } loop;
  auto hook = [](void* arg, safeconc_task* t) {
    Loop* l = static_cast<Loop*>(arg);
    std::lock_guard<std::mutex> g(l->mu);
    if (l->refuse) return 1;
    l->tasks.push_back(t);
    return 0;
  };
  safeconc_owner* hook_owner = nullptr;
  ASSERT_EQ(A()->owner_open(hook, &loop, &hook_owner), SQLITE_OK);
  EXPECT_EQ(A()->owner_fd(hook_owner), -1);
  sctest::Db db(uri_ + "?safeconc_call_timeout=60000");
  ASSERT_EQ(
      A()->create_function(db.get(), "count_calls", 1, 0, hook_owner, nullptr, Count, nullptr),
      SQLITE_OK);
  g_calls = 0;
  // Running a task from the hook works (the normal case).
  std::string value;
  std::thread ok([&] { value = db.Text("SELECT count_calls(7)"); });
  for (;;) {
    safeconc_task* t = nullptr;
    {
      std::lock_guard<std::mutex> g(loop.mu);
      if (!loop.tasks.empty()) {
        t = loop.tasks.back();
        loop.tasks.pop_back();
      }
    }
    if (t) {
      A()->task_run(t);
      break;
    }
    std::this_thread::yield();
  }
  ok.join();
  EXPECT_EQ(value, "7");
  // A hook whose loop runs the task on the wrong thread: the call fails, the host is not run.
  std::string wrong;
  std::thread off([&] {
    if (db.Exec("SELECT count_calls(10)") != SQLITE_OK) wrong = db.error();
  });
  safeconc_task* stray = nullptr;
  for (; stray == nullptr; std::this_thread::yield()) {
    std::lock_guard<std::mutex> g(loop.mu);
    if (!loop.tasks.empty()) {
      stray = loop.tasks.back();
      loop.tasks.pop_back();
    }
  }
  std::thread([&] { A()->task_run(stray); }).join();
  off.join();
  EXPECT_NE(wrong.find("off the owner thread"), std::string::npos) << wrong;
  EXPECT_EQ(g_calls.load(), 1);
  // A task stays in the host's loop; the owner closes; the worker is released.
  std::string err;
  std::thread waiting([&] {
    if (db.Exec("SELECT count_calls(8)") != SQLITE_OK) err = db.error();
  });
  for (bool have = false; !have; std::this_thread::yield()) {
    std::lock_guard<std::mutex> g(loop.mu);
    have = !loop.tasks.empty();
  }
  ASSERT_EQ(A()->owner_close(hook_owner), SQLITE_OK);
  waiting.join();
  EXPECT_NE(err.find("was closed"), std::string::npos) << err;
  for (safeconc_task* t : loop.tasks) A()->task_run(t);  // the loop still runs it: a no-op
  EXPECT_EQ(g_calls.load(), 1);
  // A hook that refuses: the call fails at once with a message saying so.
  safeconc_owner* refusing = nullptr;
  loop.refuse = true;
  ASSERT_EQ(A()->owner_open(hook, &loop, &refusing), SQLITE_OK);
  ASSERT_EQ(A()->create_function(db.get(), "count_calls", 1, 0, refusing, nullptr, Count, nullptr),
            SQLITE_OK);
  std::thread refused([&] {
    EXPECT_NE(db.Exec("SELECT count_calls(9)"), SQLITE_OK);
    EXPECT_NE(db.error().find("refused"), std::string::npos) << db.error();
  });
  refused.join();
  A()->owner_close(refusing);
}

// owner_close waits for a hook call in progress: a worker that checked the owner before it
// closed may be inside the hook, and the binding frees what the hook uses (its hook_arg, a
// napi threadsafe function) right after owner_close. Would catch a close that returns while
// the hook still runs (the hook then touches freed memory in a real binding).
TEST_F(Trampoline, OwnerCloseWaitsForHookInProgress) {
  struct Gate {
    std::atomic<bool> entered{false};
    std::atomic<bool> release{false};
    std::atomic<bool> returned{false};
  } gate;
  auto hook = [](void* arg, safeconc_task*) {
    Gate* g = static_cast<Gate*>(arg);
    g->entered = true;
    while (!g->release) std::this_thread::yield();
    g->returned = true;
    return 1;  // refuse: the worker fails the call itself
  };
  safeconc_owner* owner = nullptr;
  ASSERT_EQ(A()->owner_open(hook, &gate, &owner), SQLITE_OK);
  sctest::Db db(uri_);
  ASSERT_EQ(A()->create_function(db.get(), "count_calls", 1, 0, owner, nullptr, Count, nullptr),
            SQLITE_OK);
  sctest::Db stats(uri_);
  auto owners_open = [&] {
    return stats.Int("SELECT json_extract(safeconc_stats(), '$.udf.owners_open')");
  };
  const int64_t open_before = owners_open();
  std::thread worker([&] { EXPECT_NE(db.Exec("SELECT count_calls(1)"), SQLITE_OK); });
  while (!gate.entered) std::this_thread::yield();
  // The hook may return only once owner_close has marked the owner closed (owners_open drops
  // there, right before it waits for hook calls). A close that does not wait returns at that
  // very point, while the releaser has yet to see the gauge move and the hook to see release.
  std::thread releaser([&] {
    while (owners_open() == open_before) std::this_thread::yield();
    gate.release = true;
  });
  ASSERT_EQ(A()->owner_close(owner), SQLITE_OK);
  EXPECT_TRUE(gate.returned.load()) << "owner_close returned while the hook was still running";
  releaser.join();
  worker.join();
}

// The user data's destructor runs on the owner thread, also when SQLite drops the function
// on another thread (replaced there, or the connection closed there).
TEST_F(Trampoline, DestructorRunsOnOwnerThread) {
  static std::atomic<uint64_t> destroyed_on{0};
  static std::atomic<int> destroyed{0};
  auto destroy = [](void* p) {
    destroyed_on = Tid();
    ++destroyed;
    delete static_cast<int*>(p);
  };
  destroyed = 0;
  sctest::Db db(uri_);
  ASSERT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, new int(1), Count, destroy),
            SQLITE_OK);
  // Replaced on a worker thread: the old data is destroyed on the owner thread.
  OnWorker(A(), owner_, [&] {
    EXPECT_EQ(
        sqlite3_create_function(db.get(), "f", 1, SQLITE_UTF8, nullptr, nullptr, nullptr, nullptr),
        SQLITE_OK);
  });
  EXPECT_EQ(destroyed.load(), 1);
  EXPECT_EQ(destroyed_on.load(), Tid());
  // Registered again, then the connection closes on another thread.
  auto* conn = new sctest::Db(uri_);
  ASSERT_EQ(A()->create_function(conn->get(), "f", 1, 0, owner_, new int(2), Count, destroy),
            SQLITE_OK);
  OnWorker(A(), owner_, [&] { delete conn; });
  EXPECT_EQ(destroyed.load(), 2);
  EXPECT_EQ(destroyed_on.load(), Tid());
}

// A create_* that SQLite refuses (SQLITE_BUSY: a statement still uses the function it would
// replace) does not run the destructor, on the owner thread or on a worker, and neither does
// one refused for a bad argument: on any failure the user data is still the caller's. Would
// catch the double free a binding gets when it frees its data after a failed create and the
// trampoline had already destroyed (or posted the destruction of) it.
TEST_F(Trampoline, FailedCreateNeverRunsTheDestructor) {
  static std::atomic<int> destroyed{0};
  destroyed = 0;
  auto destroy = [](void* p) {
    ++destroyed;
    delete static_cast<int*>(p);
  };
  sctest::Db db(uri_);
  db.Must("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)");
  ASSERT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, new int(1), Count, destroy),
            SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "SELECT f(x) FROM t", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);  // f is in use
  int mine = 0;
  EXPECT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, &mine, Count, destroy), SQLITE_BUSY);
  OnWorker(A(), owner_, [&] {
    EXPECT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, &mine, Count, destroy),
              SQLITE_BUSY);
  });
  EXPECT_EQ(A()->create_function(db.get(), "f", 200, 0, owner_, &mine, Count, destroy),
            SQLITE_MISUSE);
  EXPECT_EQ(destroyed.load(), 0) << "a failed create ran the destructor";
  sqlite3_finalize(st);
  // Once the statement is gone the replacement succeeds, and the old data is destroyed.
  ASSERT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, new int(2), Count, destroy),
            SQLITE_OK);
  EXPECT_EQ(destroyed.load(), 1);
}

// A connection closed (sqlite3_close_v2) on a third thread while a worker waits for a
// dispatched call: the call completes, the connection goes away after its statement, no
// memory is freed while in use (ASan), the destructor runs once on the owner thread.
TEST_F(Trampoline, ConnectionClosedWhileCallInFlight) {
  static std::atomic<int> destroyed{0};
  destroyed = 0;
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(uri_.c_str(), &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, nullptr),
            SQLITE_OK);
  ASSERT_EQ(A()->create_function(db, "sleep_udf", 1, 0, owner_, nullptr, SleepUdf,
                                 [](void*) { ++destroyed; }),
            SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT sleep_udf(50)", -1, &st, nullptr), SQLITE_OK);
  std::atomic<int> step_rc{-1}, close_rc{-1};
  OnWorker(A(), owner_, [&] {
    std::thread closer([&] { close_rc = sqlite3_close_v2(db); });  // blocks until the step ends
    step_rc = sqlite3_step(st);
    closer.join();
    sqlite3_finalize(st);  // the zombie connection closes now, on this worker thread
  });
  EXPECT_EQ(step_rc.load(), SQLITE_ROW);
  EXPECT_EQ(close_rc.load(), SQLITE_OK);
  A()->owner_drain(owner_, 0);  // the posted destructor
  EXPECT_EQ(destroyed.load(), 1);
}

// A function replaced while a call of it is in flight: SQLite refuses the replacement while
// the statement is active (SQLITE_BUSY, its own rule), the function's data stays alive and
// the function keeps working; once the statement is done the replacement succeeds and the
// old data is destroyed once, on the owner thread. Would catch a Func freed while a task
// still uses it (ASan) or a destructor run twice.
TEST_F(Trampoline, FunctionReplacedWhileCallInFlight) {
  static std::atomic<int> destroyed{0};
  destroyed = 0;
  sctest::Db db(uri_);
  ASSERT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, new int(7), Echo,
                                 [](void* p) {
                                   delete static_cast<int*>(p);
                                   ++destroyed;
                                 }),
            SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "SELECT f(2)", -1, &st, nullptr), SQLITE_OK);
  std::atomic<int> via_sqlite{-1}, via_api{-1};
  std::string api_error;
  OnWorker(A(), owner_, [&] {
    // A dispatched call has run; the statement is still active.
    EXPECT_EQ(sqlite3_step(st), SQLITE_ROW);
    via_sqlite =
        sqlite3_create_function(db.get(), "f", 1, SQLITE_UTF8, nullptr, nullptr, nullptr, nullptr);
    via_api = A()->create_function(db.get(), "f", 1, 0, owner_, nullptr, Echo, nullptr);
    api_error = A()->errmsg();
  });
  EXPECT_EQ(via_sqlite.load(), SQLITE_BUSY) << db.error();
  EXPECT_EQ(via_api.load(), SQLITE_BUSY);
  EXPECT_NE(api_error.find("active statements"), std::string::npos) << api_error;
  EXPECT_EQ(destroyed.load(), 0) << "destroyed while a statement still uses it";
  EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);  // the old function still works
  sqlite3_finalize(st);
  // After the statement: replaced, the old data destroyed once on this (the owner) thread.
  EXPECT_EQ(A()->create_function(db.get(), "f", 1, 0, owner_, nullptr, SleepUdf, nullptr),
            SQLITE_OK)
      << A()->errmsg();
  A()->owner_drain(owner_, 0);
  EXPECT_EQ(destroyed.load(), 1);
  EXPECT_EQ(db.Text("SELECT f(3)"), "3");
}

}  // namespace
}  // namespace trampoline_test
