// coordinator_behaviour_test.cc - the coordinator's promises one at a time, through the real
// library: SQLite's deadlock-avoiding fast failures are kept, safeconc_timeout is honoured,
// safeconc_last_busy() explains a failure, a same-thread deadlock fails at once, checkpoints
// keep working under load.
//
// Timing: only generous upper bounds, each commented; "at once" means well under the
// configured timeout, so a busy machine cannot make them flake.
#include <sqlite3.h>

#include <sys/wait.h>
#include <unistd.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace {

using Clock = std::chrono::steady_clock;

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// A connection on its own thread that takes the write lock (BEGIN IMMEDIATE + a write) and
// keeps it until told to commit.
class Writer {
 public:
  explicit Writer(const std::string& uri) {
    th_ = std::thread([this, uri] {
      sctest::Db db(uri);
      db.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('writer')");
      holding_.Open();
      release_.Wait();
      db.Must("COMMIT");
    });
    holding_.Wait();
  }
  ~Writer() {
    release_.Open();
    th_.join();
  }

 private:
  sctest::Latch holding_, release_;
  std::thread th_;
};

std::string Json(sctest::Db& db, const std::string& json, const std::string& path) {
  return db.Text("SELECT json_extract('" + json + "', '" + path + "')");
}

int64_t Stat(sctest::Db& db, const std::string& path) {
  return std::stoll("0" + Json(db, db.Text("PRAGMA safeconc_stats"), path));
}

// Polls (through `probe`, a connection to the database) until another connection waits for
// the write turn in line or has waited inside a lock call, or `limit` passed. The way a test
// holds a lock "until the other one provably waits" without sleeping.
void AwaitWaiter(sctest::Db& probe, Clock::duration limit = std::chrono::seconds(60)) {
  const Clock::time_point until = Clock::now() + limit;
  while (Stat(probe, "$.coordinator.queue_depth") == 0 &&
         Stat(probe, "$.coordinator.in_lock_waits") == 0 && Clock::now() < until) {
    std::this_thread::yield();
  }
}

// A connection on its own thread that takes the write lock and commits as soon as another
// connection provably waits for it (AwaitWaiter), or after `limit`.
class WriterUntilWaited {
 public:
  explicit WriterUntilWaited(const std::string& uri,
                             Clock::duration limit = std::chrono::seconds(60)) {
    th_ = std::thread([this, uri, limit] {
      sctest::Db w(uri);
      w.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('writer')");
      holding_.Open();
      sctest::Db probe(uri);
      AwaitWaiter(probe, limit);
      committing_ = true;
      w.Must("COMMIT");
    });
    holding_.Wait();
  }
  ~WriterUntilWaited() { th_.join(); }
  // True once it saw the waiter and went on to commit.
  bool committing() const { return committing_.load(); }

 private:
  sctest::Latch holding_;
  std::atomic<bool> committing_{false};
  std::thread th_;
};

class CoordinatorBehaviour : public testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    sctest::LoadExtension();
    uri_ = "file:" + dir_.File("b.db");
    sctest::Db db(uri_);
    db.Must(std::string("PRAGMA journal_mode=") + GetParam());
    db.Must("CREATE TABLE t(x)");
  }
  sctest::TempDir dir_;
  std::string uri_;
};

// A deferred transaction that read and then tries to write while another connection writes
// gets SQLITE_BUSY at once, not after safeconc_timeout: waiting could only deadlock (rollback)
// or fail on a stale snapshot (WAL). Would catch a coordinator that waits at SHARED->RESERVED.
TEST_P(CoordinatorBehaviour, ReadThenWriteUpgradeFailsFastDespiteTimeout) {
  Writer writer(uri_);
  sctest::Db db(uri_ + "?safeconc_timeout=5000");
  db.Must("BEGIN; SELECT count(*) FROM t");
  const Clock::time_point start = Clock::now();
  const int rc = db.Exec("INSERT INTO t VALUES('reader')");
  const int64_t ms = MsSince(start);
  EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << db.error();
  // "At once": a tenth of the 5000 ms timeout leaves room for a loaded machine.
  EXPECT_LT(ms, 500) << "the upgrade waited instead of failing fast";
  db.Exec("ROLLBACK");
  const std::string why = db.Text("SELECT safeconc_last_busy()");
  EXPECT_EQ(Json(db, why, "$.result"), "fast_fail") << why;
  const std::string stats = db.Text("PRAGMA safeconc_stats");
  EXPECT_GE(std::stoi(Json(db, stats, "$.coordinator.fast_failed_upgrades")), 1) << stats;
}

