// bench_udf.cc - what the UDF trampoline costs, against baselines measured in the same run.
//
// 1. Direct path vs a native UDF: SELECT sum(f(x)) over 1M rows on the owner thread, f
//    registered with sqlite3_create_function (native) and through the trampoline (direct).
// 2. Dispatch round trip: a worker thread steps SELECT f(?) once per call while the owner
//    thread runs f; per-call latency p50/p99 and calls/s, with the built-in fd owner (poll +
//    drain) and with a hook owner (a mutex/condvar task queue, as a binding's loop would be),
//    against the floor: a plain condition-variable ping-pong between two threads.
//
// Usage: bench_udf
#include <dlfcn.h>
#include <poll.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "safeconc.h"

namespace {

using Clock = std::chrono::steady_clock;
const safeconc_api_v1* g_api = nullptr;

void NativePlusOne(sqlite3_context* c, int, sqlite3_value** v) {
  sqlite3_result_int64(c, sqlite3_value_int64(v[0]) + 1);
}
void HostPlusOne(safeconc_ctx* c) { g_api->result_int64(c, g_api->arg_int64(c, 0) + 1); }

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double SumQuerySeconds(sqlite3* db) {
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT sum(f(x)) FROM t", -1, &st, nullptr);
  const Clock::time_point t0 = Clock::now();
  sqlite3_step(st);
  const double s = Seconds(Clock::now() - t0);
  sqlite3_finalize(st);
  return s;
}

struct Latency {
  double p50_us, p99_us, per_s;
};

Latency Summarize(std::vector<double>& us, double wall) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100], static_cast<double>(us.size()) / wall};
}

// The worker side: one sqlite3_step of SELECT f(?) per call, timed.
Latency WorkerCalls(sqlite3* db, int n) {
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT f(?1)", -1, &st, nullptr);
  std::vector<double> us;
  us.reserve(static_cast<size_t>(n));
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < n; ++i) {
    sqlite3_bind_int64(st, 1, i);
    const Clock::time_point t0 = Clock::now();
    if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int64(st, 0) != i + 1) {
      std::fprintf(stderr, "wrong result at call %d: %s\n", i, sqlite3_errmsg(db));
      std::exit(1);
    }
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    sqlite3_reset(st);
  }
  const double wall = Seconds(Clock::now() - start);
  sqlite3_finalize(st);
  return Summarize(us, wall);
}

// The floor: request/response between two threads over a mutex and condition variable.
Latency PingPong(int n) {
  std::mutex mu;
  std::condition_variable cv;
  int64_t request = -1, response = -1;
  bool stop = false;
  std::thread server([&] {
    std::unique_lock<std::mutex> l(mu);
    for (;;) {
      cv.wait(l, [&] { return stop || request >= 0; });
      if (stop) return;
      response = request + 1;
      request = -1;
      cv.notify_all();
    }
  });
  std::vector<double> us;
  us.reserve(static_cast<size_t>(n));
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < n; ++i) {
    const Clock::time_point t0 = Clock::now();
    std::unique_lock<std::mutex> l(mu);
    request = i;
    response = -1;
    cv.notify_all();
    cv.wait(l, [&] { return response >= 0; });
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  const double wall = Seconds(Clock::now() - start);
  {
    std::lock_guard<std::mutex> l(mu);
    stop = true;
  }
  cv.notify_all();
  server.join();
  return Summarize(us, wall);
}

// A binding-like loop for the hook owner: tasks posted to a queue, run by the owner thread.
struct HookLoop {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<safeconc_task*> tasks;
  bool stop = false;
  static int Post(void* arg, safeconc_task* t) {
    HookLoop* l = static_cast<HookLoop*>(arg);
    {
      std::lock_guard<std::mutex> g(l->mu);
      l->tasks.push_back(t);
    }
    l->cv.notify_one();
    return 0;
  }
};

