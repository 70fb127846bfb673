// bench_locks.cc - write contention: stock SQLite vs an application mutex vs an application
// FIFO lock vs libsafeconc, measured side by side in one run, plus the single-connection
// overhead of the shim.
//
// Each cell: T threads, one connection each, for a fixed wall time each thread runs
// BEGIN IMMEDIATE; INSERT; <work>; COMMIT. Every peer sets sqlite3_busy_timeout(5000) after
// open, as Python and better-sqlite3 do. synchronous=OFF, so the table shows coordination,
// not the disk (the shim never changes durability settings; the benchmark chooses this).
//   stock        file:...?vfs=unix
//   app mutex    the same, with one std::mutex per database held around each transaction
//                (it lets the releasing thread take it again at once: fast, and unfair)
//   app fifo     the same, with a first-come-first-served lock instead: the cost of fairness
//                itself, with no VFS in the way (the floor for any fair coordinator)
//   libsafeconc  the default VFS after loading (safeconc); its busy timeout sleeps through the
//                shim's xSleep, which wakes on release
//   fair bound   no lock and no other thread: ONE thread runs the cell's transactions
//                round-robin over T connections. A FIFO coordinator gives every transaction
//                to another connection, whose page cache the previous commit invalidated, so
//                this is about the most any fair scheme can reach here (the second core can
//                only overlap the statement preparation outside the lock period)
// Printed: transactions/s, latency p50/p99/max (ms), failures, and for libsafeconc the
// coordinator's release-to-grant latency; ratios are against the other peers, same run. "cpu"
// is cores busy on average (process CPU time / wall time): it tells a hand-over that waits
// for a wake-up from one that burns CPU.
//
// A second table runs fixed work instead of fixed time, as a web server must answer every
// request: each thread commits N transactions and tx/s is all of them over the time until
// the last one finished, so a peer's starved stragglers count against it.
//
// Usage: bench_locks [--stats] [seconds-per-cell]   (default 1.0)
// Focus a run with BENCH_JOURNAL=wal|delete, BENCH_WORK=0|200, BENCH_THREADS=4|16|64,
// BENCH_PEER=stock|mutex|fifo|libsafeconc (skips the single-connection table and the extra
// tables); BENCH_NO_FIXED=1 skips the fixed-work table, BENCH_NO_EXTRA=1 the deferred
// read-then-write rows and the safeconc_fair_ms sweep.
#include <sqlite3.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"

namespace {

using Clock = std::chrono::steady_clock;

enum class Peer { kStock, kMutex, kFifo, kSafeconc };
constexpr int kPeers = 4;
const char* PeerName(Peer p) {
  switch (p) {
    case Peer::kStock:
      return "stock";
    case Peer::kMutex:
      return "app mutex";
    case Peer::kFifo:
      return "app fifo";
    case Peer::kSafeconc:
      break;
  }
  return "libsafeconc";
}

// A first-come-first-served lock: each waiter parks on its own condition variable and the
// releaser hands the lock to the oldest one directly (no barging).
class FifoLock {
 public:
  void lock() {
    std::unique_lock<std::mutex> l(mu_);
    if (!held_ && waiters_.empty()) {
      held_ = true;
      return;
    }
    Waiter w;
    waiters_.push_back(&w);
    while (!w.granted) w.cv.wait(l);
  }
  void unlock() {
    std::unique_lock<std::mutex> l(mu_);
    if (waiters_.empty()) {
      held_ = false;
      return;
    }
    Waiter* w = waiters_.front();
    waiters_.pop_front();
    w->granted = true;  // held_ stays true: ownership passes to w
    w->cv.notify_one();
  }

