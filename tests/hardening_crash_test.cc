// hardening_crash_test.cc - kill -9 of writer processes in the middle of their work (issue 11):
// writers report each commit to the parent through a pipe as soon as COMMIT returned, and are
// SIGKILLed at a random point of their stream of transactions (after a random number of
// reported commits, so the kill lands while the next transaction runs). After 20 rounds per
// journal mode: integrity_check is ok and every reported commit is in the database.
// No sleeps: the kill moment is chosen by counting reports.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace {

// The child: commit rows forever, reporting each id after its COMMIT returned. Never returns.
[[noreturn]] void WriterChild(const std::string& path, int fd, int64_t base) {
  sqlite3* db = nullptr;
  const std::string uri = "file:" + path + "?safeconc_timeout=10000";
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr) !=
      SQLITE_OK) {
    _exit(2);
  }
  for (int64_t k = 0;; ++k) {
    const int64_t id = base + k;
    const std::string sql = "BEGIN IMMEDIATE; INSERT INTO t(id, v) VALUES (" + std::to_string(id) +
                            ", randomblob(2000)); UPDATE c SET n = n + 1; COMMIT;";
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      continue;  // busy after 10 s under a killed holder's hot journal: try again
    }
    if (write(fd, &id, sizeof id) != sizeof id) _exit(3);
  }
}

void CrashRounds(const std::string& mode) {
  sctest::LoadExtension();
  sctest::TempDir dir;
  const std::string path = dir.File("crash.db");
  {
    sctest::Db db(path);
    db.Must("PRAGMA journal_mode=" + mode);
    db.Must(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE c(n); INSERT INTO c VALUES (0)");
  }
  std::mt19937 rng(12345);
  std::set<int64_t> reported;
  constexpr int kRounds = 20, kWriters = 2;
  for (int round = 0; round < kRounds; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    std::vector<pid_t> pids;
    for (int w = 0; w < kWriters; ++w) {
      const pid_t pid = fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        close(fds[0]);
        WriterChild(path, fds[1], (static_cast<int64_t>(round) * kWriters + w) * 1000000);
      }
      pids.push_back(pid);
    }
    close(fds[1]);
    // Kill after a random number of reported commits (1..40): mid-transaction of the next one.
    const int target = std::uniform_int_distribution<int>(1, 40)(rng);
    int got = 0;
    int64_t id;
    while (got < target && read(fds[0], &id, sizeof id) == sizeof id) {
      reported.insert(id);
      ++got;
    }
    for (pid_t p : pids) kill(p, SIGKILL);
    for (pid_t p : pids) {
      int status = 0;
      waitpid(p, &status, 0);
      EXPECT_TRUE(WIFSIGNALED(status)) << "writer exited on its own: " << status;
    }
    // Reports written before the kill that the parent has not read yet count too.
    while (read(fds[0], &id, sizeof id) == sizeof id) reported.insert(id);
    close(fds[0]);
  }
  sctest::Db db(path);
  EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok");
  std::set<int64_t> present;
  for (const std::string& r : db.Rows("SELECT id FROM t")) present.insert(std::stoll(r));
  int64_t missing = 0;
  for (int64_t r : reported) missing += present.count(r) == 0;
  EXPECT_EQ(missing, 0) << "of " << reported.size() << " reported commits";
  EXPECT_GE(db.Int("SELECT n FROM c"), static_cast<int64_t>(reported.size()));
  std::printf("%s: %d rounds, %d writers killed, %zu reported commits all present\n", mode.c_str(),
              kRounds, kRounds * kWriters, reported.size());
}

TEST(Crash, KilledWritersLoseNoReportedCommitRollback) { CrashRounds("delete"); }
TEST(Crash, KilledWritersLoseNoReportedCommitWal) { CrashRounds("wal"); }

}  // namespace