// A writer that holds the write turn longer than safeconc_timeout makes another writer fail
// with SQLITE_BUSY after about the timeout, and safeconc_last_busy() names the holder.
// Would catch an ignored timeout (hang) or one that is not waited at all.
TEST_P(CoordinatorBehaviour, TimeoutHonouredAndLastBusyNamesHolder) {
  Writer writer(uri_);
  sctest::Db db(uri_ + "?safeconc_timeout=300");
  const Clock::time_point start = Clock::now();
  const int rc = db.Exec("INSERT INTO t VALUES('late')");
  const int64_t ms = MsSince(start);
  EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << db.error();
  EXPECT_GE(ms, 290) << "gave up before safeconc_timeout";
  // Upper bound: ten times the timeout, for a loaded 2-core machine.
  EXPECT_LT(ms, 3000) << "waited far beyond safeconc_timeout";
  const std::string why = db.Text("SELECT safeconc_last_busy()");
  EXPECT_EQ(Json(db, why, "$.result"), "timeout") << why;
  EXPECT_NE(Json(db, why, "$.holder.handle"), "") << why;
  EXPECT_NE(Json(db, why, "$.holder.thread"), "") << why;
  EXPECT_GE(std::stoll(Json(db, why, "$.holder.held_ms")), 250) << why;
  // The message text as docs/vfs.md documents it (issue 11 item 7: the two had drifted).
  EXPECT_EQ(Json(db, why, "$.message"),
            "gave up after " + Json(db, why, "$.waited_ms") +
                " ms waiting for the write turn; the write turn is held by handle " +
                Json(db, why, "$.holder.handle") + " on thread " +
                Json(db, why, "$.holder.thread") + " for " + Json(db, why, "$.holder.held_ms") +
                " ms")
      << why;
}

// A connection that never set a busy handler still waits for a short writer instead of
// failing at once (busy handling is enforced), and so does one whose handler was cleared
// after open (node:sqlite's default). Would catch "database is locked" at the first conflict.
TEST_P(CoordinatorBehaviour, EnforcedBusyHandlingWaitsForShortWriter) {
  for (bool cleared : {false, true}) {
    WriterUntilWaited writer(uri_);
    sctest::Db db(uri_);
    if (cleared) sqlite3_busy_timeout(db.get(), 0);
    EXPECT_EQ(db.Exec("INSERT INTO t VALUES('waiter')"), SQLITE_OK) << db.error();
    EXPECT_TRUE(writer.committing());
  }
}

// A thread that holds the write turn through one connection and starts a transaction through
// another (safeconc_txn=immediate) is not made to wait for itself at the read start: the read
// goes on without the turn at once, as stock SQLite serves it, and the write then meets
// SQLite's own rule (the other connection holds the write lock: SQLITE_BUSY at once), with
// safeconc_last_busy() saying the holder was last used on this thread. Would catch a wait
// until the timeout, or the old "self_deadlock" refusal of the read.
TEST_P(CoordinatorBehaviour, SameThreadHolderIsNotWaitedForAtAReadStart) {
  sctest::Db a(uri_);
  a.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('a')");
  sctest::Db b(uri_ + "?safeconc_timeout=5000&safeconc_txn=immediate");
  const Clock::time_point start = Clock::now();
  EXPECT_EQ(b.Exec("BEGIN; SELECT count(*) FROM t"), SQLITE_OK) << b.error();
  const int rc = b.Exec("INSERT INTO t VALUES('b')");
  const int64_t ms = MsSince(start);
  EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << b.error();
  EXPECT_LT(ms, 500) << "waited for its own thread";  // a tenth of the timeout
  b.Exec("ROLLBACK");
  const std::string why = b.Text("SELECT safeconc_last_busy()");
  EXPECT_EQ(Json(b, why, "$.result"), "fast_fail") << why;
  EXPECT_EQ(Json(b, why, "$.holder.this_thread"), "1") << why;
  EXPECT_GE(Stat(b, "$.coordinator.turn_skipped"), 1);
  a.Must("COMMIT");
}

