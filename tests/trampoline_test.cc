// trampoline_test.cc - the UDF trampoline table through the built .so, as a binding uses it:
// callbacks run on their owner thread, values round-trip in both paths, aggregates and
// window functions match native ones, waits are bounded, teardown fails cleanly.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/trampoline_util.h"

namespace {

using sctest::Api;
using sctest::OnWorker;
using sctest::Tid;
using Clock = std::chrono::steady_clock;

const safeconc_api_v1* A() {
  static const safeconc_api_v1* api = Api();
  return api;
}

// ---- Host callbacks used by the tests --------------------------------------------------

std::atomic<uint64_t> g_last_tid{0};
std::atomic<int> g_calls{0};

// sleep_udf(ms): the seed's function; busy-waits like the seed's JavaScript, records the
// thread it ran on.
void SleepUdf(safeconc_ctx* c) {
  g_last_tid = Tid();
  const int64_t ms = A()->arg_int64(c, 0);
  const Clock::time_point until = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < until) {
  }
  A()->result_int64(c, ms);
}

// echo(x): a copy of the argument.
void Echo(safeconc_ctx* c) { A()->result_arg(c, 0); }

// rebuild(x): the argument rebuilt through the typed accessors and setters.
void Rebuild(safeconc_ctx* c) {
  const safeconc_api_v1* a = A();
  switch (a->arg_type(c, 0)) {
    case SQLITE_INTEGER:
      a->result_int64(c, a->arg_int64(c, 0));
      break;
    case SQLITE_FLOAT:
      a->result_double(c, a->arg_double(c, 0));
      break;
    case SQLITE_TEXT:
      a->result_text(c, reinterpret_cast<const char*>(a->arg_text(c, 0)), a->arg_bytes(c, 0));
      break;
    case SQLITE_BLOB:
      a->result_blob(c, a->arg_blob(c, 0), a->arg_bytes(c, 0));
      break;
    default:
      a->result_null(c);
      break;
  }
}

// fail(msg, code): raises an error.
void Fail(safeconc_ctx* c) {
  A()->result_error(c, reinterpret_cast<const char*>(A()->arg_text(c, 0)),
                    static_cast<int>(A()->arg_int64(c, 1)));
}

void Zero(safeconc_ctx* c) { A()->result_zeroblob(c, static_cast<int>(A()->arg_int64(c, 0))); }

// my_sum: an aggregate (and, with inverse/value, a window) keeping its state in the slot.
void SumStep(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  if (*slot == nullptr) *slot = new int64_t(0);
  *static_cast<int64_t*>(*slot) += A()->arg_int64(c, 0);
}
void SumInverse(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  *static_cast<int64_t*>(*slot) -= A()->arg_int64(c, 0);
}
void SumValue(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  A()->result_int64(c, *slot ? *static_cast<int64_t*>(*slot) : 0);
}
void SumFinal(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  if (*slot == nullptr) return A()->result_null(c);
  A()->result_int64(c, *static_cast<int64_t*>(*slot));
  delete static_cast<int64_t*>(*slot);
  *slot = nullptr;
}

void Count(safeconc_ctx* c) {
  ++g_calls;
  A()->result_int64(c, A()->arg_int64(c, 0));
}

