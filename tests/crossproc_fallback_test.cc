// crossproc_fallback_test.cc - where the sidecar cannot or must not be used, the database
// still opens and works (coordinated in-process, other processes by polling, as before), and
// safeconc_stats() says why:
//  - a read-only directory (the sidecar cannot be created);
//  - a sidecar owned by another user than the database's owner (as root: a child drops its
//    privileges to the database's owner, "nobody");
//  - a corrupt sidecar: rebuilt when no process uses it, left alone (polling) while one does;
//  - SAFECONC_SIDECAR=0.
// Each case runs in a forked child (privileges and environment are per process) with two
// writer threads, and reports the stats to the parent.
// Would catch: an open failed because of the sidecar (stock SQLite would open), a sidecar of
// another user trusted, a corrupt sidecar read while in use, a silent fallback.
#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/crossproc_util.h"
#include "tests/test_util.h"

namespace {

using sctest::Db;
using sctest::TempDir;
using xptest::ForkChild;
using xptest::ReadAll;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

// In the child: two threads write 50 rows each through safeconc; writes the stats JSON (or an
// error) to `out`. Returns 0 if every write succeeded.
// `init` runs first on every connection (a journal mode is per connection).
int WriteAndReport(const std::string& path, int out, const char* init = "") {
  std::vector<std::thread> ths;
  std::vector<int> failed(2, 0);
  for (int t = 0; t < 2; ++t) {
    ths.emplace_back([&, t] {
      sqlite3* db = nullptr;
      if (sqlite3_open_v2(("file:" + path).c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI,
                          nullptr) != SQLITE_OK) {
        failed[t] = 100;
        sqlite3_close(db);
        return;
      }
      sqlite3_exec(db, init, nullptr, nullptr, nullptr);
      for (int i = 0; i < 50; ++i) {
        if (sqlite3_exec(db, "INSERT INTO t(v) VALUES (randomblob(100))", nullptr, nullptr,
                         nullptr) != SQLITE_OK) {
          ++failed[t];
        }
      }
      sqlite3_close(db);
    });
  }
  // A third connection keeps the file open while the stats are read.
  Db d("file:" + path);
  if (d.open_rc() == SQLITE_OK) d.Exec(init);
  for (auto& th : ths) th.join();
  std::string report = d.open_rc() == SQLITE_OK ? d.Text("SELECT safeconc_stats()") : d.error();
  report += "\nrows=" + (d.open_rc() == SQLITE_OK ? d.Text("SELECT count(*) FROM t") : "?");
  if (write(out, report.data(), report.size()) != static_cast<ssize_t>(report.size())) return 8;
  return failed[0] + failed[1] == 0 ? 0 : 1;
}

void DropToNobody() {
  if (setgroups(0, nullptr) != 0 || setgid(kNogroup) != 0 || setuid(kNobody) != 0) _exit(7);
}

void CreateDb(const std::string& path, const char* journal) {
  Db d(path, "unix");
  d.Must(std::string("PRAGMA journal_mode=") + journal);
  d.Must("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t(v) VALUES (0);");
}

// Runs the case in a child; checks it worked in polling mode with `reason` in the stats.
void ExpectPolling(const std::function<int(int)>& child, const std::string& reason,
                   const std::string& rows = "rows=101") {
  xptest::Child k = ForkChild(child);
  const std::string out = ReadAll(k.out);
  EXPECT_EQ(k.Wait(), 0) << out;
  EXPECT_NE(out.find("\"mode\":\"polling\""), std::string::npos) << out;
  EXPECT_NE(out.find(reason), std::string::npos) << "want reason '" << reason << "' in " << out;
  EXPECT_NE(out.find(rows), std::string::npos) << out;
}

TEST(Fallback, ReadOnlyDirectory) {
  if (geteuid() != 0)
    GTEST_SKIP() << "needs root to drop privileges to a user for whom it is read-only";
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("ro.db");
  // Rollback journal kept as a file (PERSIST) so writes need no new file in the directory.
  CreateDb(path, "persist");
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);  // root's, not writable by nobody
  for (const char* f : {"", "-journal"}) {
    ASSERT_EQ(chown((path + f).c_str(), kNobody, kNogroup), 0);
  }
  ExpectPolling(
      [&](int out) {
        DropToNobody();
        return WriteAndReport(path, out, "PRAGMA journal_mode=persist");
      },
      "cannot open " + path + "-safeconc: Permission denied");
}

