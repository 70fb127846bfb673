// test_util.h - helpers shared by the C++ tests: a temp directory, a small RAII connection
// wrapper, and loading the built extension the way a binding does.
#ifndef SAFECONC_TESTS_TEST_UTIL_H
#define SAFECONC_TESTS_TEST_UTIL_H

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace sctest {

// The built libsafeconc.so (set by CMake).
std::string SoPath();

// Loads libsafeconc once per process through sqlite3_load_extension on a throwaway
// connection (which is closed again: the VFS must outlive it). Fails the test on error.
void LoadExtension();

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// One connection. Open failures are recorded in rc()/error(), not fatal, so tests can
// check them.
class Db {
 public:
  // `name` may be a file: URI. `vfs` null means the process default.
  explicit Db(const std::string& name, const char* vfs = nullptr,
              int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI);
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  sqlite3* get() const { return db_; }
  int open_rc() const { return open_rc_; }
  std::string error() const;

  // Runs every statement in `sql`; returns the SQLite code.
  int Exec(const std::string& sql);
  // Exec that fails the test on error.
  void Must(const std::string& sql);
  // The first column of the first row, as text ("" if no row, "NULL" for NULL). Fails the
  // test on error.
  std::string Text(const std::string& sql);
  int64_t Int(const std::string& sql);
  // All rows, each as column values joined by '|'.
  std::vector<std::string> Rows(const std::string& sql);
  // The name of the VFS this connection's main database goes through ("safeconc/unix", …).
  std::string VfsName();

 private:
  sqlite3* db_ = nullptr;
  int open_rc_ = SQLITE_OK;
};

// A one-shot latch (tests synchronise on these, never on sleeps).
class Latch {
 public:
  void Open() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace sctest

#endif  // SAFECONC_TESTS_TEST_UTIL_H