Latency Dispatched(sqlite3* db, bool fd_kind, int n) {
  Latency result{};
  std::atomic<bool> done{false};
  HookLoop loop;
  safeconc_owner* owner = nullptr;
  if (fd_kind) {
    g_api->owner_open_fd(&owner);
  } else {
    g_api->owner_open(HookLoop::Post, &loop, &owner);
  }
  g_api->create_function(db, "f", 1, SQLITE_DETERMINISTIC, owner, nullptr, HostPlusOne, nullptr);
  std::thread worker([&] {
    result = WorkerCalls(db, n);
    done = true;
    std::lock_guard<std::mutex> g(loop.mu);
    loop.stop = true;
    loop.cv.notify_one();
  });
  if (fd_kind) {
    pollfd p{g_api->owner_fd(owner), POLLIN, 0};
    while (!done.load()) {
      if (poll(&p, 1, 10) > 0) g_api->owner_drain(owner, 0);
    }
  } else {
    std::unique_lock<std::mutex> l(loop.mu);
    for (;;) {
      loop.cv.wait(l, [&] { return loop.stop || !loop.tasks.empty(); });
      if (loop.tasks.empty() && loop.stop) break;
      safeconc_task* t = loop.tasks.front();
      loop.tasks.pop_front();
      l.unlock();
      g_api->task_run(t);
      l.lock();
    }
  }
  worker.join();
  sqlite3_create_function(db, "f", 1, SQLITE_UTF8, nullptr, nullptr, nullptr, nullptr);
  g_api->owner_close(owner);
  return result;
}

}  // namespace

int main() {
  if (!LoadSafeconc()) return 1;
  sqlite3* db = nullptr;
  sqlite3_open(":memory:", &db);
  void* so = dlopen(SAFECONC_SO_PATH, RTLD_NOW | RTLD_NOLOAD);
  g_api = static_cast<const safeconc_api_v1*>(
      reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL))(1));
  sqlite3_exec(db,
               "CREATE TABLE t(x INTEGER);"
               "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000000)"
               "INSERT INTO t SELECT i FROM c",
               nullptr, nullptr, nullptr);

  // 1. Native vs direct, best of 5 (the same query, the function swapped in between).
  safeconc_owner* owner = nullptr;
  g_api->owner_open_fd(&owner);
  double native = 1e9, direct = 1e9;
  for (int rep = 0; rep < 5; ++rep) {
    sqlite3_create_function(db, "f", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr, NativePlusOne,
                            nullptr, nullptr);
    native = std::min(native, SumQuerySeconds(db));
    g_api->create_function(db, "f", 1, SQLITE_DETERMINISTIC, owner, nullptr, HostPlusOne, nullptr);
    direct = std::min(direct, SumQuerySeconds(db));
  }
  g_api->owner_close(owner);
  std::printf("Direct path (owner thread): SELECT sum(f(x)) over 1M rows, best of 5\n");
  std::printf("  %-34s %9s %9s\n", "", "ns/call", "ratio");
  std::printf("  %-34s %9.1f %9s\n", "native sqlite3_create_function", native * 1e3, "1.00x");
  std::printf("  %-34s %9.1f %8.2fx\n", "trampoline, direct path", direct * 1e3, direct / native);

  // 2. Round trips.
  const int n = 20000;
  const Latency floor = PingPong(n);
  const Latency fd = Dispatched(db, true, n);
  const Latency hook = Dispatched(db, false, n);
  std::printf("\nDispatch round trip: worker steps SELECT f(?) %d times, owner runs f\n", n);
  std::printf("  %-34s %9s %9s %10s %11s\n", "", "p50 us", "p99 us", "calls/s", "p50/floor");
  auto row = [&](const char* name, const Latency& l) {
    std::printf("  %-34s %9.1f %9.1f %10.0f %10.2fx\n", name, l.p50_us, l.p99_us, l.per_s,
                l.p50_us / floor.p50_us);
  };
  row("floor: condvar ping-pong", floor);
  row("trampoline, fd owner (poll+drain)", fd);
  row("trampoline, hook owner (condvar)", hook);
  sqlite3_close(db);
  return 0;
}