TEST(Fallback, SidecarOwnedByAnotherUser) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to own files as two users";
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("owner.db");
  CreateDb(path, "wal");
  ASSERT_EQ(chmod(dir.path().c_str(), 0777), 0);
  for (const char* f : {"", "-wal", "-shm"}) chown((path + f).c_str(), kNobody, kNogroup);
  // Planted by root (another user than the database's owner), writable by everyone's group.
  const int fd = open((path + "-safeconc").c_str(), O_CREAT | O_RDWR, 0664);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0664), 0);
  ASSERT_EQ(fchown(fd, 0, kNogroup), 0);
  close(fd);
  ExpectPolling(
      [&](int out) {
        DropToNobody();
        return WriteAndReport(path, out);
      },
      "is owned by uid 0, the database by uid 65534");
  // Root opening a database of another user does not use a sidecar at all.
  ExpectPolling([&](int out) { return WriteAndReport(path, out); },
                "the database is owned by uid 65534, this process runs as uid 0", "rows=201");
}

// Garbage, as a crashed or foreign writer might leave, with a sidecar's owner and mode.
void WriteGarbageSidecar(const std::string& path, size_t size) {
  const int fd = open((path + "-safeconc").c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  std::string junk(size, '\x5a');
  ASSERT_EQ(write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  close(fd);
}

TEST(Fallback, CorruptSidecarIsRebuiltWhenNobodyUsesIt) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("corrupt.db");
  CreateDb(path, "wal");
  WriteGarbageSidecar(path, 777);
  xptest::Child k = ForkChild([&](int out) { return WriteAndReport(path, out); });
  const std::string out = ReadAll(k.out);
  EXPECT_EQ(k.Wait(), 0) << out;
  EXPECT_NE(out.find("\"mode\":\"sidecar\""), std::string::npos) << out;
  EXPECT_NE(out.find("rows=101"), std::string::npos) << out;
}

TEST(Fallback, CorruptSidecarInUseIsLeftAlone) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("inuse.db");
  CreateDb(path, "wal");
  WriteGarbageSidecar(path, 4096);
  // Another process "uses" it (holds the attach lock, as an attached process would).
  int ready[2], done[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(done), 0);
  xptest::Child holder = ForkChild([&](int) {
    close(ready[0]);
    close(done[1]);
    const int fd = open((path + "-safeconc").c_str(), O_RDWR);
    struct flock fl = {};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 1;
    fl.l_len = 1;
    if (fd < 0 || fcntl(fd, F_OFD_SETLK, &fl) != 0) return 2;
    if (write(ready[1], "r", 1) != 1) return 3;
    char c;
    return read(done[0], &c, 1) >= 0 ? 0 : 4;  // until the parent closes its end
  });
  close(ready[1]);
  close(done[0]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ExpectPolling([&](int out) { return WriteAndReport(path, out); },
                "is in use by processes of another libsafeconc version");
  close(done[1]);
  close(ready[0]);
  EXPECT_EQ(holder.Wait(), 0);
}

TEST(Fallback, TurnedOffByEnvironment) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("off.db");
  CreateDb(path, "wal");
  ExpectPolling(
      [&](int out) {
        setenv("SAFECONC_SIDECAR", "0", 1);
        return WriteAndReport(path, out);
      },
      "SAFECONC_SIDECAR=0");
  struct stat st;
  EXPECT_NE(stat((path + "-safeconc").c_str(), &st), 0) << "no sidecar may be created";
}

}  // namespace