 private:
  struct Waiter {
    std::condition_variable cv;
    bool granted = false;
  };
  std::mutex mu_;
  bool held_ = false;
  std::deque<Waiter*> waiters_;
};

struct Result {
  long barges = -1, handoffs = -1, max_overtaken_us = -1;  // libsafeconc's coordinator
  double tps = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  long failures = 0;
  long r2g_p50_us = -1, r2g_p99_us = -1;
  double cpu = 0;  // cores busy on average during the cell (user + system time / wall)
};

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

std::string g_dir;
bool g_print_stats = false;  // --stats: print the coordinator's JSON after each libsafeconc cell

void Spin(int us) {
  const Clock::time_point until = Clock::now() + std::chrono::microseconds(us);
  while (Clock::now() < until) {
  }
}

long JsonInt(const std::string& json, const std::string& path) {
  sqlite3* db = nullptr;
  sqlite3_open(":memory:", &db);
  sqlite3_stmt* st = nullptr;
  const std::string sql = "SELECT json_extract(?1, ?2)";
  long v = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, json.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, path.c_str(), -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
      v = static_cast<long>(sqlite3_column_int64(st, 0));
    }
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

// The deferred read-then-write transaction (Django's default shape): BEGIN; read a counter;
// insert; write the counter back. SQLite fails its first write at once while another
// connection holds the write lock; the row compares those failures with stock's.
bool ReadThenWrite(sqlite3* db) {
  bool ok = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK;
  sqlite3_stmt* st = nullptr;
  long n = -1;
  if (ok && sqlite3_prepare_v2(db, "SELECT n FROM c", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    n = static_cast<long>(sqlite3_column_int64(st, 0));
  }
  sqlite3_finalize(st);
  ok = ok && n >= 0;
  ok = ok && sqlite3_exec(db, "INSERT INTO t(v) VALUES(randomblob(100))", nullptr, nullptr,
                          nullptr) == SQLITE_OK;
  ok = ok && sqlite3_exec(db, ("UPDATE c SET n = " + std::to_string(n + 1)).c_str(), nullptr,
                          nullptr, nullptr) == SQLITE_OK;
  ok = ok && sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
  if (!ok) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  return ok;
}

// One transaction of a cell; false if it failed (rolled back). work_us < 0: ReadThenWrite.
bool Transaction(sqlite3* db, int work_us) {
  if (work_us < 0) return ReadThenWrite(db);
  bool ok = sqlite3_exec(db, "BEGIN IMMEDIATE; INSERT INTO t(v) VALUES(randomblob(64))", nullptr,
                         nullptr, nullptr) == SQLITE_OK;
  if (ok && work_us > 0) Spin(work_us);
  ok = ok && sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
  if (!ok) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  return ok;
}

// Creates the cell's database through `uri` and returns the connection that made it.
sqlite3* CreateCellDb(const std::string& uri, const char* journal) {
  sqlite3* main = nullptr;
  sqlite3_open_v2(uri.c_str(), &main, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                  nullptr);
  sqlite3_exec(main, (std::string("PRAGMA journal_mode=") + journal).c_str(), nullptr, nullptr,
               nullptr);
  sqlite3_exec(main,
               "PRAGMA synchronous=OFF; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
               "CREATE TABLE c(n INT); INSERT INTO c VALUES(0)",
               nullptr, nullptr, nullptr);
  return main;
}

std::string CellPath() {
  static int serial = 0;
  return g_dir + "/cell" + std::to_string(++serial) + ".db";
}

// The fair bound (see the top of the file): tx/s of one thread going round-robin over
// `conns` connections of plain unix, with nothing else running.
double FairBound(const char* journal, int conns, int work_us, double seconds) {
  const std::string uri = "file:" + CellPath() + "?vfs=unix";
  sqlite3* main = CreateCellDb(uri, journal);
  std::vector<sqlite3*> dbs(conns);
  for (sqlite3*& db : dbs) {
    sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr);
    sqlite3_exec(db, "PRAGMA synchronous=OFF", nullptr, nullptr, nullptr);
  }
  const Clock::time_point start = Clock::now();
  const Clock::time_point stop =
      start + std::chrono::microseconds(static_cast<long>(seconds * 1e6));
  long done = 0;
  for (size_t i = 0; Clock::now() < stop; i = (i + 1) % dbs.size())
    done += Transaction(dbs[i], work_us);
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  for (sqlite3* db : dbs) sqlite3_close(db);
  sqlite3_close(main);
  return static_cast<double>(done) / wall;
}

// per_thread > 0: fixed work (each thread commits that many transactions), else fixed time.
// `fair_ms` >= 0: libsafeconc's safeconc_fair_ms for this cell (else the default).
Result RunCell(Peer peer, const char* journal, int threads, int work_us, double seconds,
               long per_thread = 0, int fair_ms = -1) {
  std::string uri = "file:" + CellPath() + (peer == Peer::kSafeconc ? "" : "?vfs=unix");
  if (peer == Peer::kSafeconc && fair_ms >= 0)
    uri += "?safeconc_fair_ms=" + std::to_string(fair_ms);
  sqlite3* main = CreateCellDb(uri, journal);

  std::mutex app_mutex;
  FifoLock app_fifo;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<long> failures{0};
  std::vector<std::vector<double>> lat(threads);
  Clock::time_point start, stop;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      sqlite3* db = nullptr;
      sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr);
      if (!std::getenv("BENCH_NO_TIMEOUT")) sqlite3_busy_timeout(db, 5000);
      sqlite3_exec(db, "PRAGMA synchronous=OFF", nullptr, nullptr, nullptr);
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      for (long i = 0; per_thread > 0 ? i < per_thread : Clock::now() < stop; ++i) {
        const Clock::time_point t0 = Clock::now();
        std::unique_lock<std::mutex> l(app_mutex, std::defer_lock);
        std::unique_lock<FifoLock> f(app_fifo, std::defer_lock);
        if (peer == Peer::kMutex) l.lock();
        if (peer == Peer::kFifo) f.lock();
        if (!Transaction(db, work_us)) failures.fetch_add(1);
        if (l.owns_lock()) l.unlock();
        if (f.owns_lock()) f.unlock();
        lat[t].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      sqlite3_close(db);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const double cpu0 = CpuSeconds();
  start = Clock::now();
  stop = start + std::chrono::microseconds(static_cast<long>(seconds * 1e6));
  go.store(true);
  for (auto& th : pool) th.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = (CpuSeconds() - cpu0) / wall;

  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Result r;
  const long done = static_cast<long>(all.size());
  r.failures = failures.load();
  r.cpu = cpu;
  r.tps = static_cast<double>(done - r.failures) / wall;
  if (!all.empty()) {
    r.p50_ms = all[all.size() / 2];
    r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
    r.max_ms = all.back();
  }
  if (peer == Peer::kSafeconc) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(main, "PRAGMA safeconc_stats", -1, &st, nullptr);
    if (sqlite3_step(st) == SQLITE_ROW) {
      const std::string json = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      r.r2g_p50_us = JsonInt(json, "$.coordinator.release_to_grant_us.p50_us");
      r.r2g_p99_us = JsonInt(json, "$.coordinator.release_to_grant_us.p99_us");
      r.barges = JsonInt(json, "$.coordinator.barges");
      r.handoffs = JsonInt(json, "$.coordinator.handoffs");
      r.max_overtaken_us = JsonInt(json, "$.coordinator.max_overtaken_wait_us");
      if (g_print_stats) std::printf("    stats: %s\n", json.c_str());
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(main);
  return r;
}

// Single connection, no contention: ns per statement through unix and through safeconc.
double NsPerOp(bool safeconc, bool write, int n) {
  static int serial = 0;
  const std::string path = g_dir + "/single" + std::to_string(++serial) + ".db";
  const std::string uri = "file:" + path + (safeconc ? "" : "?vfs=unix");
  sqlite3* db = nullptr;
  sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                  nullptr);
  sqlite3_exec(db,
               "PRAGMA journal_mode=wal; PRAGMA synchronous=OFF;"
               "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES(1, 1)",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db,
                     write ? "UPDATE t SET v = v + 1 WHERE id = 1" : "SELECT v FROM t WHERE id = 1",
                     -1, &st, nullptr);
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    while (sqlite3_step(st) == SQLITE_ROW) {
    }
    sqlite3_reset(st);
  }
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / n;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return ns;
}

