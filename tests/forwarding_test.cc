// forwarding_test.cc - faithful forwarding: one workload run through "unix" and through
// "safeconc" must give identical results, in every rollback journal mode and WAL, with and
// without memory-mapped I/O. The workload covers schema changes, inserts, updates, deletes,
// an index, a 50 MB blob, a transaction across an attached database, VACUUM, a process that
// dies in the middle of a transaction (hot-journal / WAL recovery) and integrity_check.
//
// The crash is a fork()ed child that _exit()s with a transaction open whose pages already
// spilled to disk; fork is safe here because this binary starts no threads.
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace {

using sctest::Db;
using sctest::TempDir;

constexpr int kBlobBytes = 50 * 1024 * 1024;
constexpr int kChunk = 1024 * 1024;
constexpr int kRows = 5000;

uint64_t Fnv(uint64_t h, const void* data, size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
constexpr uint64_t kFnvSeed = 1469598103934665603ull;

// A hash of every row `sql` returns, in order.
std::string Digest(Db& db, const std::string& sql) {
  uint64_t h = kFnvSeed;
  size_t n = 0;
  for (const std::string& r : db.Rows(sql)) {
    h = Fnv(h, r.data(), r.size() + 1);  // the NUL separates rows
    ++n;
  }
  return std::to_string(n) + " rows #" + std::to_string(h);
}

// Deterministic bytes for chunk `i` of the blob (so both runs write the same 50 MB). Eight
// bytes per step: the Debug+ASan build runs this over 200 MB per configuration.
void FillChunk(int i, std::vector<unsigned char>* buf) {
  uint64_t x = 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(i + 1);
  for (size_t off = 0; off + 8 <= buf->size(); off += 8) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    std::memcpy(buf->data() + off, &x, 8);
  }
}

// A fast hash of a chunk (word-wise FNV-style mixing), for the same reason.
uint64_t HashChunk(uint64_t h, const unsigned char* p, size_t n) {
  size_t off = 0;
  for (; off + 8 <= n; off += 8) {
    uint64_t w;
    std::memcpy(&w, p + off, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  return Fnv(h, p + off, n - off);
}

// Writes the blob in chunks through incremental blob I/O; returns "" or the error.
std::string WriteBlob(Db& db) {
  if (db.Exec("insert into big(id, b) values (1, zeroblob(" + std::to_string(kBlobBytes) + "))") !=
      SQLITE_OK)
    return db.error();
  sqlite3_blob* blob = nullptr;
  if (sqlite3_blob_open(db.get(), "main", "big", "b", 1, 1, &blob) != SQLITE_OK) return db.error();
  std::vector<unsigned char> buf(kChunk);
  for (int i = 0; i < kBlobBytes / kChunk; ++i) {
    FillChunk(i, &buf);
    if (sqlite3_blob_write(blob, buf.data(), kChunk, i * kChunk) != SQLITE_OK) {
      sqlite3_blob_close(blob);
      return db.error();
    }
  }
  return sqlite3_blob_close(blob) == SQLITE_OK ? "" : db.error();
}

std::string BlobDigest(Db& db) {
  sqlite3_blob* blob = nullptr;
  if (sqlite3_blob_open(db.get(), "main", "big", "b", 1, 0, &blob) != SQLITE_OK)
    return "no blob: " + db.error();
  const int size = sqlite3_blob_bytes(blob);
  std::vector<unsigned char> buf(kChunk), want(kChunk);
  uint64_t h = kFnvSeed;
  bool pattern_ok = size == kBlobBytes;
  for (int off = 0, i = 0; off < size; off += kChunk, ++i) {
    const int n = std::min(kChunk, size - off);
    if (sqlite3_blob_read(blob, buf.data(), n, off) != SQLITE_OK) {
      sqlite3_blob_close(blob);
      return "read failed: " + db.error();
    }
    FillChunk(i, &want);
    pattern_ok = pattern_ok && std::memcmp(buf.data(), want.data(), n) == 0;
    h = HashChunk(h, buf.data(), n);
  }
  sqlite3_blob_close(blob);
  return std::to_string(size) + " bytes, pattern " + (pattern_ok ? "ok" : "WRONG") + " #" +
         std::to_string(h);
}

// The whole file, read in one call (a char-by-char stream iterator is slow under TSan).
std::string ReadFile(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    std::fseek(f, 0, SEEK_END);
    out.resize(static_cast<size_t>(std::ftell(f)));
    std::fseek(f, 0, SEEK_SET);
    out.resize(std::fread(&out[0], 1, out.size(), f));
    std::fclose(f);
  }
  return out;
}

struct Config {
  const char* mode;
  bool mmap;
};

// Per-connection settings of the workload; every connection of a run uses them.
std::string Settings(const Config& c) {
  std::string s = std::string("pragma journal_mode=") + c.mode + "; pragma synchronous=off;";
  if (c.mmap) s += "pragma mmap_size=268435456;";
  return s;
}

// The user data, without the crash markers, in a stable order.
const char* kTableT =
    "select id, name, n, hex(payload) from t where name not like 'marker%' order by id";

// The child of the simulated crash: commits one marker row, then starts a transaction big
// enough to spill to disk with a tiny cache, and dies without committing or rolling back.
[[noreturn]] void CrashingChild(const std::string& path, const char* vfs, const Config& c) {
  sqlite3* db = nullptr;
  int step = 10;
  auto run = [&](const std::string& sql) {
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) _exit(step);
    ++step;
  };
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, vfs) != SQLITE_OK) _exit(2);
  run(Settings(c) + "pragma cache_size=10; pragma wal_autocheckpoint=0;");
  run("insert into t(name, n) values ('marker-committed', -1)");
  run("begin; update t set name = name || '-crashed', payload = zeroblob(300);"
      "insert into t(name, n) values ('marker-uncommitted', -2)");
  _exit(0);  // the "crash": no commit, no rollback, no close
}

