// coordinator_v2_test.cc - regression tests of coordinator v2 (issue 10), cases 1 to 4 of
// the six workloads the issue measured as worse than stock SQLite: deferred read-then-write,
// a transaction continued by another thread, the binding's busy policy, and reads under
// safeconc_txn=serial/immediate. coordinator_v2_many_writers_test.cc (the same executable)
// has cases 5 and 6 and the eventual-fairness bound of safeconc_fair_ms.
//
// Where a promise is "never worse than stock", the test runs the same workload through the
// plain `unix` VFS in the same process (opened with vfs "unix": the extension's coordinator
// never sees those connections) and compares.
//
// Timing: only generous bounds, each commented. The one sleep that is not a bound is part of
// a scenario ("another thread commits 200 ms later"). Loop sizes shrink under sanitizers (or
// with SAFECONC_TEST_DIVISOR=n) so the file stays well inside its ctest timeout there; a
// normal build runs the whole file in well under a minute.
#include "tests/coordinator_v2_util.h"

namespace v2test {
namespace {

// ---- 1. Deferred read-then-write: never more fast failures than stock -----------------------

struct RtwResult {
  int ok = 0, failed = 0;
  std::string first_error;
};

// `threads` x `per` of Django's default transaction shape on `path` through `vfs`, each
// connection with busy_timeout 5000: BEGIN; SELECT n FROM c; INSERT a 100-byte blob;
// UPDATE c SET n = <read> + 1; COMMIT. A failed one is rolled back and counted.
RtwResult RunReadThenWrite(const std::string& path, const char* vfs, const char* journal,
                           int threads, int per) {
  const std::string uri = "file:" + path;
  {
    sctest::Db db(uri, vfs);
    db.Must(std::string("PRAGMA journal_mode=") + journal);
    db.Must("CREATE TABLE c(n INTEGER); INSERT INTO c VALUES(0); CREATE TABLE t(b BLOB)");
  }
  std::atomic<int> ok{0}, failed{0};
  FirstError first;
  RunTogether(threads, [&](int, auto wait_for_all) {
    sqlite3* db = Open(uri, vfs);
    sqlite3_busy_timeout(db, 5000);
    // synchronous stays at its default (FULL), as issue 10 measured: the commit's fsync is
    // what lets stock's busy handler space the readers out; with OFF both VFSes fail ~80-90%
    // and the comparison cannot tell a 3.5x regression from noise.
    sqlite3_stmt* sel = nullptr;
    sqlite3_stmt* upd = nullptr;
    sqlite3_prepare_v2(db, "SELECT n FROM c", -1, &sel, nullptr);
    sqlite3_prepare_v2(db, "UPDATE c SET n = ?1", -1, &upd, nullptr);
    wait_for_all();
    for (int i = 0; i < per; ++i) {
      int rc = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
      int64_t n = -1;
      if (rc == SQLITE_OK) {
        rc = sqlite3_step(sel);
        if (rc == SQLITE_ROW) n = sqlite3_column_int64(sel, 0), rc = SQLITE_OK;
        sqlite3_reset(sel);
      }
      if (rc == SQLITE_OK) {
        rc = sqlite3_exec(db, "INSERT INTO t VALUES(randomblob(100))", nullptr, nullptr, nullptr);
      }
      if (rc == SQLITE_OK) {
        sqlite3_bind_int64(upd, 1, n + 1);
        rc = sqlite3_step(upd);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
        sqlite3_reset(upd);
      }
      if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) {
        ok.fetch_add(1);
      } else {
        failed.fetch_add(1);
        if ((rc & 0xff) != SQLITE_BUSY) first.Add(sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db)) {
          sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
        }
      }
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    sqlite3_close(db);
  });
  RtwResult r;
  r.ok = ok.load();
  r.failed = failed.load();
  r.first_error = first.Get();
  sctest::Db db(uri, vfs);
  EXPECT_EQ(db.Int("SELECT n FROM c"), r.ok) << vfs << ": lost or doubled update";
  EXPECT_EQ(db.Int("SELECT count(*) FROM t"), r.ok) << vfs;
  EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok") << vfs;
  EXPECT_EQ(r.first_error, "") << vfs << ": a failure other than SQLITE_BUSY";
  return r;
}

class CoordinatorV2ReadThenWrite : public testing::TestWithParam<const char*> {};

// Proves a deferred read-then-write workload fails no more often through safeconc than through
// stock SQLite in the same run, with nothing lost; catches upgrades refused because another
// connection merely waits for the turn (issue 10 case 1: 3.5x stock's failures).
TEST_P(CoordinatorV2ReadThenWrite, FailsNoMoreOftenThanStock) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const int threads = 16, per = Scaled(50), rounds = 5;
  const char* journal = GetParam();
  // Stock's own count swings widely between runs in rollback mode (here 160-1050 of 1600 per
  // run; issue 10 saw 1735-2341 of 6400), so the two are compared over interleaved rounds on
  // fresh files: a drift of the machine's load hits both. Which one runs first alternates, so
  // that an effect of the order (the later run of a pair meets the disk still writing back
  // the earlier one's files) cannot fall on one peer only.
  int stock = 0, ours = 0;
  std::string rounds_text;
  for (int r = 0; r < rounds; ++r) {
    const std::string n = std::to_string(r);
    RtwResult s, o;
    auto run_stock = [&] {
      s = RunReadThenWrite(dir.File("stock" + n + ".db"), "unix", journal, threads, per);
    };
    auto run_ours = [&] {
      o = RunReadThenWrite(dir.File("safeconc" + n + ".db"), "safeconc", journal, threads, per);
    };
    if (r % 2 == 0) {
      run_stock();
      run_ours();
    } else {
      run_ours();
      run_stock();
    }
    stock += s.failed;
    ours += o.failed;
    rounds_text += " " + std::to_string(s.failed) + "/" + std::to_string(o.failed);
  }
  const int total = rounds * threads * per;
  printf(
      "[ read-then-write %s, %d x %d x %d rounds ] failures: stock %d, safeconc %d of %d "
      "(per round stock/safeconc:%s)\n",
      journal, threads, per, rounds, stock, ours, total, rounds_text.c_str());
  // Tolerance: 2x stock plus 10% of all transactions. Both peers' failure counts swing by
  // several times from round to round in rollback mode (seen: stock 5 to 541 of 800 in one
  // run, and more on a machine running other tests), and five rounds leave much of that; the
  // bug this catches failed 3.5x as often as stock (2000+ of 2400 against 350-880), and
  // would fail here at any stock count up to about 40% of all transactions.
  EXPECT_LE(ours, stock * 2 + total / 10)
      << "safeconc failed " << ours << " of " << total << ", stock " << stock;
}

