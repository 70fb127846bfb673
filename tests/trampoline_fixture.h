// trampoline_fixture.h - what the two trampoline test files share: the host callbacks the
// tests register (scalar, aggregate and window) and the Trampoline fixture (an fd owner on the
// test's thread, a fresh database, helpers that step SQL on a worker while the owner thread
// runs its loop). Both files build one executable, trampoline_test.
#ifndef SAFECONC_TESTS_TRAMPOLINE_FIXTURE_H
#define SAFECONC_TESTS_TRAMPOLINE_FIXTURE_H

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/trampoline_util.h"

namespace trampoline_test {

using sctest::Api;
using sctest::OnWorker;
using sctest::Tid;
using Clock = std::chrono::steady_clock;

inline const safeconc_api_v1* A() {
  static const safeconc_api_v1* api = Api();
  return api;
}

// ---- Host callbacks used by the tests --------------------------------------------------

inline std::atomic<uint64_t> g_last_tid{0};
inline std::atomic<int> g_calls{0};

// sleep_udf(ms): the seed's function; busy-waits like the seed's JavaScript, records the
// thread it ran on.
inline void SleepUdf(safeconc_ctx* c) {
  g_last_tid = Tid();
  const int64_t ms = A()->arg_int64(c, 0);
  const Clock::time_point until = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < until) {
  }
  A()->result_int64(c, ms);
}

// echo(x): a copy of the argument.
inline void Echo(safeconc_ctx* c) { A()->result_arg(c, 0); }

// rebuild(x): the argument rebuilt through the typed accessors and setters.
inline void Rebuild(safeconc_ctx* c) {
  const safeconc_api_v1* a = A();
  switch (a->arg_type(c, 0)) {
    case SQLITE_INTEGER:
      a->result_int64(c, a->arg_int64(c, 0));
      break;
    case SQLITE_FLOAT:
      a->result_double(c, a->arg_double(c, 0));
      break;
    case SQLITE_TEXT:
      a->result_text(c, reinterpret_cast<const char*>(a->arg_text(c, 0)), a->arg_bytes(c, 0));
      break;
    case SQLITE_BLOB:
      a->result_blob(c, a->arg_blob(c, 0), a->arg_bytes(c, 0));
      break;
    default:
      a->result_null(c);
      break;
  }
}

// fail(msg, code): raises an error.
inline void Fail(safeconc_ctx* c) {
  A()->result_error(c, reinterpret_cast<const char*>(A()->arg_text(c, 0)),
                    static_cast<int>(A()->arg_int64(c, 1)));
}

inline void Zero(safeconc_ctx* c) {
  A()->result_zeroblob(c, static_cast<int>(A()->arg_int64(c, 0)));
}

// my_sum: an aggregate (and, with inverse/value, a window) keeping its state in the slot.
inline void SumStep(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  if (*slot == nullptr) *slot = new int64_t(0);
  *static_cast<int64_t*>(*slot) += A()->arg_int64(c, 0);
}
inline void SumInverse(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  *static_cast<int64_t*>(*slot) -= A()->arg_int64(c, 0);
}
inline void SumValue(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  A()->result_int64(c, *slot ? *static_cast<int64_t*>(*slot) : 0);
}
inline void SumFinal(safeconc_ctx* c) {
  void** slot = A()->aggregate_state(c);
  if (*slot == nullptr) return A()->result_null(c);
  A()->result_int64(c, *static_cast<int64_t*>(*slot));
  delete static_cast<int64_t*>(*slot);
  *slot = nullptr;
}

inline void Count(safeconc_ctx* c) {
  ++g_calls;
  A()->result_int64(c, A()->arg_int64(c, 0));
}

class Trampoline : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(A(), nullptr) << "safeconc_api(1) not reachable";
    ASSERT_EQ(A()->owner_open_fd(&owner_), SQLITE_OK) << A()->errmsg();
    uri_ = "file:" + dir_.File("t.db");
  }
  void TearDown() override {
    if (owner_) A()->owner_close(owner_);
  }
  void Register(sqlite3* db) {
    ASSERT_EQ(A()->create_function(db, "sleep_udf", 1, 0, owner_, nullptr, SleepUdf, nullptr),
              SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "echo", 1, 0, owner_, nullptr, Echo, nullptr), SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "rebuild", 1, 0, owner_, nullptr, Rebuild, nullptr),
              SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "fail", 2, 0, owner_, nullptr, Fail, nullptr), SQLITE_OK);
    ASSERT_EQ(A()->create_function(db, "zero", 1, 0, owner_, nullptr, Zero, nullptr), SQLITE_OK);
    ASSERT_EQ(
        A()->create_aggregate(db, "my_sum", 1, 0, owner_, nullptr, SumStep, SumFinal, nullptr),
        SQLITE_OK);
    ASSERT_EQ(A()->create_window(db, "my_wsum", 1, 0, owner_, nullptr, SumStep, SumFinal, SumValue,
                                 SumInverse, nullptr),
              SQLITE_OK);
  }
  // The rows of `sql`, stepped on a worker thread while this (the owner) thread runs its loop.
  std::vector<std::string> RowsOnWorker(sctest::Db& db, const std::string& sql) {
    std::vector<std::string> rows;
    OnWorker(A(), owner_, [&] { rows = db.Rows(sql); });
    return rows;
  }
  std::string ErrorOnWorker(sctest::Db& db, const std::string& sql, int* code = nullptr) {
    std::string err;
    OnWorker(A(), owner_, [&] {
      const int rc = db.Exec(sql);
      err = rc == SQLITE_OK ? "" : db.error();
      if (code) *code = sqlite3_extended_errcode(db.get());
    });
    return err;
  }

  sctest::TempDir dir_;
  std::string uri_;
  safeconc_owner* owner_ = nullptr;
};

}  // namespace trampoline_test

#endif  // SAFECONC_TESTS_TRAMPOLINE_FIXTURE_H
