// coordinator_v2_util.h - what the coordinator v2 test files share (one executable,
// coordinator_v2_test): loop scaling under sanitizers, starting threads together, reading
// the coordinator's stats, and a fixture with a fresh database of one journal mode.
#ifndef SAFECONC_TESTS_COORDINATOR_V2_UTIL_H
#define SAFECONC_TESTS_COORDINATOR_V2_UTIL_H

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

namespace v2test {

using Clock = std::chrono::steady_clock;
inline constexpr bool kSanitized = SCTEST_SANITIZED != 0;

inline int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Loop counts (never thread counts: contention is the point) divided by SAFECONC_TEST_DIVISOR,
// 4 by default under a sanitizer (TSan runs these loops ~5-15x slower), 1 otherwise.
inline int Scaled(int n) {
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

inline sqlite3* Open(const std::string& uri, const char* vfs = nullptr,
                     int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(uri.c_str(), &db, flags, vfs);
  return db;
}

inline std::string LastBusy(sctest::Db& db) { return db.Text("SELECT safeconc_last_busy()"); }

// Field `name` of the "coordinator" object of `db`'s database in safeconc_stats() (PRAGMA
// safeconc_stats); nullopt when the field is missing.
inline std::optional<int64_t> CoordinatorStat(const std::string& stats, const std::string& name) {
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

}  // namespace v2test

#endif  // SAFECONC_TESTS_COORDINATOR_V2_UTIL_H
