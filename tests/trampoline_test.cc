// trampoline_test.cc - the UDF trampoline table through the built .so, as a binding uses it:
// callbacks run on their owner thread, values round-trip in both paths, aggregates and
// window functions match native ones, in_callback() answers, bad arguments are refused, and
// many workers over several owners stay correct. trampoline_lifecycle_test.cc (the same
// executable) has the waits, closes and destructors.
#include "tests/trampoline_fixture.h"

namespace trampoline_test {
namespace {

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
  o1.reset();
  o2.reset();
  // Nothing leaked: every task went back to the pool, both owners are counted closed. Checked
  // once the owner threads are joined: an owner drops its reference to a task just after it
  // wakes the worker, so the gauge may still count that task for a moment after the worker's
  // statement returns.
  EXPECT_EQ(gauge("tasks_in_use"), 0);
  EXPECT_EQ(gauge("owners_open"), owners_before);
}

}  // namespace
}  // namespace trampoline_test