class Trampoline : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(A(), nullptr) << "safeconc_api(1) not reachable";
    ASSERT_EQ(A()->owner_open_fd(&owner_), SQLITE_OK) << A()->errmsg();
    uri_ = "file:" + dir_.File("t.db");
  }
  void TearDown() override {
    if (owner_) A()->owner_close(owner_);
  }
  void Register(sqlite3* db) {
    ASSERT_EQ(A()->create_function(db, "sleep_udf", 1, 0, owner_, nullptr, SleepUdf, nullptr),
              SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "echo", 1, 0, owner_, nullptr, Echo, nullptr), SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "rebuild", 1, 0, owner_, nullptr, Rebuild, nullptr),
              SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "fail", 2, 0, owner_, nullptr, Fail, nullptr), SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "zero", 1, 0, owner_, nullptr, Zero, nullptr), SQLITE_OK);
    ASSERT_EQ(
        A()->create_aggregate(db, "my_sum", 1, 0, owner_, nullptr, SumStep, SumFinal, nullptr),
        SQLITE_OK);
    ASSERT_EQ(A()->create_window(db, "my_wsum", 1, 0, owner_, nullptr, SumStep, SumFinal, SumValue,
                                 SumInverse, nullptr),
              SQLITE_OK);
  }
  // The rows of `sql`, stepped on a worker thread while this (the owner) thread runs its loop.
  std::vector<std::string> RowsOnWorker(sctest::Db& db, const std::string& sql) {
    std::vector<std::string> rows;
    OnWorker(A(), owner_, [&] { rows = db.Rows(sql); });
    return rows;
  }
  std::string ErrorOnWorker(sctest::Db& db, const std::string& sql, int* code = nullptr) {
    std::string err;
    OnWorker(A(), owner_, [&] {
      const int rc = db.Exec(sql);
      err = rc == SQLITE_OK ? "" : db.error();
      if (code) *code = sqlite3_extended_errcode(db.get());
    });
    return err;
  }

  sctest::TempDir dir_;
  std::string uri_;
  safeconc_owner* owner_ = nullptr;
};

// The seed's reproduction (node:sqlite segfaulted here): a worker thread steps
// SELECT sleep_udf(200) while the owner thread runs its event loop. The callback runs on the
// owner thread, and the worker gets 200.
TEST_F(Trampoline, SeedReproductionCallbackRunsOnOwnerThread) {
  sctest::Db db(uri_);
  Register(db.get());
  g_last_tid = 0;
  uint64_t worker_tid = 0;
  std::vector<std::string> rows;
  OnWorker(A(), owner_, [&] {
    worker_tid = Tid();
    rows = db.Rows("SELECT sleep_udf(200) AS val");
  });
  EXPECT_EQ(rows, std::vector<std::string>{"200"});
  EXPECT_EQ(g_last_tid.load(), Tid()) << "the callback did not run on the owner thread";
  EXPECT_NE(worker_tid, Tid());
  const std::string stats = db.Text("SELECT safeconc_stats()");
  EXPECT_GE(db.Int("SELECT json_extract('" + stats + "', '$.udf.calls_dispatched')"), 1) << stats;
}

// On the owner thread the callback runs inline (no dispatch): the direct path.
TEST_F(Trampoline, OwnerThreadCallRunsDirectly) {
  sctest::Db db(uri_);
  Register(db.get());
  auto dispatched = [&] {
    return db.Int("SELECT json_extract(safeconc_stats(), '$.udf.calls_dispatched')");
  };
  const int64_t before = dispatched();
  g_last_tid = 0;
  EXPECT_EQ(db.Text("SELECT sleep_udf(1)"), "1");
  EXPECT_EQ(g_last_tid.load(), Tid());
  EXPECT_EQ(dispatched(), before);
}

// Every value type survives both paths unchanged, through result_arg and through the typed
// accessors and setters: NULL, int64 extremes, doubles (NaN becomes NULL in SQLite, as for
// a native UDF), infinities, -0.0, UTF-8 and embedded NUL text, empty and 10 MB blobs.
TEST_F(Trampoline, ValuesRoundTripInBothPaths) {
  sctest::Db db(uri_);
  Register(db.get());
  const char* exprs[] = {"NULL",
                         "-9223372036854775808",
                         "9223372036854775807",
                         "1.5",
                         "0.1",
                         "1e308*10",
                         "-1e308*10",
                         "-0.0",
                         "'h\xc3\xa9llo \xe2\x9c\x93'",
                         "CAST(x'610062' AS TEXT)",
                         "x''",
                         "x'00ff10'",
                         "''"};
  for (const char* fn : {"echo", "rebuild"}) {
    for (const char* e : exprs) {
      // Compare type, bytes (hex) and, for floats, the sign of zero.
      const std::string sql = std::string("SELECT typeof(v), hex(v), v IS ") + e +
                              ", CASE WHEN typeof(v)='real' THEN 1/v END FROM (SELECT " + fn + "(" +
                              e + ") AS v)";
      const std::string native = std::string(
                                     "SELECT typeof(v), hex(v), 1, CASE WHEN "
                                     "typeof(v)='real' THEN 1/v END FROM (SELECT ") +
                                 e + " AS v)";
      const std::vector<std::string> want = db.Rows(native);
      EXPECT_EQ(db.Rows(sql), want) << fn << " direct " << e;
      EXPECT_EQ(RowsOnWorker(db, sql), want) << fn << " dispatched " << e;
    }
  }
  // NaN: a double result that SQLite stores as NULL, the same in both paths.
  const std::string nan = "SELECT typeof(rebuild(CAST('nan' AS REAL) + 0.0))";
  EXPECT_EQ(db.Rows(nan), RowsOnWorker(db, nan));
  // 10 MB blob: the same bytes back (compared in SQL).
  const std::string big =
      "SELECT echo(b) = b, length(rebuild(b)) FROM (SELECT randomblob(10*1024*1024) AS b)";
  EXPECT_EQ(db.Rows(big), (std::vector<std::string>{"1|10485760"}));
  EXPECT_EQ(RowsOnWorker(db, big), (std::vector<std::string>{"1|10485760"}));
  const std::string zb = "SELECT typeof(zero(5)), length(zero(5)), hex(zero(3))";
  EXPECT_EQ(db.Rows(zb), RowsOnWorker(db, zb));
}

