// coordinator_v2_test.cc - regression and property tests of coordinator v2 (issue 10): each of
// the six workloads the issue measured as worse than stock SQLite, and the eventual-fairness
// bound of safeconc_fair_ms read back from safeconc_stats().
//
// Where a promise is "never worse than stock", the test runs the same workload through the
// plain `unix` VFS in the same process (opened with vfs "unix": the extension's coordinator
// never sees those connections) and compares.
//
// Timing: only generous bounds, each commented. The one sleep that is not a bound is part of
// a scenario ("another thread commits 200 ms later"). Loop sizes shrink under sanitizers (or
// with SAFECONC_TEST_DIVISOR=n) so the file stays well inside its ctest timeout there; a
// normal build runs the whole file in well under a minute.
#include <sqlite3.h>

#include <dirent.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SCTEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SCTEST_SANITIZED 1
#endif
#endif
#ifndef SCTEST_SANITIZED
#define SCTEST_SANITIZED 0
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr bool kSanitized = SCTEST_SANITIZED != 0;

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Loop counts (never thread counts: contention is the point) divided by SAFECONC_TEST_DIVISOR,
// 4 by default under a sanitizer (TSan runs these loops ~5-15x slower), 1 otherwise.
int Scaled(int n) {
  static const int divisor = [] {
    const char* env = getenv("SAFECONC_TEST_DIVISOR");
    const int d = env != nullptr ? atoi(env) : 0;
    return d > 0 ? d : (kSanitized ? 4 : 1);
  }();
  return std::max(1, n / divisor);
}

// Starts `n` threads running body(i) together: each opens what it needs first, then all wait
// for the last one to be ready, so the contended part starts at the same moment.
template <typename Body>
void RunTogether(int n, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int i = 0; i < n; ++i) {
    pool.emplace_back([&, i] {
      body(i, [&] {
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
      });
    });
  }
  while (ready.load() < n) std::this_thread::yield();
  go.store(true);
  for (auto& th : pool) th.join();
}

// Records the first error message of many threads.
class FirstError {
 public:
  void Add(const std::string& what) {
    std::lock_guard<std::mutex> l(mu_);
    if (first_.empty()) first_ = what;
  }
  std::string Get() {
    std::lock_guard<std::mutex> l(mu_);
    return first_;
  }

 private:
  std::mutex mu_;
  std::string first_;
};

sqlite3* Open(const std::string& uri, const char* vfs = nullptr,
              int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(uri.c_str(), &db, flags, vfs);
  return db;
}

std::string LastBusy(sctest::Db& db) { return db.Text("SELECT safeconc_last_busy()"); }

// Field `name` of the "coordinator" object of `db`'s database in safeconc_stats() (PRAGMA
// safeconc_stats); nullopt when the field is missing.
std::optional<int64_t> CoordinatorStat(const std::string& stats, const std::string& name) {
  sctest::Db eval(":memory:");
  sqlite3_stmt* st = nullptr;
  std::optional<int64_t> v;
  if (sqlite3_prepare_v2(eval.get(), "SELECT json_type(?1, ?2), json_extract(?1, ?2)", -1, &st,
                         nullptr) != SQLITE_OK) {
    ADD_FAILURE() << eval.error();
    return v;
  }
  const std::string path = "$.coordinator." + name;
  sqlite3_bind_text(st, 1, stats.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, path.c_str(), -1, SQLITE_TRANSIENT);
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
    v = sqlite3_column_int64(st, 1);
  }
  sqlite3_finalize(st);
  return v;
}

// A fresh database file of one journal mode, with t(x) holding three rows.
class V2Fixture {
 protected:
  void Create(const char* journal) {
    sctest::LoadExtension();
    path_ = dir_.File("v2.db");
    uri_ = "file:" + path_;
    sctest::Db db(uri_);
    db.Must(std::string("PRAGMA journal_mode=") + journal);
    db.Must("CREATE TABLE t(x); INSERT INTO t VALUES(1), (2), (3)");
  }
  sctest::TempDir dir_;
  std::string path_, uri_;
};

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
  // run; issue 10 saw 1735-2341 of 6400), so the two are compared over interleaved rounds
  // (stock, safeconc, stock, ...) on fresh files: a drift of the machine's load hits both.
  int stock = 0, ours = 0;
  std::string rounds_text;
  for (int r = 0; r < rounds; ++r) {
    const std::string n = std::to_string(r);
    const RtwResult s =
        RunReadThenWrite(dir.File("stock" + n + ".db"), "unix", journal, threads, per);
    const RtwResult o =
        RunReadThenWrite(dir.File("safeconc" + n + ".db"), "safeconc", journal, threads, per);
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

// ---- 5. Shared cache: no hang ----------------------------------------------------------------

// Prints every thread's stack of this process: gdb if it is installed, and always the task
// list with each thread's state and kernel wait channel.
void DumpAllStacks() {
  fflush(stdout);
  fflush(stderr);
  // Allow gdb (our child's child, not our ancestor) to attach under Yama ptrace_scope=1.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  if (system("command -v gdb >/dev/null 2>&1") == 0) {
    const std::string cmd = "timeout 120 gdb -nx -batch -p " + std::to_string(getpid()) +
                            " -ex 'set pagination off' -ex 'thread apply all bt' 1>&2";
    if (system(cmd.c_str()) != 0) fprintf(stderr, "gdb failed\n");
  } else {
    fprintf(stderr, "gdb is not installed (apt-get install -y gdb): thread list only\n");
  }
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string base = std::string("/proc/self/task/") + e->d_name;
    auto slurp = [](const std::string& f) {
      std::ifstream in(f);
      std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return s;
    };
    fprintf(stderr, "--- thread %s: %s  wchan=%s\n%s", e->d_name, slurp(base + "/comm").c_str(),
            slurp(base + "/wchan").c_str(), slurp(base + "/stack").c_str());
  }
  closedir(d);
  fflush(stderr);
}