// Runs the whole workload in `dir` through `vfs`; returns a transcript of every result. Fails
// the test (non-fatally) where a result is wrong on its own, whatever the other VFS gives.
std::string RunWorkload(const std::string& dir, const char* vfs, const Config& c) {
  const std::string path = dir + "/main.db";
  std::ostringstream out;
  std::string before_crash;
  {
    Db db(path, vfs);
    EXPECT_EQ(db.open_rc(), SQLITE_OK) << db.error();
    out << "vfs " << db.VfsName() << "\n";
    db.Must(Settings(c));
    out << "journal_mode " << db.Text("pragma journal_mode") << "\n";
    out << "mmap_size " << db.Text("pragma mmap_size") << "\n";
    EXPECT_EQ(db.Text("pragma journal_mode"), c.mode);
    EXPECT_EQ(db.Int("pragma mmap_size"), c.mmap ? 268435456 : 0);
    EXPECT_EQ(db.Int("pragma synchronous"), 0);
    db.Must(
        "create table t(id integer primary key, name text, n int, payload blob);"
        "create index t_n on t(n);"
        "create table big(id integer primary key, b blob)");
    db.Must("with recursive c(i) as (select 1 union all select i + 1 from c where i < " +
            std::to_string(kRows) +
            ") insert into t(id, name, n, payload) select i, 'row-' || i, (i * 7919) % 1000, "
            "zeroblob(i % 200) from c");
    db.Must("update t set n = n + 1, payload = cast(name as blob) where id % 3 = 0");
    db.Must("delete from t where id % 5 = 0");
    out << "after dml " << Digest(db, kTableT) << "\n";
    out << "index " << Digest(db, "select n, id from t indexed by t_n where n between 10 and 500")
        << "\n";

    db.Must("begin");
    const std::string blob_err = WriteBlob(db);
    EXPECT_EQ(blob_err, "");
    db.Must("commit");
    out << "blob " << BlobDigest(db) << "\n";

    db.Must("attach '" + dir + "/aux.db' as aux");
    db.Must(std::string("pragma aux.journal_mode=") + c.mode);
    db.Must("create table aux.u(id integer primary key, name text)");
    // One transaction over two databases: a super-journal in the rollback modes.
    db.Must(
        "begin; insert into aux.u select id, name from t where n < 100;"
        "update t set n = -n where id in (select id from aux.u); commit");
    out << "aux " << Digest(db, "select * from aux.u order by id") << "\n";
    out << "after attach " << Digest(db, kTableT) << "\n";
    db.Must("detach aux");

    db.Must("delete from t where id % 7 = 0");  // free pages for VACUUM to reclaim
    const int64_t pages = db.Int("pragma page_count");
    db.Must("vacuum");
    EXPECT_LT(db.Int("pragma page_count"), pages) << "VACUUM did not rebuild the file";
    out << "after vacuum " << Digest(db, kTableT) << " blob " << BlobDigest(db) << "\n";
    out << "integrity " << db.Text("pragma integrity_check") << "\n";
    EXPECT_EQ(db.Text("pragma integrity_check"), "ok");
    before_crash = Digest(db, kTableT);
  }

  // The crash. No connection is open in this process, as after a real process restart.
  pid_t pid = fork();
  if (pid == 0) CrashingChild(path, vfs, c);
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  // Uncommitted changes really are on disk, so recovery has something to undo: in the db file
  // (rollback modes, spilled while the journal is hot) or in the WAL (uncommitted frames).
  const bool wal = std::string(c.mode) == "wal";
  const std::string spilled = ReadFile(path + (wal ? "-wal" : ""));
  EXPECT_NE(spilled.find("row-1-crashed"), std::string::npos) << "nothing spilled to disk";
  if (!wal) {
    struct stat st;
    EXPECT_EQ(::stat((path + "-journal").c_str(), &st), 0) << "no hot journal left behind";
  }
  {
    Db db(path, vfs);
    EXPECT_EQ(db.open_rc(), SQLITE_OK) << db.error();
    db.Must(Settings(c));
    const std::string after = Digest(db, kTableT);
    EXPECT_EQ(after, before_crash) << "the crashed transaction was not rolled back";
    out << "recovered " << after << "\n";
    out << "markers " << db.Text("select group_concat(name) from t where name like 'marker%'")
        << "\n";
    EXPECT_EQ(db.Text("select group_concat(name) from t where name like 'marker%'"),
              "marker-committed");
    out << "crashed rows " << db.Int("select count(*) from t where name like '%-crashed'") << "\n";
    out << "integrity " << db.Text("pragma integrity_check") << "\n";
    EXPECT_EQ(db.Text("pragma integrity_check"), "ok");
    out << "journal_mode " << db.Text("pragma journal_mode") << "\n";
  }
  return out.str();
}

