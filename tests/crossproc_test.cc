// crossproc_test.cc - cross-process coordination through the sidecar (vfs/xproc.h), with real
// forked processes, each with real threads and connections:
//  - P processes x T threads (2x4, 4x4, 8x2), autocommit / BEGIN IMMEDIATE / deferred with
//    safeconc_txn=immediate, WAL and rollback: zero failures, nothing lost (row count and a
//    read-modify-write counter), integrity ok, the shared line was used, and at
//    safeconc_fair_ms=0 nobody was overtaken (strict FIFO across processes);
//  - a plain sqlite3 shell process (no extension) writing beside them.
// Would catch: a shared turn that deadlocks or loses a wake-up (timeouts), one that lets two
// processes write at once (base locks would refuse: failures), a line that is not FIFO.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "tests/crossproc_util.h"
#include "tests/test_util.h"

namespace {

using sctest::Db;
using sctest::TempDir;
using xptest::ForkChild;
using xptest::JsonInt;
using xptest::ReadAll;

enum class Mode { kAutocommit, kImmediate, kDeferred };

struct Cfg {
  int procs, threads, per_thread;
  bool wal;
  Mode mode;
  int fair_ms;
};

const char* ModeName(Mode m) {
  return m == Mode::kAutocommit ? "autocommit" : m == Mode::kImmediate ? "immediate" : "deferred";
}

// One thread's transactions; returns the number that failed.
int RunThread(const std::string& path, const Cfg& cfg, int proc, int thread) {
  std::string uri = "file:" + path + "?safeconc_fair_ms=" + std::to_string(cfg.fair_ms);
  if (cfg.mode == Mode::kDeferred) uri += "&safeconc_txn=immediate";
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr) !=
      SQLITE_OK) {
    sqlite3_close(db);
    return cfg.per_thread;
  }
  sqlite3_busy_timeout(db, 5000);
  int failures = 0;
  for (int i = 0; i < cfg.per_thread; ++i) {
    const std::string row = "INSERT INTO t(p, th, v) VALUES (" + std::to_string(proc) + ", " +
                            std::to_string(thread) + ", randomblob(100));";
    std::string sql;
    switch (cfg.mode) {
      case Mode::kAutocommit:
        sql = row;
        break;
      case Mode::kImmediate:
        sql = "BEGIN IMMEDIATE; " + row + " UPDATE c SET n = n + 1; COMMIT;";
        break;
      case Mode::kDeferred: {
        // Read, then write what was read plus one: a lost update would show in c.n.
        int rc = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
        int64_t n = -1;
        sqlite3_stmt* st = nullptr;
        if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, "SELECT n FROM c", -1, &st, nullptr);
        if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sql = row + " UPDATE c SET n = " + std::to_string(n + 1) + "; COMMIT;";
        if (rc != SQLITE_OK || n < 0) {
          ++failures;
          sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
          continue;
        }
        break;
      }
    }
    char* err = nullptr;
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      ++failures;
      std::fprintf(stderr, "process %d thread %d: %s\n", proc, thread, err ? err : "?");
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    sqlite3_free(err);
  }
  sqlite3_close(db);
  return failures;
}

// One process of a workload (in a forked child): cfg.threads threads; reports how many of
// their transactions failed through `out`.
int RunProcess(const std::string& path, const Cfg& cfg, int proc, int out) {
  std::vector<std::thread> ths;
  std::vector<int> failed(cfg.threads, 0);
  for (int t = 0; t < cfg.threads; ++t) {
    ths.emplace_back([&, t] { failed[t] = RunThread(path, cfg, proc, t); });
  }
  int total = 0;
  for (int t = 0; t < cfg.threads; ++t) {
    ths[t].join();
    total += failed[t];
  }
  const std::string r = std::to_string(total);
  return write(out, r.data(), r.size()) == static_cast<ssize_t>(r.size()) ? 0 : 8;
}

void CreateDb(const std::string& path, bool wal) {
  Db d(path, "unix");
  d.Must(std::string("PRAGMA journal_mode=") + (wal ? "wal" : "delete"));
  d.Must(
      "CREATE TABLE t(id INTEGER PRIMARY KEY, p, th, v);"
      "CREATE TABLE c(n INTEGER); INSERT INTO c VALUES (0);");
}