// Runs on a thread of its own: unless Done() is called before `deadline`, prints every stack
// and ends the process with exit code 1 (a hung test can only be ended from outside it).
class Watchdog {
 public:
  Watchdog(std::chrono::seconds deadline, std::string what) {
    th_ = std::thread([this, deadline, what] {
      std::unique_lock<std::mutex> l(mu_);
      if (cv_.wait_for(l, deadline, [&] { return done_; })) return;
      fprintf(stderr, "\nWATCHDOG: %s did not finish within %lld s (a hang); stacks follow.\n",
              what.c_str(), static_cast<long long>(deadline.count()));
      DumpAllStacks();
      fprintf(stderr, "WATCHDOG: failing the test binary.\n");
      _exit(1);
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    th_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread th_;
};

bool Retryable(int rc) {
  rc &= 0xff;
  return rc == SQLITE_LOCKED || rc == SQLITE_BUSY || rc == SQLITE_SCHEMA;
}

// Proves connections sharing one cache (sqlite3_enable_shared_cache semantics, WAL) can run
// triggers, DDL and inserts concurrently to the end, nothing lost; catches the deadlock of
// issue 10 case 5 (the VFS calling sqlite3_next_stmt on another connection, the one
// SQLITE_FCNTL_PDB named, while the caller held the shared btree mutex: the process hung).
TEST(CoordinatorV2SharedCache, TriggersDdlAndInsertsFinishWithoutHang) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const std::string uri = "file:" + dir.File("shared.db");
  {
    sctest::Db db(uri);
    db.Must("PRAGMA journal_mode=wal");
    db.Must(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, b BLOB); CREATE TABLE log(id INT);"
        "CREATE TABLE u(b BLOB);"
        "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES(new.id); END;");
  }
  // Normal runtime is a few seconds; 60 s (240 s under a sanitizer) is far above it and still
  // inside the ctest timeout.
  Watchdog watchdog(std::chrono::seconds(kSanitized ? 240 : 60), "the shared-cache workload");
  // SQLITE_OPEN_SHAREDCACHE is sqlite3_enable_shared_cache(1) for these opens only: the
  // process-wide switch would leak into the other tests of this binary.
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI | SQLITE_OPEN_SHAREDCACHE;
  // Two threads with private connections keep the write turn contended: only then does the
  // old coordinator look at running statements (through the wrong connection) at a WAL read.
  const int threads = 3, private_writers = 2, iterations = Scaled(150);
  std::atomic<int> retries{0}, shared_done{0}, private_ok{0};
  FirstError first;
  RunTogether(threads + private_writers, [&](int k, auto wait_for_all) {
    if (k >= threads) {
      sctest::Db db(uri);
      wait_for_all();
      while (shared_done.load() < threads) {
        const int rc = db.Exec("INSERT INTO u VALUES(randomblob(100))");
        if (rc == SQLITE_OK) {
          private_ok.fetch_add(1);
        } else if (!Retryable(rc)) {
          first.Add("private writer: " + db.error());
          return;
        }
      }
      return;
    }
    struct Done {
      std::atomic<int>& n;
      ~Done() { n.fetch_add(1); }
    } done{shared_done};
    sctest::Db db(uri, nullptr, flags);
    // Each statement group is one transaction, retried whole while another connection of the
    // cache holds a table or schema lock (SQLITE_LOCKED; sleep-retry instead of unlock_notify).
    auto run = [&](const std::string& sql) {
      for (int attempt = 0;; ++attempt) {
        const int rc = db.Exec(sql);
        if (rc == SQLITE_OK) return true;
        const std::string why = db.error() + " (" + std::to_string(rc) + ")";
        // ROLLBACK itself can meet a table lock of the shared cache: retry it too.
        for (int r = 0; !sqlite3_get_autocommit(db.get()) && r < 100000; ++r) {
          if (db.Exec("ROLLBACK") != SQLITE_OK) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }
        if (!Retryable(rc) || attempt == 100000) {
          first.Add(sql + ": " + why);
          return false;
        }
        retries.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    };
    wait_for_all();
    const std::string ks = std::to_string(k);
    for (int i = 0; i < iterations; ++i) {
      const std::string s = "s_" + ks + "_" + std::to_string(i);
      const std::string ins = "INSERT INTO t(k, b) VALUES(" + ks + ", randomblob(100))";
      if (!run(ins)) return;
      if (!run("BEGIN; CREATE TABLE " + s + "(x); CREATE INDEX " + s + "_x ON " + s +
               "(x); INSERT INTO " + s + " VALUES(1), (2); COMMIT")) {
        return;
      }
      if (!run("BEGIN; " + ins + "; " + ins + "; INSERT INTO " + s + " SELECT x + 2 FROM " + s +
               "; COMMIT")) {
        return;
      }
      if (!run("DROP TABLE " + s)) return;
    }
  });
  EXPECT_EQ(first.Get(), "");
  printf("[ shared cache ] %d retries, %d private inserts\n", retries.load(), private_ok.load());
  sctest::Db db(uri);
  EXPECT_EQ(db.Int("SELECT count(*) FROM t"), threads * iterations * 3);
  EXPECT_EQ(db.Int("SELECT count(*) FROM log"), threads * iterations * 3);
  EXPECT_EQ(db.Int("SELECT count(*) FROM u"), private_ok.load());
  EXPECT_EQ(db.Int("SELECT count(*) FROM sqlite_schema WHERE name LIKE 's\\_%' ESCAPE '\\'"), 0);
  EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok");
}

// ---- 6. node:sqlite's default: busy_timeout(0) after open ---------------------------------

// Proves WAL autocommit inserts from 8 threads whose binding cleared the busy handler
// (node:sqlite calls sqlite3_busy_timeout(db, 0)) never fail, over 5 rounds; catches the stray
// "database is locked" of issue 10 case 6 (1 of 1600 in about one run in three).
TEST(CoordinatorV2NodeDefault, WalAutocommitInsertsWithBusyTimeoutZeroNeverFail) {
  sctest::LoadExtension();
  const int threads = 8, per = Scaled(200), rounds = 5;
  for (int round = 0; round < rounds; ++round) {
    sctest::TempDir dir;
    const std::string uri = "file:" + dir.File("node.db");
    sctest::Db main(uri);
    main.Must("PRAGMA journal_mode=wal; CREATE TABLE t(b BLOB)");
    std::atomic<int> ok{0}, failed{0};
    FirstError first;
    RunTogether(threads, [&](int, auto wait_for_all) {
      sqlite3* db = Open(uri);
      sqlite3_busy_timeout(db, 0);
      wait_for_all();
      for (int i = 0; i < per; ++i) {
        if (sqlite3_exec(db, "INSERT INTO t VALUES(randomblob(100))", nullptr, nullptr, nullptr) ==
            SQLITE_OK) {
          ok.fetch_add(1);
        } else {
          failed.fetch_add(1);
          first.Add(sqlite3_errmsg(db));
        }
      }
      sqlite3_close(db);
    });
    EXPECT_EQ(failed.load(), 0) << "round " << round << ": " << first.Get();
    EXPECT_EQ(main.Int("SELECT count(*) FROM t"), ok.load());
    EXPECT_EQ(main.Text("PRAGMA integrity_check"), "ok");
    if (failed.load() != 0) break;
  }
}

// ---- Fairness property ------------------------------------------------------------------------

// How far past safeconc_fair_ms an overtaken waiter may have waited: the coordinator compares
// the waiter's wait against the knob when it lets a running writer take the turn, so any
// excess is the time between that decision and the moment the stats see it, i.e. scheduling
// noise. On this shared 2-core machine (4 engineers building) a runnable thread can wait a
// few CFS periods (~6-24 ms each) for a core: 25 ms; under a sanitizer everything is 5-15x
// slower: 100 ms. A coordinator that barges without a bound shows waits of hundreds of ms at
// 32 threads, so the bound still catches it.
constexpr int64_t kFairToleranceUs = (kSanitized ? 100 : 25) * 1000;

enum class FairWorkload { kAutocommit, kBeginImmediate };

struct FairParam {
  int fair_ms;
  const char* journal;
  FairWorkload workload;
};

void PrintTo(const FairParam& p, std::ostream* os) {
  *os << "safeconc_fair_ms=" << p.fair_ms << ", " << p.journal
      << (p.workload == FairWorkload::kAutocommit ? ", autocommit" : ", BEGIN IMMEDIATE");
}

class CoordinatorV2Fairness : public testing::TestWithParam<FairParam> {
 protected:
  void SetUp() override { sctest::LoadExtension(); }
};

// Proves that with safeconc_fair_ms=F, 32 threads x 200 transactions all succeed, nothing is
// lost, and no waiter was overtaken after waiting longer than F (+ noise), with no barging at
// all for F=0 (strict FIFO); catches unbounded barging (starvation) and a FIFO mode that
// still lets running writers take the turn.
TEST_P(CoordinatorV2Fairness, NoWaiterOvertakenAfterFairMs) {
  const FairParam prm = GetParam();
  sctest::TempDir dir;
  const std::string uri =
      "file:" + dir.File("fair.db") + "?safeconc_fair_ms=" + std::to_string(prm.fair_ms);
  sctest::Db main(uri);  // keeps the coordinator (and its stats) alive across the run
  ASSERT_EQ(main.open_rc(), SQLITE_OK) << main.error();
  ASSERT_EQ(main.VfsName(), "safeconc/unix");
  main.Must(std::string("PRAGMA journal_mode=") + prm.journal);
  main.Must("PRAGMA synchronous=OFF");
  main.Must(
      "CREATE TABLE t(id INTEGER PRIMARY KEY, thread INT, i INT);"
      "CREATE TABLE counter(n INT); INSERT INTO counter VALUES(0);"
      "CREATE TRIGGER bump AFTER INSERT ON t BEGIN UPDATE counter SET n = n + 1; END;");
  const int threads = 32, per = Scaled(200);
  std::atomic<int> ok{0}, failed{0};
  FirstError first;
  RunTogether(threads, [&](int t, auto wait_for_all) {
    sqlite3* db = Open(uri);
    sqlite3_exec(db, "PRAGMA synchronous=OFF", nullptr, nullptr, nullptr);
    wait_for_all();
    for (int i = 0; i < per; ++i) {
      std::string sql =
          "INSERT INTO t(thread, i) VALUES(" + std::to_string(t) + "," + std::to_string(i) + ")";
      if (prm.workload == FairWorkload::kBeginImmediate) sql = "BEGIN IMMEDIATE;" + sql + ";COMMIT";
      if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK) {
        ok.fetch_add(1);
      } else {
        failed.fetch_add(1);
        first.Add(sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      }
    }
    sqlite3_close(db);
  });
  EXPECT_EQ(failed.load(), 0) << first.Get();
  EXPECT_EQ(ok.load(), threads * per);
  EXPECT_EQ(main.Int("SELECT count(*) FROM t"), ok.load());
  EXPECT_EQ(main.Int("SELECT n FROM counter"), ok.load());
  EXPECT_EQ(main.Text("PRAGMA integrity_check"), "ok");

  const std::string stats = main.Text("PRAGMA safeconc_stats");
  const std::optional<int64_t> barges = CoordinatorStat(stats, "barges");
  const std::optional<int64_t> overtaken = CoordinatorStat(stats, "max_overtaken_wait_us");
  const std::optional<int64_t> handoffs = CoordinatorStat(stats, "handoffs");
  ASSERT_TRUE(barges && overtaken && handoffs)
      << "coordinator v2 stats fields (barges, max_overtaken_wait_us, handoffs) missing: " << stats;
  printf("[ fair_ms=%d %s ] barges %lld, handoffs %lld, max_overtaken_wait_us %lld\n", prm.fair_ms,
         prm.journal, static_cast<long long>(*barges), static_cast<long long>(*handoffs),
         static_cast<long long>(*overtaken));
  EXPECT_LE(*overtaken, prm.fair_ms * 1000 + kFairToleranceUs) << stats;
  if (prm.fair_ms == 0) {
    EXPECT_EQ(*barges, 0) << "safeconc_fair_ms=0 must be strict FIFO: " << stats;
  }
}

std::vector<FairParam> FairParams() {
  std::vector<FairParam> v;
  for (int f : {0, 2, 5}) {
    for (const char* j : {"wal", "delete"}) {
      for (FairWorkload w : {FairWorkload::kAutocommit, FairWorkload::kBeginImmediate}) {
        v.push_back({f, j, w});
      }
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Knob, CoordinatorV2Fairness, testing::ValuesIn(FairParams()),
                         [](const testing::TestParamInfo<FairParam>& i) {
                           return "fair_ms_" + std::to_string(i.param.fair_ms) + "_" +
                                  i.param.journal +
                                  (i.param.workload == FairWorkload::kAutocommit
                                       ? "_autocommit"
                                       : "_begin_immediate");
                         });

}  // namespace