// An error raised by the host reaches SQL with its message and code, in both paths.
TEST_F(Trampoline, ErrorsWithCodesReachSqlInBothPaths) {
  sctest::Db db(uri_);
  Register(db.get());
  EXPECT_EQ(db.Exec("SELECT fail('bad thing', 19)"), SQLITE_CONSTRAINT);
  EXPECT_EQ(db.error(), "bad thing");
  int code = 0;
  EXPECT_EQ(ErrorOnWorker(db, "SELECT fail('bad thing', 19)", &code), "bad thing");
  EXPECT_EQ(code & 0xff, SQLITE_CONSTRAINT);
  EXPECT_EQ(ErrorOnWorker(db, "SELECT fail('plain', 0)", &code), "plain");
  EXPECT_EQ(code, SQLITE_ERROR);
}

// An aggregate and a window function over 100k rows give what the native sum() gives, in
// both paths (the host's state follows the group; the window's inverse keeps it right).
TEST_F(Trampoline, AggregateAndWindowMatchNativeOver100kRows) {
  sctest::Db db(uri_);
  Register(db.get());
  db.Must(
      "CREATE TABLE n(x INTEGER, g INTEGER);"
      "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000)"
      "INSERT INTO n SELECT i * 7 % 1000 - 300, i % 10 FROM c");
  const std::string agg = "SELECT g, my_sum(x), sum(x) FROM n GROUP BY g";
  for (const auto& rows : {db.Rows(agg), RowsOnWorker(db, agg)}) {
    ASSERT_EQ(rows.size(), 10u);
    for (const std::string& r : rows) {
      const size_t a = r.find('|'), b = r.rfind('|');
      EXPECT_EQ(r.substr(a + 1, b - a - 1), r.substr(b + 1)) << r;
    }
  }
  const std::string win =
      "SELECT count(*) FROM (SELECT my_wsum(x) OVER w AS a, sum(x) OVER w AS b FROM n "
      "WINDOW w AS (ORDER BY rowid ROWS BETWEEN 3 PRECEDING AND 1 FOLLOWING)) WHERE a IS NOT b";
  EXPECT_EQ(db.Rows(win), std::vector<std::string>{"0"});
  EXPECT_EQ(RowsOnWorker(db, win), std::vector<std::string>{"0"});
  EXPECT_EQ(db.Rows("SELECT my_sum(x) FROM n WHERE 0"), std::vector<std::string>{"NULL"});
}

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

// in_callback(db) is true exactly while a host callback of db runs, in both paths.
TEST_F(Trampoline, InCallbackFlagWhileCallbackRuns) {
  static sqlite3* s_db;
  static std::atomic<int> seen{-1};
  auto probe = [](safeconc_ctx* c) {
    seen = A()->in_callback(s_db);
    A()->result_null(c);
  };
  sctest::Db db(uri_);
  s_db = db.get();
  ASSERT_EQ(A()->create_function(db.get(), "probe", 0, 0, owner_, nullptr, probe, nullptr),
            SQLITE_OK);
  EXPECT_EQ(A()->in_callback(db.get()), 0);
  db.Must("SELECT probe()");
  EXPECT_EQ(seen.load(), 1);
  seen = -1;
  OnWorker(A(), owner_, [&] { db.Must("SELECT probe()"); });
  EXPECT_EQ(seen.load(), 1);
  EXPECT_EQ(A()->in_callback(db.get()), 0);
}