INSTANTIATE_TEST_SUITE_P(JournalModes, CoordinatorBehaviour, testing::Values("delete", "wal"));

// Checkpoints of every mode keep working while writers run through the coordinator, and the
// last connection's close still checkpoints and removes the WAL. Would catch a checkpoint
// stuck behind the write-turn queue (FULL/RESTART/TRUNCATE take WAL WRITE outside a write
// transaction) or a close that cannot take its EXCLUSIVE lock.
TEST(CoordinatorCheckpoint, AllModesWorkUnderLoadAndCloseRemovesWal) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const std::string uri = "file:" + dir.File("c.db");
  {
    sctest::Db db(uri);
    db.Must("PRAGMA journal_mode=wal; CREATE TABLE t(x)");
  }
  std::atomic<int> errors{0}, inserted{0};
  std::mutex err_mu;
  std::string first_error;
  auto fail = [&](const std::string& what) {
    std::lock_guard<std::mutex> l(err_mu);
    if (errors++ == 0) first_error = what;
  };
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int i = 0; i < 4; ++i) {
    writers.emplace_back([&] {
      sctest::Db db(uri);
      for (int n = 0; n < 300; ++n) {
        if (db.Exec("INSERT INTO t VALUES(randomblob(100))") == SQLITE_OK) {
          ++inserted;
        } else {
          fail("insert: " + db.error());
        }
      }
    });
  }
  std::thread checkpointer([&] {
    sctest::Db db(uri);
    const char* modes[] = {"PASSIVE", "FULL", "RESTART", "TRUNCATE"};
    for (int round = 0; !stop.load(); ++round) {
      const std::string sql = std::string("PRAGMA wal_checkpoint(") + modes[round % 4] + ")";
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db.get(), sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
        fail(sql + ": " + db.error());
        continue;
      }
      const int rc = sqlite3_step(st);
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail(sql + ": " + db.error());
      sqlite3_finalize(st);
    }
  });
  for (auto& w : writers) w.join();
  stop = true;
  checkpointer.join();
  EXPECT_EQ(errors.load(), 0) << first_error;
  {
    sctest::Db db(uri);
    EXPECT_EQ(db.Int("SELECT count(*) FROM t"), inserted.load());
    EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok");
  }
  // The last close checkpointed and deleted the WAL.
  EXPECT_NE(access(dir.File("c.db-wal").c_str(), F_OK), 0);
}

}  // namespace

namespace {

// The same file reached through a path and through a symlink shares one coordinator (keyed by
// device and inode): a writer through one name makes a writer through the other wait its
// turn; the coordinator is freed with the last handle. Would catch coordinators keyed by path.
TEST(CoordinatorIdentity, SymlinkSharesOneCoordinatorFreedWithLastHandle) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const std::string real = dir.File("real.db"), link = dir.File("link.db");
  {
    sctest::Db db("file:" + real);
    db.Must("CREATE TABLE t(x)");
  }
  ASSERT_EQ(symlink(real.c_str(), link.c_str()), 0);
  auto db_count = [](sctest::Db& db, const std::string& path) {
    return db.Int(
        "SELECT count(*) FROM json_each(safeconc_stats(), '$.databases') WHERE "
        "json_extract(value, '$.path') = '" +
        path + "'");
  };
  {
    sctest::Db a("file:" + real);
    sctest::Db b("file:" + link);
    // One entry, two handles: the link was resolved to the same inode.
    EXPECT_EQ(a.Int("SELECT json_extract(safeconc_stats(), '$.process.databases_open')"), 1);
    EXPECT_EQ(b.Text("SELECT json_extract(s, '$.handles') FROM (SELECT '" +
                     b.Text("PRAGMA safeconc_stats") + "' AS s)"),
              "2");
    a.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('a')");
    std::thread th([&] {
      // Waits for a's turn (same coordinator), then commits.
      EXPECT_EQ(b.Exec("INSERT INTO t VALUES('b')"), SQLITE_OK) << b.error();
    });
    // Poll a's view of the coordinator (b is busy on the other thread) until b waits in it.
    sctest::Db eval(":memory:");
    for (;;) {
      const std::string st = a.Text("PRAGMA safeconc_stats");
      if (std::stoll("0" + Json(eval, st, "$.coordinator.queue_depth")) +
              std::stoll("0" + Json(eval, st, "$.coordinator.in_lock_waits")) >
          0) {
        break;
      }
      std::this_thread::yield();
    }
    a.Must("COMMIT");
    th.join();
    EXPECT_EQ(a.Int("SELECT count(*) FROM t"), 2);
  }
  sctest::Db other(":memory:");
  EXPECT_EQ(db_count(other, real), 0) << "the coordinator outlived its last handle";
}