const char* JournalName(const char* journal) {
  return std::string(journal) == "wal" ? "WAL" : "rollback";
}

void PrintHeader(bool with_bound) {
  std::printf("  %7s %-12s %9s %8s %8s %9s %8s %5s %12s %9s %9s %9s%s\n", "threads", "peer", "tx/s",
              "p50 ms", "p99 ms", "max ms", "failed", "cpu", "r2g p50/p99", "vs stock", "vs mutex",
              "vs fifo", with_bound ? "  vs bound" : "");
}

// One row group: every peer (that the BENCH_PEER filter lets through) on the same cell, then
// libsafeconc's ratios against the others; with fixed time also the fair bound.
void RunRow(const char* journal, int threads, int work_us, double seconds, long per_thread,
            const char* only_peer) {
  const Peer peers[kPeers] = {Peer::kStock, Peer::kMutex, Peer::kFifo, Peer::kSafeconc};
  Result res[kPeers];
  bool run[kPeers];
  for (int i = 0; i < kPeers; ++i) {
    run[i] = !only_peer || std::string(PeerName(peers[i])).find(only_peer) != std::string::npos;
    if (run[i]) res[i] = RunCell(peers[i], journal, threads, work_us, seconds, per_thread);
  }
  const bool with_bound = per_thread == 0;
  const double bound = with_bound ? FairBound(journal, threads, work_us, seconds) : 0;
  for (int i = 0; i < kPeers; ++i) {
    if (!run[i]) continue;
    char r2g[32] = "-";
    if (res[i].r2g_p50_us >= 0) {
      std::snprintf(r2g, sizeof r2g, "%ld/%ld us", res[i].r2g_p50_us, res[i].r2g_p99_us);
    }
    // libsafeconc's throughput against each other peer that ran, and the fair bound.
    char vs[4][16] = {"", "", "", ""};
    if (peers[i] == Peer::kSafeconc) {
      for (int k = 0; k < 3; ++k) {
        if (run[k])
          std::snprintf(vs[k], sizeof vs[k], "%.2fx", res[i].tps / std::max(1.0, res[k].tps));
      }
      if (with_bound)
        std::snprintf(vs[3], sizeof vs[3], "%.2fx", res[i].tps / std::max(1.0, bound));
    }
    std::printf("  %7d %-12s %9.0f %8.2f %8.2f %9.1f %8ld %5.2f %12s %9s %9s %9s %9s\n", threads,
                PeerName(peers[i]), res[i].tps, res[i].p50_ms, res[i].p99_ms, res[i].max_ms,
                res[i].failures, res[i].cpu, r2g, vs[0], vs[1], vs[2], vs[3]);
  }
  if (with_bound) std::printf("  %7d %-12s %9.0f\n", threads, "fair bound", bound);
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--stats") {
      g_print_stats = true;
    } else {
      seconds = std::atof(argv[i]);
    }
  }
  char tmpl[] = "/tmp/safeconc-bench-XXXXXX";
  g_dir = mkdtemp(tmpl);
  if (!LoadSafeconc()) return 1;

  // The single-connection table is skipped when a peer filter focuses the run.
  if (!std::getenv("BENCH_PEER")) {
    std::printf("Single connection, no contention (WAL, synchronous=OFF; best of 5 runs)\n");
    std::printf("  %-28s %10s %12s %7s\n", "statement", "unix ns", "safeconc ns", "ratio");
    for (bool write : {false, true}) {
      const int n = write ? 20000 : 100000;
      double best_unix = 1e18, best_safe = 1e18;
      for (int rep = 0; rep < 5; ++rep) {
        best_unix = std::min(best_unix, NsPerOp(false, write, n));
        best_safe = std::min(best_safe, NsPerOp(true, write, n));
      }
      std::printf("  %-28s %10.0f %12.0f %6.3fx\n",
                  write ? "UPDATE one row (autocommit)" : "SELECT one row by rowid", best_unix,
                  best_safe, best_safe / best_unix);
    }
  }

  std::printf(
      "\nWrite contention: BEGIN IMMEDIATE; INSERT; <work>; COMMIT, %.1f s per cell,\n"
      "busy_timeout(5000) everywhere, synchronous=OFF. 'fair bound': one thread, the same\n"
      "transactions round-robin over T connections, no lock (the most a FIFO hand-over can give)\n",
      seconds);
  // Filters for focused runs, e.g. BENCH_JOURNAL=wal BENCH_THREADS=16 BENCH_WORK=0.
  const char* only_journal = std::getenv("BENCH_JOURNAL");
  const char* only_threads = std::getenv("BENCH_THREADS");
  const char* only_work = std::getenv("BENCH_WORK");
  const char* only_peer = std::getenv("BENCH_PEER");
  const bool fixed_work = !std::getenv("BENCH_NO_FIXED");
  for (const char* journal : {"wal", "delete"}) {
    if (only_journal && std::string(only_journal) != journal) continue;
    for (int work_us : {0, 200}) {
      if (only_work && std::atoi(only_work) != work_us) continue;
      std::printf("\n%s journal, work in transaction %d us\n", JournalName(journal), work_us);
      PrintHeader(true);
      for (int threads : {4, 16, 64}) {
        if (only_threads && std::atoi(only_threads) != threads) continue;
        RunRow(journal, threads, work_us, seconds, 0, only_peer);
      }
    }
  }
  if (fixed_work) {
    // About one second of stock SQLite's work per cell, split over the threads.
    std::printf(
        "\nFixed work: every thread commits its share of N transactions (work 0 us); tx/s is N\n"
        "over the time until the last one committed, so starved stragglers count\n");
    for (const char* journal : {"wal", "delete"}) {
      if (only_journal && std::string(only_journal) != journal) continue;
      const long total = std::string(journal) == "wal" ? 32000 : 8000;
      std::printf("\n%s journal, N = %ld\n", JournalName(journal), total);
      PrintHeader(false);
      for (int threads : {16, 64}) {
        if (only_threads && std::atoi(only_threads) != threads) continue;
        RunRow(journal, threads, 0, seconds, total / threads, only_peer);
      }
    }
  }
  if (!std::getenv("BENCH_NO_EXTRA") && !only_peer) {
    // Deferred read-then-write: the failures SQLite's deadlock avoidance causes, libsafeconc
    // against stock in the same run (the promise: never more).
    std::printf(
        "\nDeferred read-then-write: BEGIN; SELECT n FROM c; INSERT; UPDATE c SET n=n+1; COMMIT,\n"
        "16 threads x 200, busy_timeout(5000), default safeconc_txn (deferred)\n");
    std::printf("  %-9s %-12s %9s %8s %9s %10s\n", "journal", "peer", "tx/s", "failed", "max ms",
                "verdict");
    for (const char* journal : {"wal", "delete"}) {
      if (only_journal && std::string(only_journal) != journal) continue;
      const Result stock = RunCell(Peer::kStock, journal, 16, -1, seconds, 200);
      const Result lsc = RunCell(Peer::kSafeconc, journal, 16, -1, seconds, 200);
      std::printf("  %-9s %-12s %9.0f %8ld %9.1f\n", JournalName(journal), "stock", stock.tps,
                  stock.failures, stock.max_ms);
      std::printf("  %-9s %-12s %9.0f %8ld %9.1f %10s\n", JournalName(journal), "libsafeconc",
                  lsc.tps, lsc.failures, lsc.max_ms,
                  lsc.failures <= stock.failures ? "<= stock" : "MORE");
    }
    // safeconc_fair_ms sweep: throughput against the tail. 0 = strict FIFO hand-off.
    std::printf(
        "\nsafeconc_fair_ms sweep (BEGIN IMMEDIATE; INSERT; COMMIT, work 0 us, %.1f s per cell;\n"
        "the knob is whole milliseconds); 'vs mutex' against the app mutex in the same row group\n",
        seconds);
    std::printf("  %-9s %7s %7s %9s %8s %9s %9s %8s %8s %12s\n", "journal", "threads", "fair_ms",
                "tx/s", "p99 ms", "max ms", "vs mutex", "barges", "handoffs", "max overtaken");
    for (const char* journal : {"wal", "delete"}) {
      if (only_journal && std::string(only_journal) != journal) continue;
      for (int threads : {16, 64}) {
        if (only_threads && std::atoi(only_threads) != threads) continue;
        const Result mutex = RunCell(Peer::kMutex, journal, threads, 0, seconds);
        std::printf("  %-9s %7d %7s %9.0f %8.2f %9.1f\n", JournalName(journal), threads, "mutex",
                    mutex.tps, mutex.p99_ms, mutex.max_ms);
        for (int fair : {0, 1, 2, 5}) {
          const Result r = RunCell(Peer::kSafeconc, journal, threads, 0, seconds, 0, fair);
          std::printf("  %-9s %7d %7d %9.0f %8.2f %9.1f %8.2fx %8ld %8ld %9.1f ms\n",
                      JournalName(journal), threads, fair, r.tps, r.p99_ms, r.max_ms,
                      r.tps / std::max(1.0, mutex.tps), r.barges, r.handoffs,
                      static_cast<double>(r.max_overtaken_us) / 1000.0);
        }
      }
    }
  }
  std::string rm = "rm -rf " + g_dir;
  return std::system(rm.c_str()) == 0 ? 0 : 0;
}