// Nested deeper than the 16 connections kept in in_callback's fast array, it still tells
// exactly: inside a UDF of db B called 17 callbacks deep (16 of db A above it) it says yes
// for B and no for C, which runs nothing. Would catch the false "no" that let a binding's
// close() or re-entry through there, and a blanket "yes" that refused legitimate calls.
TEST_F(Trampoline, InCallbackHoldsBeyondSixteenNestedCallbacks) {
  static sqlite3* s_a;
  static sqlite3* s_b;
  static sqlite3* s_c;
  static std::atomic<int> seen{-1}, seen_c{-1};
  // nest(n): n == 1 records in_callback(B); otherwise runs SELECT nest(n-1) on A, or on B for
  // the innermost call.
  auto nest = [](safeconc_ctx* c) {
    const int64_t n = A()->arg_int64(c, 0);
    if (n == 1) {
      seen = A()->in_callback(s_b);
      seen_c = A()->in_callback(s_c);
      return A()->result_int64(c, 1);
    }
    sqlite3* db = n == 2 ? s_b : s_a;
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, ("SELECT nest(" + std::to_string(n - 1) + ")").c_str(), -1, &st,
                       nullptr);
    const bool row = sqlite3_step(st) == SQLITE_ROW;
    A()->result_int64(c, row ? sqlite3_column_int64(st, 0) + 1 : -1000);
    sqlite3_finalize(st);
  };
  sctest::Db a(uri_), b(uri_), c(uri_);
  s_a = a.get();
  s_b = b.get();
  s_c = c.get();
  for (sqlite3* db : {a.get(), b.get()}) {
    ASSERT_EQ(A()->create_function(db, "nest", 1, 0, owner_, nullptr, nest, nullptr), SQLITE_OK);
  }
  EXPECT_EQ(a.Int("SELECT nest(17)"), 17);  // 16 callbacks of A, the 17th of B
  EXPECT_EQ(seen.load(), 1) << "in_callback(B) said no inside B's callback";
  EXPECT_EQ(seen_c.load(), 0) << "in_callback(C) said yes, but C runs no callback";
  EXPECT_EQ(A()->in_callback(b.get()), 0);
}

// Bad arguments and wrong threads are refused with SQLite codes and messages, never a crash.
TEST_F(Trampoline, BadArgumentsAreRefusedWithMessages) {
  sctest::Db db(uri_);
  const safeconc_api_v1* a = A();
  EXPECT_EQ(a->owner_open(nullptr, nullptr, nullptr), SQLITE_MISUSE);
  safeconc_owner* o = nullptr;
  EXPECT_EQ(a->owner_open(nullptr, nullptr, &o), SQLITE_MISUSE);
  EXPECT_NE(std::string(a->errmsg()).find("hook is NULL"), std::string::npos);
  EXPECT_EQ(a->create_function(nullptr, "f", 1, 0, owner_, nullptr, Count, nullptr), SQLITE_MISUSE);
  EXPECT_EQ(a->create_function(db.get(), nullptr, 1, 0, owner_, nullptr, Count, nullptr),
            SQLITE_MISUSE);
  EXPECT_EQ(a->create_function(db.get(), "f", 200, 0, owner_, nullptr, Count, nullptr),
            SQLITE_MISUSE);
  EXPECT_NE(std::string(a->errmsg()).find("nArg 200"), std::string::npos) << a->errmsg();
  EXPECT_EQ(a->create_function(db.get(), "f", 1, SQLITE_SUBTYPE, owner_, nullptr, Count, nullptr),
            SQLITE_MISUSE);
  EXPECT_EQ(a->create_function(db.get(), "f", 1, 0, owner_, nullptr, nullptr, nullptr),
            SQLITE_MISUSE);
  EXPECT_EQ(a->create_aggregate(db.get(), "f", 1, 0, owner_, nullptr, SumStep, nullptr, nullptr),
            SQLITE_MISUSE);
  EXPECT_EQ(a->create_window(db.get(), "f", 1, 0, owner_, nullptr, SumStep, SumFinal, nullptr,
                             nullptr, nullptr),
            SQLITE_MISUSE);
  int not_an_owner = 0;
  EXPECT_EQ(
      a->create_function(db.get(), "f", 1, 0, reinterpret_cast<safeconc_owner*>(&not_an_owner),
                         nullptr, Count, nullptr),
      SQLITE_MISUSE);
  EXPECT_NE(std::string(a->errmsg()).find("not an owner"), std::string::npos);
  // drain and close belong to the owner thread.
  std::thread other([&] {
    EXPECT_EQ(a->owner_drain(owner_, 0), -SQLITE_MISUSE);
    EXPECT_EQ(a->owner_close(owner_), SQLITE_MISUSE);
    EXPECT_NE(std::string(a->errmsg()).find("owner thread"), std::string::npos);
  });
  other.join();
  a->task_run(nullptr);  // harmless
  void* so = dlopen(sctest::SoPath().c_str(), RTLD_NOW | RTLD_NOLOAD);
  auto fn = reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL));
  EXPECT_EQ(fn(2), nullptr);  // a table version this library does not have
}