// A writer in another process (plain SQLite, no extension) is waited for by bounded polling,
// not failed at once, and the write succeeds once it commits. Would catch the coordinator
// treating a base refusal as final.
TEST_P(CoordinatorBehaviour, OtherProcessWriterIsWaitedFor) {
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  const std::string plain = uri_ + "?vfs=unix";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child: take the write lock through the plain unix VFS, say so, hold it until told.
    sqlite3* db = nullptr;
    sqlite3_open_v2(plain.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr);
    // As any application would: its rollback-mode COMMIT needs EXCLUSIVE, so it must wait for
    // the parent's SHARED lock, which the parent's polling retries take now and then.
    sqlite3_busy_timeout(db, 5000);
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE; INSERT INTO t VALUES('child')", nullptr, nullptr,
                          nullptr);
    char c = rc == SQLITE_OK ? 'L' : 'E';
    if (write(to_parent[1], &c, 1) != 1) _exit(3);
    if (read(to_child[0], &c, 1) != 1) _exit(4);
    rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
    sqlite3_close(db);
    _exit(rc == SQLITE_OK ? 0 : 5);
  }
  char c = 0;
  ASSERT_EQ(read(to_parent[0], &c, 1), 1);
  ASSERT_EQ(c, 'L');
  std::thread release([&] {
    // Let the parent's writer be refused and poll a while, then let the child commit.
    sctest::Db watch(uri_);
    while (Stat(watch, "$.coordinator.cross_process_busy") == 0 &&
           Stat(watch, "$.coordinator.in_lock_waits") == 0) {
      std::this_thread::yield();
    }
    char go = 'C';
    EXPECT_EQ(write(to_child[1], &go, 1), 1);
  });
  sctest::Db db(uri_ + "?safeconc_timeout=20000");
  EXPECT_EQ(db.Exec("INSERT INTO t VALUES('parent')"), SQLITE_OK) << db.error();
  release.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(db.Int("SELECT count(*) FROM t"), 2);
  EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok");
  close(to_parent[0]), close(to_parent[1]), close(to_child[0]), close(to_child[1]);
}

// ---- Requests SQLite will not retry, and state a refusal must not leave behind -----------

// A write made while one of the connection's own SELECT cursors is still open (autocommit
// on: the ORM pattern) fails at once when the turn is busy, as SQLite's deadlock avoidance
// wants, and leaves no ticket in line: SQLite never comes back for it, so a queued one
// would block every writer behind it until its lease ran out (~1 s). Would catch "autocommit
// means SQLite retries" (its btree does not, with a read transaction open).
TEST_P(CoordinatorBehaviour, WriteWithOwnCursorOpenFailsFastAndLeavesNoTicket) {
  sctest::Db a(uri_ + "?safeconc_timeout=5000");
  a.Must("INSERT INTO t VALUES(1), (2)");
  Writer writer(uri_);
  sqlite3_stmt* cursor = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(a.get(), "SELECT x FROM t", -1, &cursor, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(cursor), SQLITE_ROW);
  const Clock::time_point start = Clock::now();
  const int rc = a.Exec("INSERT INTO t VALUES('a')");
  const int64_t ms = MsSince(start);
  EXPECT_EQ(rc & 0xff, SQLITE_BUSY) << a.error();
  EXPECT_LT(ms, 500) << "waited although SQLite does not retry";  // a tenth of the timeout
  sctest::Db probe(uri_);
  EXPECT_EQ(Stat(probe, "$.coordinator.queue_depth"), 0) << "a ticket nobody comes back for";
  sqlite3_finalize(cursor);
  const std::string why = a.Text("SELECT safeconc_last_busy()");
  EXPECT_EQ(Json(a, why, "$.result"), "fast_fail") << why;
}