INSTANTIATE_TEST_SUITE_P(JournalModes, CoordinatorV2ReadThenWrite,
                         testing::Values("delete", "wal"));

// One process, three kinds of connection on one file: autocommit INSERTs (default mode, their
// turn taken for a writing statement), deferred read-then-writes (which may go past such a
// holder to the base lock, as in stock SQLite), and safeconc_txn=immediate read-then-writes,
// which must never fail. A pass past the holder used to leave the turn free for the next
// connection while the upgrade held the base write lock: an immediate read-then-write granted
// it then met that lock at its write and failed (found in review). Would catch the turn
// granted during a pass (in the runs that hit the window), and lost or doubled updates.
TEST_P(CoordinatorV2ReadThenWrite, ImmediateNeverFailsBesideWritersAndUpgrades) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const char* journal = GetParam();
  const std::string uri = "file:" + dir.File("mix.db");
  {
    sctest::Db db(uri);
    db.Must(std::string("PRAGMA journal_mode=") + journal);
    db.Must("CREATE TABLE c(n INTEGER); INSERT INTO c VALUES(0); CREATE TABLE t(b BLOB)");
  }
  const int per = Scaled(150);
  constexpr int kInserters = 4, kDeferred = 4, kImmediate = 4;
  std::atomic<int> inserted{0}, rtw_ok{0}, deferred_failed{0}, immediate_failed{0};
  FirstError first;
  RunTogether(kInserters + kDeferred + kImmediate, [&](int i, auto wait_for_all) {
    const bool inserter = i < kInserters;
    const bool immediate = i >= kInserters + kDeferred;
    sqlite3* db = Open(immediate ? uri + "?safeconc_txn=immediate" : uri);
    sqlite3_busy_timeout(db, 10000);
    wait_for_all();
    for (int k = 0; k < per; ++k) {
      if (inserter) {
        if (sqlite3_exec(db, "INSERT INTO t VALUES(randomblob(50))", nullptr, nullptr, nullptr) ==
            SQLITE_OK) {
          inserted.fetch_add(1);
        } else {
          first.Add(std::string("inserter: ") + sqlite3_errmsg(db));
        }
        continue;
      }
      int rc = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
      sqlite3_stmt* sel = nullptr;
      int64_t n = -1;
      if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, "SELECT n FROM c", -1, &sel, nullptr);
      if (rc == SQLITE_OK && sqlite3_step(sel) == SQLITE_ROW) n = sqlite3_column_int64(sel, 0);
      sqlite3_finalize(sel);
      if (rc == SQLITE_OK && n < 0) rc = SQLITE_ERROR;
      if (rc == SQLITE_OK) {
        const std::string upd = "UPDATE c SET n = " + std::to_string(n + 1);
        rc = sqlite3_exec(db, upd.c_str(), nullptr, nullptr, nullptr);
      }
      if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) {
        rtw_ok.fetch_add(1);
        continue;
      }
      if (immediate) {
        immediate_failed.fetch_add(1);
        first.Add(std::string("immediate: ") + sqlite3_errmsg(db));
      } else {
        deferred_failed.fetch_add(1);
        if ((rc & 0xff) != SQLITE_BUSY) first.Add(std::string("deferred: ") + sqlite3_errmsg(db));
      }
      if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    sqlite3_close(db);
  });
  printf(
      "[ mixed %s ] inserts %d, read-then-write committed %d, deferred failed %d, immediate "
      "failed %d\n",
      journal, inserted.load(), rtw_ok.load(), deferred_failed.load(), immediate_failed.load());
  EXPECT_EQ(immediate_failed.load(), 0) << first.Get();
  EXPECT_EQ(first.Get(), "");
  EXPECT_EQ(inserted.load(), kInserters * per);
  sctest::Db db(uri);
  EXPECT_EQ(db.Int("SELECT n FROM c"), rtw_ok.load()) << "lost or doubled update";
  EXPECT_EQ(db.Int("SELECT count(*) FROM t"), inserted.load());
  EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok");
}

