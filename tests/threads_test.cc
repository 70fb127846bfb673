// threads_test.cc - multi-threaded sanity through the shim: 8 threads, each with its own
// connection, run 500 short write transactions each against one database with
// sqlite3_busy_timeout(5000), in WAL and in rollback (delete) mode. Nothing may be lost: the
// rows in the table are exactly the transactions that reported success, and the file passes
// integrity_check. Failures (SQLITE_BUSY) are allowed and counted here; the coordinator
// (issue 3) is what drives them to zero.
//
// Built into the ASan and TSan runs like every C++ test: that is where a data race or a
// use-after-free in the shim's per-file state or the registry would show.
#include <sqlite3.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace {

using sctest::Db;
using sctest::TempDir;

constexpr int kThreads = 8;
constexpr int kTxnsPerThread = 500;

// Holds every thread until all are ready, so they really contend (no sleeps).
class StartLine {
 public:
  void ArriveAndWait() {
    std::unique_lock<std::mutex> l(mu_);
    if (++ready_ == kThreads) cv_.notify_all();
    cv_.wait(l, [this] { return ready_ == kThreads; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int ready_ = 0;
};

struct Outcome {
  int ok = 0;
  int failed = 0;
  std::string vfs;
  std::string first_error;
};

// Runs the statements of one transaction; on any failure rolls back and returns false.
bool RunTxn(sqlite3* db, const std::vector<std::string>& stmts, std::string* err) {
  for (const std::string& s : stmts) {
    if (sqlite3_exec(db, s.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      if (err->empty()) *err = s + ": " + sqlite3_errmsg(db);
      if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "rollback", nullptr, nullptr, nullptr);
      return false;
    }
  }
  return true;
}

void Worker(const std::string& path, const std::string& mode, int id, StartLine* start,
            Outcome* out) {
  Db db(path);  // the process default: safeconc
  if (db.open_rc() != SQLITE_OK) {
    out->first_error = "open: " + db.error();
    start->ArriveAndWait();
    return;
  }
  out->vfs = db.VfsName();
  sqlite3_busy_timeout(db.get(), 5000);
  sqlite3_exec(db.get(), ("pragma journal_mode=" + mode + "; pragma synchronous=off").c_str(),
               nullptr, nullptr, nullptr);
  start->ArriveAndWait();
  for (int i = 0; i < kTxnsPerThread; ++i) {
    const std::string insert = "insert into log(thread, seq) values (" + std::to_string(id) + ", " +
                               std::to_string(i) + ")";
    std::vector<std::string> txn;
    switch (i % 3) {
      case 0:  // autocommit: SQLite retries its lock through the busy handler
        txn = {insert};
        break;
      case 1:  // takes the write lock first: waits in the busy handler, then cannot fail
        txn = {"begin immediate", insert, "commit"};
        break;
      default:  // reads, then writes: the upgrade may fail at once (deadlock avoidance)
        txn = {"begin", "select count(*) from log", insert, "commit"};
        break;
    }
    if (RunTxn(db.get(), txn, &out->first_error)) {
      ++out->ok;
    } else {
      ++out->failed;
    }
  }
}

class Threads : public ::testing::TestWithParam<const char*> {};

// Every transaction that reported success is in the table, none that failed is, and the file
// is intact. Catches a shim that loses or duplicates lock calls (two writers at once would
// corrupt the file or lose rows) and races on the shim's shared state (under TSan).
TEST_P(Threads, NothingLostUnderContention) {
  sctest::LoadExtension();
  const std::string mode = GetParam();
  TempDir dir;
  const std::string path = dir.File("mt.db");
  {
    Db setup(path);
    ASSERT_EQ(setup.VfsName(), "safeconc/unix");
    setup.Must("pragma journal_mode=" + mode);
    setup.Must("create table log(thread int, seq int, primary key(thread, seq))");
  }
  StartLine start;
  std::vector<Outcome> outcomes(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back(Worker, path, mode, t, &start, &outcomes[t]);
  for (std::thread& t : threads) t.join();

  Db check(path);
  int ok = 0, failed = 0;
  for (int t = 0; t < kThreads; ++t) {
    const Outcome& o = outcomes[t];
    EXPECT_EQ(o.vfs, "safeconc/unix") << "thread " << t << ": " << o.first_error;
    EXPECT_EQ(o.ok + o.failed, kTxnsPerThread) << "thread " << t;
    EXPECT_EQ(check.Int("select count(*) from log where thread = " + std::to_string(t)), o.ok)
        << "thread " << t;
    ok += o.ok;
    failed += o.failed;
  }
  EXPECT_EQ(check.Int("select count(*) from log"), ok);
  EXPECT_EQ(check.Text("pragma integrity_check"), "ok");
  EXPECT_EQ(check.Text("pragma journal_mode"), mode) << "never changed behind the user's back";
  EXPECT_GT(ok, 0);
  // Not an assertion: SQLITE_BUSY failures are expected until the coordinator lands.
  std::printf("%s: %d committed, %d failed\n", mode.c_str(), ok, failed);
}

INSTANTIATE_TEST_SUITE_P(Modes, Threads, ::testing::Values("wal", "delete"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