// An explicit transaction's write refused by a lock held outside the coordinator (here a
// ?vfs=unix connection; another process is the same) fails, gives its turn back and keeps no
// place in line: the next writer is not held up once that lock is gone. Would catch the
// place kept for polling when SQLite will not poll (lease_expired after a ~1 s stall).
TEST_P(CoordinatorBehaviour, RefusedExplicitWriteKeepsNoPlaceInLine) {
  sctest::Db outside(uri_ + "?vfs=unix");
  outside.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES('outside')");
  sctest::Db a(uri_);
  a.Must("BEGIN; SELECT count(*) FROM t");
  EXPECT_EQ(a.Exec("INSERT INTO t VALUES('a')") & 0xff, SQLITE_BUSY);
  sctest::Db probe(uri_);
  EXPECT_EQ(Stat(probe, "$.coordinator.queue_depth"), 0);
  EXPECT_EQ(
      probe.Text("SELECT json_type(safeconc_stats(), '$.databases[0].coordinator.write_turn')"),
      "null");
  a.Must("ROLLBACK");
  outside.Must("COMMIT");
  sctest::Db b(uri_);
  b.Must("INSERT INTO t VALUES('b')");
  EXPECT_EQ(Stat(probe, "$.coordinator.lease_expired"), 0);
}

// WAL fixture: a database whose WAL is empty (fully checkpointed), so a reader sits on READ_0.
class CoordinatorWal : public testing::Test {
 protected:
  void SetUp() override {
    sctest::LoadExtension();
    uri_ = "file:" + dir_.File("w.db");
    sctest::Db db(uri_);
    db.Must("PRAGMA journal_mode=wal; CREATE TABLE t(x); INSERT INTO t VALUES(0), (0), (0)");
    db.Must("PRAGMA wal_checkpoint(TRUNCATE)");
  }
  sctest::TempDir dir_;
  std::string uri_;
};

// safeconc_txn=serial keeps the turn for as long as the connection's cursor reads, also when
// its first write goes into an empty WAL: wal.c then swaps the READ_0 mark for another one
// while it holds WRITE. Would catch the turn dropped at that swap: it went to the waiting
// connection, and the cursor's next write failed with "database is locked".
TEST_F(CoordinatorWal, SerialKeepsTheTurnWhileItsCursorReadsAcrossAWalRestart) {
  sctest::Db a(uri_ + "?safeconc_txn=serial");
  sqlite3_stmt* cursor = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(a.get(), "SELECT x FROM t", -1, &cursor, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(cursor), SQLITE_ROW);
  std::atomic<int> other_rc{-1};
  std::thread other([&] {
    sctest::Db b(uri_ + "?safeconc_txn=serial&safeconc_timeout=20000");
    int rc = b.Exec("BEGIN; INSERT INTO t VALUES(100)");
    if (rc == SQLITE_OK) rc = b.Exec("COMMIT");
    other_rc = rc;
  });
  sctest::Db probe(uri_);
  AwaitWaiter(probe);
  EXPECT_EQ(a.Exec("INSERT INTO t VALUES(1)"), SQLITE_OK) << a.error();
  EXPECT_EQ(a.Exec("INSERT INTO t VALUES(2)"), SQLITE_OK) << a.error();
  EXPECT_EQ(sqlite3_step(cursor), SQLITE_ROW);
  sqlite3_finalize(cursor);
  other.join();
  EXPECT_EQ(other_rc.load(), SQLITE_OK);
  EXPECT_EQ(a.Int("SELECT count(*) FROM t"), 6);
}