class CoordinatorV2ReaderDeference : public V2Fixture, public testing::Test {};

// Rollback mode: an autocommit INSERT about to take its write lock while another connection
// has BEGIN; SELECT open waits for that read transaction (up to its safeconc_fair_ms, here
// 1 s so a loaded machine cannot end the wait first), and when the read transaction writes,
// the write goes past it and succeeds; the INSERT is retried after it. Stock SQLite fails that
// write whenever a writer took RESERVED first, and writers handed the turn at once took it
// every time. Would catch a writer that does not defer (the read transaction's INSERT fails
// with SQLITE_BUSY after the wait below gives up), or one that goes on waiting after the pass
// (the read transaction's COMMIT then waits for its SHARED lock until the bound).
TEST_F(CoordinatorV2ReaderDeference, ReadTransactionWritesPastAWaitingWriter) {
  Create("delete");
  sctest::Db reader(uri_);
  sqlite3_busy_timeout(reader.get(), 5000);
  reader.Must("BEGIN");
  EXPECT_EQ(reader.Int("SELECT count(*) FROM t"), 3);
  int writer_rc = -1;
  std::string writer_error;
  std::thread writer([&] {
    sctest::Db db(uri_ + "?safeconc_fair_ms=1000");
    sqlite3_busy_timeout(db.get(), 5000);
    writer_rc = sqlite3_exec(db.get(), "INSERT INTO t VALUES('writer')", nullptr, nullptr, nullptr);
    if (writer_rc != SQLITE_OK) writer_error = db.error();
  });
  // Until the writer defers (bounded: without the deferral it never does, and the writer then
  // holds RESERVED, waiting at its commit for this read lock).
  sctest::Db watch(uri_);
  for (int i = 0; i < 2000; ++i) {
    const std::string stats = watch.Text("PRAGMA safeconc_stats");
    if (CoordinatorStat(stats, "debug.deferring").value_or(0) == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int rc =
      sqlite3_exec(reader.get(), "INSERT INTO t VALUES('reader')", nullptr, nullptr, nullptr);
  EXPECT_EQ(rc, SQLITE_OK) << reader.error();
  if (rc == SQLITE_OK) {
    reader.Must("COMMIT");
  } else {
    reader.Must("ROLLBACK");
  }
  writer.join();
  EXPECT_EQ(writer_rc, SQLITE_OK) << writer_error;
  EXPECT_EQ(watch.Int("SELECT count(*) FROM t"), 5);
  const std::string stats = watch.Text("PRAGMA safeconc_stats");
  // Once at least (its retry does not wait again, but the test does not depend on that).
  EXPECT_GE(CoordinatorStat(stats, "reader_deferrals").value_or(0), 1) << stats;
  EXPECT_EQ(CoordinatorStat(stats, "upgrade_passes"), 1) << stats;
  EXPECT_EQ(CoordinatorStat(stats, "debug.read_txns"), 0) << stats;
}

// A writer does not defer to a read transaction last used on its own thread (an application
// that reads in one connection and writes in another on the same thread): it would wait for
// itself. Its write then fails at the commit as in stock SQLite, after its busy timeout, not
// after an extra safeconc_fair_ms. Would catch the deferral counted, or the wait added.
TEST_F(CoordinatorV2ReaderDeference, NotToAReadTransactionOfItsOwnThread) {
  Create("delete");
  sctest::Db reader(uri_);
  reader.Must("BEGIN");
  EXPECT_EQ(reader.Int("SELECT count(*) FROM t"), 3);
  sctest::Db writer(uri_ + "?safeconc_fair_ms=1000");
  sqlite3_busy_timeout(writer.get(), 50);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(sqlite3_exec(writer.get(), "INSERT INTO t VALUES(4)", nullptr, nullptr, nullptr) & 0xff,
            SQLITE_BUSY);
  // A deferral here would add the whole 1000 ms bound to the 50 ms timeout; 900 ms leaves
  // room for a loaded machine.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(900));
  reader.Must("COMMIT");
  const std::string stats = reader.Text("PRAGMA safeconc_stats");
  EXPECT_EQ(CoordinatorStat(stats, "reader_deferrals"), 0) << stats;
  EXPECT_EQ(reader.Int("SELECT count(*) FROM t"), 3);
}

// WAL: a connection holding the database file's EXCLUSIVE lock never waits for the write
// turn. Another connection may hold the turn while it waits for that very lock: it took the
// turn at its lock period's start (safeconc_txn=serial, or a writing statement while the turn
// was busy), then met the EXCLUSIVE lock at SHARED. threadtest3's walthread2 hung so: one
// thread closing the WAL (journal_mode=DELETE, whose checkpoint reads the WAL-index under
// EXCLUSIVE) waited for the turn of a thread waiting for its lock, both forever (its busy
// handler never gives up). locking_mode=EXCLUSIVE holds that lock between statements, which
// lets the test build the same state in order. Would catch the wait: A's busy handler runs
// (the turn wait calls it between tries), and without the handler's limit A's INSERT and B's
// SELECT would wait for each other for good.
class CoordinatorV2FileLockHolder : public V2Fixture, public testing::Test {};

TEST_F(CoordinatorV2FileLockHolder, WalConnectionUnderExclusiveLockNeverWaitsForTheTurn) {
  Create("wal");
  auto a = std::make_unique<sctest::Db>(uri_);
  // Its WAL-index in shared memory first (opened under locking_mode=EXCLUSIVE, it would live
  // in the heap, without barriers).
  EXPECT_EQ(a->Int("SELECT count(*) FROM t"), 3);
  a->Must("PRAGMA locking_mode=EXCLUSIVE");
  a->Must("INSERT INTO t VALUES(4)");  // takes the database file's EXCLUSIVE lock, and keeps it
  int b_rc = -1;
  int64_t b_count = -1;
  std::string b_error;
  std::thread b_thread([&] {
    sctest::Db b(uri_ + "?safeconc_txn=serial");  // takes the turn at its read's start
    sqlite3_busy_timeout(b.get(), 20000);
    sqlite3_stmt* st = nullptr;
    b_rc = sqlite3_prepare_v2(b.get(), "SELECT count(*) FROM t", -1, &st, nullptr);
    if (b_rc == SQLITE_OK) {
      b_rc = sqlite3_step(st);
      if (b_rc == SQLITE_ROW) b_count = sqlite3_column_int64(st, 0);
    }
    if (b_rc != SQLITE_ROW) b_error = b.error();
    sqlite3_finalize(st);
  });
  // Until B holds the turn and waits for SHARED (bounded: it does so within its first try).
  sctest::Db watch(uri_);
  bool b_waits = false;
  for (int i = 0; i < 5000 && !b_waits; ++i) {
    const std::string stats = watch.Text("PRAGMA safeconc_stats");
    b_waits = CoordinatorStat(stats, "debug.change_waiters").value_or(0) >= 1 &&
              stats.find("\"write_turn\":{") != std::string::npos;
    if (!b_waits) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(b_waits) << watch.Text("PRAGMA safeconc_stats");
  // A's busy handler: counts its calls, and gives up after 200 (so that the bug fails the
  // test instead of hanging it).
  struct Calls {
    int n = 0;
  } calls;
  sqlite3_busy_handler(
      a->get(),
      [](void* arg, int) {
        Calls* c = static_cast<Calls*>(arg);
        sqlite3_sleep(1);
        return ++c->n < 200 ? 1 : 0;
      },
      &calls);
  // Closes the WAL: its checkpoint reads the WAL-index header under the EXCLUSIVE lock.
  EXPECT_EQ(a->Text("PRAGMA journal_mode=DELETE"), "delete") << a->error();
  EXPECT_EQ(calls.n, 0) << "A waited (for the turn B holds while it waits for A's lock)";
  a.reset();  // releases the EXCLUSIVE lock: B reads
  b_thread.join();
  EXPECT_EQ(b_rc, SQLITE_ROW) << b_error;
  EXPECT_EQ(b_count, 4);
}

// ---- 2. A transaction continued by another thread -----------------------------------------

struct HandoffParam {
  const char* journal;
  bool binding_timeout;  // B set busy_timeout(5000) itself; otherwise it set nothing
};

void PrintTo(const HandoffParam& p, std::ostream* os) {
  *os << p.journal << (p.binding_timeout ? ", busy_timeout 5000" : ", no handler");
}

class CoordinatorV2Handoff : public V2Fixture, public testing::TestWithParam<HandoffParam> {
 protected:
  void SetUp() override { Create(GetParam().journal); }
};

// Proves a write on connection B waits for connection A's transaction, begun on this thread
// and committed 200 ms later by another thread, and then succeeds, as with stock; catches
// refusals by thread identity (issue 10 case 2: B failed in 1 ms with self_deadlock).
TEST_P(CoordinatorV2Handoff, WriteWaitsForTransactionCommittedByAnotherThread) {
  sctest::Db a(uri_);
  sctest::Db b(uri_);
  if (GetParam().binding_timeout) sqlite3_busy_timeout(b.get(), 5000);
  a.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('a')");
  std::atomic<bool> committing{false};
  std::atomic<int> commit_rc{-1};
  sctest::Latch started;
  std::thread pool_thread([&] {
    started.Open();
    // The scenario itself: the pool thread finishes A's transaction 200 ms later.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    committing.store(true);
    commit_rc = a.Exec("COMMIT");
  });
  started.Wait();
  const Clock::time_point start = Clock::now();
  const int rc = b.Exec("INSERT INTO t VALUES('b')");
  const int64_t ms = MsSince(start);
  const bool after_commit = committing.load();
  pool_thread.join();
  EXPECT_EQ(rc, SQLITE_OK) << "after " << ms << " ms: " << b.error() << " " << LastBusy(b);
  EXPECT_EQ(commit_rc.load(), SQLITE_OK) << a.error();
  if (rc == SQLITE_OK) {
    EXPECT_TRUE(after_commit) << "B wrote while A still held the write lock";
    // B started right after the pool thread began its 200 ms; 150 allows for clock
    // granularity. The upper bound is 20x the hold, for a loaded machine.
    EXPECT_GE(ms, 150);
    EXPECT_LT(ms, 4000);
  }
  EXPECT_EQ(a.Int("SELECT count(*) FROM t"), rc == SQLITE_OK ? 5 : 4);
  EXPECT_EQ(a.Text("PRAGMA integrity_check"), "ok");
}

INSTANTIATE_TEST_SUITE_P(Modes, CoordinatorV2Handoff,
                         testing::Values(HandoffParam{"delete", true},
                                         HandoffParam{"delete", false}, HandoffParam{"wal", true},
                                         HandoffParam{"wal", false}),
                         [](const testing::TestParamInfo<HandoffParam>& i) {
                           return std::string(i.param.journal) +
                                  (i.param.binding_timeout ? "_busy_timeout_5000" : "_no_handler");
                         });

// ---- 3. The binding's busy policy ------------------------------------------------------------

// Holds the write lock (BEGIN IMMEDIATE + a write) on `uri` through `vfs`, on this thread or on
// a thread of its own, until destroyed.
class WriteLockHolder {
 public:
  WriteLockHolder(const std::string& uri, const char* vfs, bool own_thread) {
    if (!own_thread) {
      db_ = std::make_unique<sctest::Db>(uri, vfs);
      db_->Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('holder')");
      return;
    }
    th_ = std::thread([this, uri, vfs] {
      sctest::Db db(uri, vfs);
      db.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('holder')");
      holding_.Open();
      release_.Wait();
      db.Must("COMMIT");
    });
    holding_.Wait();
  }
  ~WriteLockHolder() {
    if (db_) db_->Must("COMMIT");
    if (th_.joinable()) {
      release_.Open();
      th_.join();
    }
  }

 private:
  std::unique_ptr<sctest::Db> db_;
  sctest::Latch holding_, release_;
  std::thread th_;
};

struct BusyParam {
  const char* journal;
  bool holder_on_other_thread;
};

void PrintTo(const BusyParam& p, std::ostream* os) {
  *os << p.journal
      << (p.holder_on_other_thread ? ", holder on another thread" : ", holder on this thread");
}

std::string BusyName(const testing::TestParamInfo<BusyParam>& i) {
  return std::string(i.param.journal) +
         (i.param.holder_on_other_thread ? "_holder_other_thread" : "_holder_same_thread");
}

class CoordinatorV2BusyPolicy : public V2Fixture, public testing::TestWithParam<BusyParam> {
 protected:
  void SetUp() override { Create(GetParam().journal); }
  // B's autocommit write while A holds the write lock: the result code and the milliseconds.
  std::pair<int, int64_t> BlockedWrite(sctest::Db& b) {
    WriteLockHolder a(uri_, nullptr, GetParam().holder_on_other_thread);
    const Clock::time_point start = Clock::now();
    const int rc = b.Exec("INSERT INTO t VALUES('b')");
    return {rc, MsSince(start)};
  }
};

// Proves a binding's busy_timeout(1500) makes a blocked write fail after about 1.5 s; catches a
// wait that ignores the binding's timeout (issue 10 case 3: failed after 0 ms on one thread,
// and safeconc_timeout's 5 s is waited instead when the holder is on another thread).
TEST_P(CoordinatorV2BusyPolicy, BindingTimeoutBoundsTheWait) {
  sctest::Db b(uri_);
  sqlite3_busy_timeout(b.get(), 1500);
  const auto [rc, ms] = BlockedWrite(b);
  EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << b.error();
  // About 1500 ms: the lower bound is two thirds of it (stock's handler counts the delays it
  // asked for, so it never gives up early by more than one 100 ms step); the upper bound
  // allows 2.5 s of scheduling noise on a loaded machine, yet is below safeconc_timeout.
  EXPECT_GE(ms, 1000) << LastBusy(b);
  EXPECT_LT(ms, 4000) << LastBusy(b);
}

// Proves a binding's short busy_timeout(100) is not stretched to safeconc_timeout (5000 ms) nor
// cut to nothing; catches safeconc_timeout overriding a timeout the binding set.
TEST_P(CoordinatorV2BusyPolicy, ShortBindingTimeoutIsNotStretched) {
  sctest::Db b(uri_);
  sqlite3_busy_timeout(b.get(), 100);
  const auto [rc, ms] = BlockedWrite(b);
  EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << b.error();
  // Half of 100 ms at least (not "at once"); far below 5000 ms, with room for a loaded machine.
  EXPECT_GE(ms, 50) << LastBusy(b);
  EXPECT_LT(ms, 1500) << LastBusy(b);
}

// Counts its calls and gives up at the 4th (count is the number of earlier calls).
int GiveUpAtFourthCall(void* calls, int count) {
  static_cast<std::atomic<int>*>(calls)->fetch_add(1);
  if (count >= 3) return 0;
  sqlite3_sleep(10);
  return 1;
}

// Proves a binding's own busy handler is called as often through safeconc as through stock
// (4 times for one that gives up at its 4th call); catches a handler skipped (fast failure) or
// called more or fewer times by the coordinator's own waiting.
TEST_P(CoordinatorV2BusyPolicy, CustomHandlerCalledAsOftenAsStock) {
  auto run = [&](const char* vfs) {
    std::atomic<int> calls{0};
    sctest::Db b(uri_, vfs);
    sqlite3_busy_handler(b.get(), GiveUpAtFourthCall, &calls);
    WriteLockHolder a(uri_, vfs, GetParam().holder_on_other_thread);
    const int rc = b.Exec("INSERT INTO t VALUES('b')");
    EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << vfs << ": " << b.error();
    return calls.load();
  };
  const int stock = run("unix");
  const int ours = run("safeconc");
  EXPECT_EQ(stock, 4) << "the scenario itself changed";
  EXPECT_EQ(ours, stock) << "handler calls: stock " << stock << ", safeconc " << ours;
}

INSTANTIATE_TEST_SUITE_P(Modes, CoordinatorV2BusyPolicy,
                         testing::Values(BusyParam{"delete", false}, BusyParam{"delete", true},
                                         BusyParam{"wal", false}, BusyParam{"wal", true}),
                         BusyName);

// ---- 4. safeconc_txn=serial/immediate never fail a read stock serves -----------------------

struct ReadParam {
  const char* journal;
  const char* txn;       // safeconc_txn of both connections
  bool binding_timeout;  // B's 500 ms come from busy_timeout(500), else from safeconc_timeout
};

void PrintTo(const ReadParam& p, std::ostream* os) {
  *os << p.journal << ", safeconc_txn=" << p.txn
      << (p.binding_timeout ? ", busy_timeout 500" : ", safeconc_timeout=500");
}

class CoordinatorV2TurnModes : public V2Fixture, public testing::TestWithParam<ReadParam> {
 protected:
  void SetUp() override { Create(GetParam().journal); }
};

// Proves that while connection A holds the write turn (same thread), connection B of
// safeconc_txn=serial/immediate can prepare and run SELECT count(*) and sees the committed
// rows, as stock serves it; catches a read failed for want of the turn (issue 10 case 4:
// sqlite3_prepare_v2 returned SQLITE_BUSY, and python3-apsw aborted).
TEST_P(CoordinatorV2TurnModes, ReadWhileAnotherConnectionHoldsTheTurnIsServed) {
  const ReadParam prm = GetParam();
  const std::string mode = std::string("?safeconc_txn=") + prm.txn;
  sctest::Db a(uri_ + mode);
  a.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES(4)");
  sctest::Db b(uri_ + mode + (prm.binding_timeout ? "" : "&safeconc_timeout=500"));
  if (prm.binding_timeout) sqlite3_busy_timeout(b.get(), 500);
  const bool explicit_txn = std::string(prm.txn) == "immediate";  // immediate: explicit only
  const Clock::time_point start = Clock::now();
  if (explicit_txn) {
    ASSERT_EQ(b.Exec("BEGIN"), SQLITE_OK) << b.error();
  }
  sqlite3_stmt* st = nullptr;
  const int prepare_rc = sqlite3_prepare_v2(b.get(), "SELECT count(*) FROM t", -1, &st, nullptr);
  int step_rc = -1;
  int64_t count = -1;
  if (prepare_rc == SQLITE_OK) {
    step_rc = sqlite3_step(st);
    if (step_rc == SQLITE_ROW) count = sqlite3_column_int64(st, 0);
  }
  const int64_t ms = MsSince(start);
  sqlite3_finalize(st);
  EXPECT_EQ(prepare_rc, SQLITE_OK) << b.error() << " " << LastBusy(b);
  EXPECT_EQ(step_rc, SQLITE_ROW) << b.error() << " " << LastBusy(b);
  EXPECT_EQ(count, 3) << "the read must see the committed rows only";
  // The read may wait for the turn up to B's 500 ms timeout before going on without it (as the
  // contract allows); 2 s is four times that, for a loaded machine.
  EXPECT_LT(ms, 2000);
  if (explicit_txn) b.Exec("COMMIT");
  a.Must("COMMIT");
  EXPECT_EQ(b.Int("SELECT count(*) FROM t"), 4);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, CoordinatorV2TurnModes,
    testing::Values(ReadParam{"delete", "serial", false}, ReadParam{"delete", "serial", true},
                    ReadParam{"wal", "serial", false}, ReadParam{"wal", "serial", true},
                    ReadParam{"delete", "immediate", false}, ReadParam{"delete", "immediate", true},
                    ReadParam{"wal", "immediate", false}, ReadParam{"wal", "immediate", true}),
    [](const testing::TestParamInfo<ReadParam>& i) {
      return std::string(i.param.journal) + "_" + i.param.txn +
             (i.param.binding_timeout ? "_busy_timeout_500" : "_safeconc_timeout_500");
    });

}  // namespace
}  // namespace v2test