void RunWorkload(const Cfg& cfg) {
  SCOPED_TRACE(std::to_string(cfg.procs) + "x" + std::to_string(cfg.threads) + " " +
               ModeName(cfg.mode) + (cfg.wal ? " wal" : " rollback") +
               " fair_ms=" + std::to_string(cfg.fair_ms));
  TempDir dir;
  const std::string path = dir.File("x.db");
  CreateDb(path, cfg.wal);
  int start[2];
  ASSERT_EQ(pipe(start), 0);
  std::vector<xptest::Child> kids;
  for (int p = 0; p < cfg.procs; ++p) {
    kids.push_back(ForkChild([&, p](int out) {
      close(start[1]);
      char go;
      if (read(start[0], &go, 1) != 1) return 9;
      return RunProcess(path, cfg, p, out);
    }));
  }
  close(start[0]);
  // This process watches through its own connection: attached, it keeps the sidecar (and its
  // counters) until the end.
  Db watch("file:" + path);
  ASSERT_EQ(watch.open_rc(), SQLITE_OK) << watch.error();
  ASSERT_EQ(watch.Exec("SELECT count(*) FROM t"), SQLITE_OK);
  const std::string before = watch.Text("SELECT safeconc_stats()");
  ASSERT_NE(before.find("\"mode\":\"sidecar\""), std::string::npos) << before;
  for (int p = 0; p < cfg.procs; ++p) ASSERT_EQ(write(start[1], "g", 1), 1);
  close(start[1]);
  int failures = 0;
  for (xptest::Child& k : kids) {
    const std::string out = ReadAll(k.out);
    EXPECT_EQ(k.Wait(), 0) << "child exit";
    failures += out.empty() ? cfg.threads * cfg.per_thread : std::atoi(out.c_str());
  }
  const int64_t total = int64_t{cfg.procs} * cfg.threads * cfg.per_thread;
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(watch.Int("SELECT count(*) FROM t"), total);
  if (cfg.mode != Mode::kAutocommit) {
    EXPECT_EQ(watch.Int("SELECT n FROM c"), total);
  }
  EXPECT_EQ(watch.Text("PRAGMA integrity_check"), "ok");
  const std::string stats = watch.Text("SELECT safeconc_stats()");
  const size_t all = stats.find("\"all_processes\"");
  ASSERT_NE(all, std::string::npos) << stats;
  EXPECT_GT(JsonInt(stats, "waits", all), 0) << "the shared line was never used: " << stats;
  EXPECT_GE(JsonInt(stats, "max_overtaken_wait_us", all), 0) << stats;
  EXPECT_LE(JsonInt(stats, "max_overtaken_wait_us", all), cfg.fair_ms * 1000 + 25000) << stats;
  // No wait in the shared line gave up (a wait in steps keeps its place between them).
  EXPECT_EQ(JsonInt(stats, "timeouts", all), 0) << stats;
  if (cfg.fair_ms == 0) {
    EXPECT_EQ(JsonInt(stats, "barges", all), 0) << stats;
  }
}

class Workloads : public ::testing::TestWithParam<Cfg> {};

TEST_P(Workloads, NoFailuresNothingLost) {
  sctest::LoadExtension();
  RunWorkload(GetParam());
}

std::vector<Cfg> AllWorkloads() {
  std::vector<Cfg> v;
  const int shapes[3][2] = {{2, 4}, {4, 4}, {8, 2}};
  for (bool wal : {true, false}) {
    for (Mode m : {Mode::kAutocommit, Mode::kImmediate, Mode::kDeferred}) {
      for (const auto& s : shapes) v.push_back(Cfg{s[0], s[1], 400 / (s[0] * s[1]), wal, m, 5});
    }
  }
  v.push_back(Cfg{4, 2, 40, true, Mode::kImmediate, 0});
  v.push_back(Cfg{4, 2, 40, false, Mode::kImmediate, 0});
  return v;
}

INSTANTIATE_TEST_SUITE_P(CrossProcess, Workloads, ::testing::ValuesIn(AllWorkloads()),
                         [](const ::testing::TestParamInfo<Cfg>& i) {
                           const Cfg& c = i.param;
                           return std::to_string(c.procs) + "x" + std::to_string(c.threads) + "_" +
                                  ModeName(c.mode) + (c.wal ? "_wal" : "_rollback") + "_fair" +
                                  std::to_string(c.fair_ms);
                         });

// A plain sqlite3 shell (no extension: base locks only) writes beside two processes that
// coordinate through the sidecar: everyone's rows arrive, integrity holds.
TEST(CrossProcessCompat, PlainSqliteShellBeside) {
  sctest::LoadExtension();
  if (std::system("command -v sqlite3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no sqlite3 shell";
  for (bool wal : {true, false}) {
    SCOPED_TRACE(wal ? "wal" : "rollback");
    TempDir dir;
    const std::string path = dir.File("plain.db");
    CreateDb(path, wal);
    std::string script = ".timeout 10000\n";
    for (int i = 0; i < 200; ++i) {
      script +=
          "INSERT INTO t(p, th, v) VALUES (-1, " + std::to_string(i) + ", randomblob(100));\n";
    }
    {
      FILE* f = std::fopen(dir.File("plain.sql").c_str(), "w");
      ASSERT_NE(f, nullptr);
      std::fputs(script.c_str(), f);
      std::fclose(f);
    }
    const Cfg cfg{2, 4, 50, wal, Mode::kImmediate, 5};
    std::vector<xptest::Child> kids;
    for (int p = 0; p < 2; ++p) {
      kids.push_back(ForkChild([&, p](int out) { return RunProcess(path, cfg, p, out); }));
    }
    const std::string cmd = "sqlite3 -bail " + path + " < " + dir.File("plain.sql");
    const int shell = std::system(cmd.c_str());
    int failures = 0;
    for (xptest::Child& k : kids) {
      failures += std::atoi(ReadAll(k.out).c_str());
      EXPECT_EQ(k.Wait(), 0);
    }
    EXPECT_EQ(failures, 0);
    // The shell is stock SQLite with a 10 s timeout; beside 8 writers for ~1 s it succeeds.
    EXPECT_EQ(shell, 0);
    Db d(path);
    EXPECT_EQ(d.Int("SELECT count(*) FROM t WHERE p = -1"), 200);
    EXPECT_EQ(d.Int("SELECT count(*) FROM t WHERE p >= 0"), 2 * 4 * 50);
    EXPECT_EQ(d.Text("PRAGMA integrity_check"), "ok");
  }
}

}  // namespace