// Stress: 8 workers x 100k calls over 2 owners and 4 connections, every result right, no
// leak (ASan), no race (TSan). Each worker runs one statement of 100k rows.
TEST(TrampolineStress, EightWorkersTwoOwnersFourConnections) {
  ASSERT_NE(A(), nullptr);
  sctest::TempDir dir;
  sctest::Db stats_db(":memory:");
  auto gauge = [&](const char* name) {
    return stats_db.Int(std::string("SELECT json_extract(safeconc_stats(), '$.udf.") + name + "')");
  };
  const int64_t owners_before = gauge("owners_open");
  std::optional<sctest::OwnerThread> o1(A()), o2(A());
  EXPECT_EQ(gauge("owners_open"), owners_before + 2);
  std::vector<std::unique_ptr<sctest::Db>> conns;
  for (int i = 0; i < 4; ++i) {
    conns.push_back(std::make_unique<sctest::Db>("file:" + dir.File("s.db")));
    ASSERT_EQ(A()->create_function(
                  conns.back()->get(), "plus_one_a", 1, 0, o1->owner(), nullptr,
                  [](safeconc_ctx* c) { A()->result_int64(c, A()->arg_int64(c, 0) + 1); }, nullptr),
              SQLITE_OK);
    ASSERT_EQ(A()->create_function(
                  conns.back()->get(), "plus_one_b", 1, 0, o2->owner(), nullptr,
                  [](safeconc_ctx* c) { A()->result_int64(c, A()->arg_int64(c, 0) + 1); }, nullptr),
              SQLITE_OK);
  }
  constexpr int kRows = 100000;
  const std::string expect = std::to_string(static_cast<int64_t>(kRows) * (kRows + 1) / 2 + kRows);
  std::vector<std::thread> workers;
  std::atomic<int> wrong{0};
  std::mutex conn_mu[4];
  for (int w = 0; w < 8; ++w) {
    workers.emplace_back([&, w] {
      const std::string f = w % 2 ? "plus_one_a" : "plus_one_b";
      const std::string sql =
          "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
          "WHERE i < " +
          std::to_string(kRows) + ") SELECT sum(" + f + "(i)) FROM c";
      std::lock_guard<std::mutex> l(conn_mu[w % 4]);  // two workers share each connection
      if (conns[static_cast<size_t>(w % 4)]->Text(sql) != expect) ++wrong;
    });
  }
  for (auto& t : workers) t.join();
  EXPECT_EQ(wrong.load(), 0);
  // Nothing leaked: every task went back to the pool, both owners are counted closed.
  EXPECT_EQ(gauge("tasks_in_use"), 0);
  o1.reset();
  o2.reset();
  EXPECT_EQ(gauge("owners_open"), owners_before);
}

}  // namespace