// A read whose turn wait timed out (serial, WAL: the read goes on without the turn) leaves
// nothing pending: the thread's sqlite3_sleep() still sleeps, and the connection's next wait
// gets a fresh safeconc_timeout. Would catch a stale "final" refusal record (sleeps return at
// once, wal.c's retry loop spins) and a stale deadline (the next wait fails at once).
TEST_F(CoordinatorWal, FailedTurnWaitAtAReadStartLeavesNothingPending) {
  sctest::Db b(uri_ + "?safeconc_txn=serial&safeconc_timeout=300");
  EXPECT_EQ(b.Int("SELECT count(*) FROM t"), 3);  // takes the database's SHARED lock (kept)
  {
    Writer writer(uri_);
    EXPECT_EQ(b.Int("SELECT count(*) FROM t"), 3);  // after ~300 ms, without the turn
    const std::string why = b.Text("SELECT safeconc_last_busy()");
    EXPECT_EQ(Json(b, why, "$.result"), "timeout") << why;
  }
  const Clock::time_point slept = Clock::now();
  sqlite3_sleep(200);
  // A lower bound only: a loaded machine can only make the sleep longer.
  EXPECT_GE(MsSince(slept), 150) << "sqlite3_sleep returned at once";
  b.Must("PRAGMA safeconc_timeout=20000");
  // Holds until b waits in line (bounded: if b failed at once there is nothing to wait for).
  WriterUntilWaited writer2(uri_, std::chrono::seconds(10));
  EXPECT_EQ(b.Exec("INSERT INTO t VALUES('b')"), SQLITE_OK) << b.error();
  EXPECT_TRUE(writer2.committing());
}

// A refusal record left on a worker thread (its binding's busy handler gave up) for a file
// that another thread then closed (DETACH) is never followed: the connection's next busy
// wait on that worker, for another file, runs as a plain wait. Would catch the record's raw
// file pointer used after the file was freed (make test-asan: heap-use-after-free in
// BusyHandler).
TEST(CoordinatorLifetime, StaleRefusalRecordOfAClosedFileIsNotFollowed) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const std::string main_db = dir.File("main.db"), aux_db = dir.File("aux.db");
  {
    sctest::Db m(main_db);
    m.Must("PRAGMA journal_mode=wal; CREATE TABLE t(x); INSERT INTO t VALUES(1)");
    sctest::Db x(aux_db);
    x.Must("CREATE TABLE t(x); INSERT INTO t VALUES(1)");
  }
  sctest::Db c("file:" + main_db + "?safeconc_timeout=200");
  c.Must("PRAGMA wal_autocheckpoint=0; ATTACH 'file:" + aux_db + "?safeconc_timeout=100' AS aux");
  sctest::Db holder(aux_db);
  holder.Must("BEGIN IMMEDIATE; INSERT INTO t VALUES(2)");  // aux's write turn
  sctest::Latch refused, snapshot_held;
  std::atomic<int> checkpoint_rc{-1};
  std::thread worker([&] {
    sqlite3_busy_timeout(c.get(), 50);  // the binding's handler: it gives up after 50 ms
    // Refused after aux's 100 ms turn wait; the handler's retries are refused for good.
    EXPECT_EQ(c.Exec("INSERT INTO aux.t VALUES(3)") & 0xff, SQLITE_BUSY);
    sqlite3_busy_timeout(c.get(), 0);  // and then clears it (ours is installed again)
    refused.Open();
    snapshot_held.Wait();
    // A lock period on main finds no handler and installs ours again (enforced busy handling).
    EXPECT_EQ(c.Int("SELECT count(*) FROM main.t"), 2);
    // FULL waits for the old snapshot's reader through the busy handler: ours, now.
    checkpoint_rc = c.Exec("PRAGMA main.wal_checkpoint(FULL)");
  });
  refused.Wait();
  c.Must("DETACH aux");  // aux's shim file is closed and freed, on this thread
  holder.Must("COMMIT");
  sctest::Db reader(main_db);
  reader.Must("BEGIN; SELECT count(*) FROM t");
  sctest::Db writer(main_db);
  writer.Must("INSERT INTO t VALUES(4)");
  snapshot_held.Open();
  worker.join();
  EXPECT_TRUE(checkpoint_rc == SQLITE_OK || (checkpoint_rc & 0xff) == SQLITE_BUSY) << checkpoint_rc;
  reader.Must("COMMIT");
}

}  // namespace