class Forwarding : public ::testing::TestWithParam<Config> {};

// The same workload through unix and through safeconc gives the same transcript. Catches any
// method that is not forwarded faithfully (a dropped xSync flag, a wrong xShmMap region, a
// missing xFetch/xUnfetch, a journal opened through the wrong VFS, a lost hot journal).
TEST_P(Forwarding, SameResultsThroughUnixAndSafeconc) {
  sctest::LoadExtension();
  const Config c = GetParam();
  TempDir plain, shim;
  const std::string via_unix = RunWorkload(plain.path(), "unix", c);
  const std::string via_shim = RunWorkload(shim.path(), "safeconc", c);
  EXPECT_NE(via_unix.find("vfs unix\n"), std::string::npos) << via_unix;
  EXPECT_NE(via_shim.find("vfs safeconc/unix\n"), std::string::npos) << via_shim;
  if (getenv("SAFECONC_TEST_VERBOSE")) std::cout << via_shim;
  // Compare everything but the first line, which names the VFS.
  EXPECT_EQ(via_unix.substr(via_unix.find('\n')), via_shim.substr(via_shim.find('\n')));
}

const Config kConfigs[] = {
    {"delete", false},  {"delete", true},  {"truncate", false}, {"truncate", true},
    {"persist", false}, {"persist", true}, {"wal", false},      {"wal", true},
};

INSTANTIATE_TEST_SUITE_P(AllModes, Forwarding, ::testing::ValuesIn(kConfigs),
                         [](const ::testing::TestParamInfo<Config>& info) {
                           return std::string(info.param.mode) +
                                  (info.param.mmap ? "_mmap" : "_nommap");
                         });

}  // namespace
