// crossproc_review_test.cc - regressions from the review of the cross-process coordinator
// (vfs/xproc.h), each a reproduction that failed before its fix:
//  - a release due while the sidecar's mutex was held elsewhere was kept by the releasing
//    process alone: idle afterwards, it held the shared turn, and every other process waited
//    its whole busy timeout (3 s instead of milliseconds);
//  - a corrupt `reserved` index in the sidecar was used before any range check (SIGSEGV);
//  - a read-only first open of a file turned the sidecar off for the process's later
//    read-write connections.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>

#include "tests/crossproc_util.h"
#include "tests/test_util.h"
#include "vfs/xproc.h"

namespace {

using Clock = std::chrono::steady_clock;
using safeconc::xproc::XShared;
using sctest::Db;
using sctest::TempDir;

int64_t Ms(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

XShared* MapSidecar(const std::string& path) {
  const int fd = open((path + "-safeconc").c_str(), O_RDWR);
  if (fd < 0) return nullptr;
  void* m = mmap(nullptr, sizeof(XShared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  return m == MAP_FAILED ? nullptr : static_cast<XShared*>(m);
}

// One autocommit INSERT in a fresh process; returns how long it took (ms), or -rc on failure.
int64_t WriteInOtherProcess(const std::string& path, int timeout_ms) {
  xptest::Child k = xptest::ForkChild([&](int out) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(("file:" + path).c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI,
                        nullptr) != SQLITE_OK) {
      return 2;
    }
    sqlite3_busy_timeout(db, timeout_ms);
    const auto t0 = Clock::now();
    const int rc = sqlite3_exec(db, "INSERT INTO t(v) VALUES (1)", nullptr, nullptr, nullptr);
    const std::string r =
        rc == SQLITE_OK ? std::to_string(Ms(Clock::now() - t0)) : std::to_string(-rc);
    sqlite3_close(db);
    return write(out, r.data(), r.size()) == static_cast<ssize_t>(r.size()) ? 0 : 3;
  });
  const std::string out = xptest::ReadAll(k.out);
  EXPECT_EQ(k.Wait(), 0);
  return out.empty() ? -1 : std::stoll(out);
}

void CreateDb(const std::string& path, const std::string& journal) {
  Db d(path, "unix");
  d.Must("PRAGMA journal_mode=" + journal);
  d.Must("CREATE TABLE t(id INTEGER PRIMARY KEY, v)");
}

class OwedRelease : public ::testing::TestWithParam<const char*> {};

// Process A commits while process H holds the sidecar's mutex (a preempted or stopped
// process), then stays idle with its connection open. Another process's write must not wait
// for A: the release A could not make is made by the next process that gets the mutex.
TEST_P(OwedRelease, IsMadeByTheNextProcess) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("owed.db");
  CreateDb(path, GetParam());
  int to_a[2], from_a[2], to_h[2], from_h[2];
  ASSERT_EQ(pipe(to_a), 0);
  ASSERT_EQ(pipe(from_a), 0);
  ASSERT_EQ(pipe(to_h), 0);
  ASSERT_EQ(pipe(from_h), 0);
  char c;
  // A second process attached and idle: with only one process attached, none takes the
  // shared turn at all.
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  xptest::Child idle = xptest::ForkChild([&](int) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(("file:" + path).c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI,
                        nullptr) != SQLITE_OK ||
        sqlite3_exec(db, "SELECT count(*) FROM t", nullptr, nullptr, nullptr) != SQLITE_OK ||
        write(ready[1], "r", 1) != 1) {
      return 2;
    }
    for (;;) pause();
  });
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  xptest::Child a = xptest::ForkChild([&](int) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(("file:" + path).c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI,
                        nullptr) != SQLITE_OK ||
        sqlite3_exec(db, ("PRAGMA journal_mode=" + std::string(GetParam())).c_str(), nullptr,
                     nullptr, nullptr) != SQLITE_OK ||
        sqlite3_exec(db, "BEGIN IMMEDIATE; INSERT INTO t(v) VALUES (0)", nullptr, nullptr,
                     nullptr) != SQLITE_OK) {
      return 2;
    }
    if (write(from_a[1], "t", 1) != 1 || read(to_a[0], &c, 1) != 1) return 3;  // H holds it
    if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return 4;
    if (write(from_a[1], "c", 1) != 1) return 5;
    for (;;) pause();  // idle, connection open, until killed
  });
  ASSERT_EQ(read(from_a[0], &c, 1), 1);  // A holds the shared turn
  xptest::Child h = xptest::ForkChild([&](int) {
    XShared* s = MapSidecar(path);
    if (s == nullptr) return 4;
    auto* mu = reinterpret_cast<pthread_mutex_t*>(&s->mu);
    if (pthread_mutex_lock(mu) != 0) return 5;
    if (write(from_h[1], "h", 1) != 1 || read(to_h[0], &c, 1) != 1) return 6;
    pthread_mutex_unlock(mu);
    return 0;
  });
  ASSERT_EQ(read(from_h[0], &c, 1), 1);  // H holds the mutex
  ASSERT_EQ(write(to_a[1], "g", 1), 1);
  ASSERT_EQ(read(from_a[0], &c, 1), 1);  // A committed: its release could not be made
  ASSERT_EQ(write(to_h[1], "g", 1), 1);
  EXPECT_EQ(h.Wait(), 0);
  // Stock SQLite: milliseconds. Before the fix: the whole 5 s busy timeout.
  const int64_t ms = WriteInOtherProcess(path, 5000);
  kill(a.pid, SIGKILL);
  a.Wait();
  kill(idle.pid, SIGKILL);
  idle.Wait();
  EXPECT_GE(ms, 0) << "the write failed";
  EXPECT_LT(ms, 2500) << "the other process waited for an idle process's turn";
}

INSTANTIATE_TEST_SUITE_P(Modes, OwedRelease, ::testing::Values("wal", "delete"));

// A corrupt `reserved` index (another program wrote the file) is repaired, not followed.
TEST(CorruptSidecar, OutOfRangeIndexIsRepairedNotFollowed) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("c.db");
  CreateDb(path, "wal");
  xptest::Child k = xptest::ForkChild([&](int) {
    sqlite3* db = nullptr;
    sqlite3_open_v2(("file:" + path).c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI,
                    nullptr);
    if (sqlite3_exec(db, "BEGIN IMMEDIATE; INSERT INTO t(v) VALUES (1)", nullptr, nullptr,
                     nullptr) != SQLITE_OK) {
      return 2;
    }
    XShared* s = MapSidecar(path);
    if (s == nullptr) return 4;
    const int32_t bad = 0x10000000;
    std::memcpy(reinterpret_cast<char*>(s) + offsetof(XShared, reserved), &bad, sizeof bad);
    if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return 5;
    return sqlite3_exec(db, "INSERT INTO t(v) VALUES (2)", nullptr, nullptr, nullptr);
  });
  EXPECT_EQ(k.Wait(), 0) << "128 + 11 would be SIGSEGV";
}

// A read-only connection opened first does not decide for the read-write ones after it.
TEST(Attach, ReadOnlyFirstOpenDoesNotTurnTheSidecarOff) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("r.db");
  CreateDb(path, "wal");
  Db ro("file:" + path + "?mode=ro");
  ASSERT_EQ(ro.open_rc(), SQLITE_OK);
  Db rw("file:" + path);
  rw.Must("INSERT INTO t(v) VALUES (1)");
  const std::string st = rw.Text("SELECT safeconc_stats()");
  EXPECT_NE(st.find("\"mode\":\"sidecar\""), std::string::npos) << st;
}

}  // namespace
