// soak.cc - `make soak` (not in CI): SOAK_SECONDS (default 600) of everything at once on two
// database files (rollback and WAL): writer threads, writer processes killed with SIGKILL at
// random moments, checkpoints, owner churn (fd owners opened and closed while their functions
// are called) and worker churn (threads and their connections come and go). Prints a summary:
// transactions, failures (must be 0), kills survived, leaks. Exit status 0 only if clean.
//
// For LeakSanitizer's verdict too: `make test-asan` once, then
// `cmake --build build-asan --target soak && build-asan/tests/soak 60`.
//
//   soak [seconds]                 the run
//   soak --child <db> <fd> <base>  a writer process (exec'd, so it inherits no locks)
#include <dlfcn.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "safeconc.h"

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> g_stop{false};
std::atomic<int64_t> g_tx{0}, g_failures{0}, g_kills{0}, g_udf_calls{0}, g_checkpoints{0};
std::atomic<int64_t> g_owner_churn{0}, g_worker_churn{0};
std::mutex g_fail_mu;
std::string g_first_failure;
const safeconc_api_v1* g_api = nullptr;

void Failure(const std::string& what) {
  g_failures.fetch_add(1);
  std::lock_guard<std::mutex> l(g_fail_mu);
  if (g_first_failure.empty()) g_first_failure = what;
}

sqlite3* Open(const std::string& path) {
  sqlite3* db = nullptr;
  const std::string uri = "file:" + path + "?safeconc_timeout=60000&safeconc_call_timeout=60000";
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr) !=
      SQLITE_OK) {
    Failure("open " + path + ": " + (db ? sqlite3_errmsg(db) : "no memory"));
    sqlite3_close_v2(db);
    return nullptr;
  }
  return db;
}

bool Tx(sqlite3* db, const std::string& body, const char* who) {
  const std::string sql = "BEGIN IMMEDIATE; " + body + " COMMIT;";
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    Failure(std::string(who) + ": " + sqlite3_errmsg(db));
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return false;
  }
  g_tx.fetch_add(1);
  return true;
}

// ---- Writer processes ---------------------------------------------------------------------

[[noreturn]] void ChildMain(const char* path, int fd, int64_t base) {
  sqlite3* boot = nullptr;
  sqlite3_open(":memory:", &boot);
  sqlite3_db_config(boot, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  if (sqlite3_load_extension(boot, SAFECONC_SO_PATH, nullptr, nullptr) != SQLITE_OK) _exit(2);
  sqlite3_close(boot);
  sqlite3* db = nullptr;
  const std::string uri = std::string("file:") + path + "?safeconc_timeout=60000";
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, nullptr) !=
      SQLITE_OK) {
    _exit(3);
  }
  for (int64_t k = 0;; ++k) {
    const int64_t id = base + k;
    const std::string sql = "BEGIN IMMEDIATE; INSERT INTO p(id, v) VALUES (" + std::to_string(id) +
                            ", randomblob(500)); COMMIT;";
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      _exit(4);  // a failure: the parent sees an exit instead of its kill
    }
    if (write(fd, &id, sizeof id) != sizeof id) _exit(5);
  }
}

// Spawns writer processes against `path`, kills each after a random number of reported
// commits, and checks at the end that every reported commit is present.
void ProcessKiller(const std::string& path, int slot) {
  std::mt19937 rng(static_cast<unsigned>(slot * 7919 + 1));
  std::set<int64_t> reported;
  for (int64_t round = 0; !g_stop.load(); ++round) {
    int fds[2];
    if (pipe(fds) != 0) return Failure("pipe");
    const int64_t base = (static_cast<int64_t>(slot) << 40) + round * 1000000;
    const pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      const std::string fd = std::to_string(fds[1]), b = std::to_string(base);
      execl("/proc/self/exe", "soak", "--child", path.c_str(), fd.c_str(), b.c_str(),
            static_cast<char*>(nullptr));
      _exit(6);
    }
    close(fds[1]);
    const int target = std::uniform_int_distribution<int>(1, 60)(rng);
    int64_t id;
    int got = 0;
    while (got < target && read(fds[0], &id, sizeof id) == sizeof id) {
      reported.insert(id);
      ++got;
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    while (read(fds[0], &id, sizeof id) == sizeof id) reported.insert(id);
    close(fds[0]);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
      g_kills.fetch_add(1);
      g_tx.fetch_add(got);
    } else {
      Failure("writer process exited with status " + std::to_string(status));
    }
  }
  sqlite3* db = Open(path);
  if (db == nullptr) return;
  int64_t missing = 0;
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT count(*) FROM p WHERE id = ?1", -1, &st, nullptr);
  for (int64_t r : reported) {
    sqlite3_bind_int64(st, 1, r);
    if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0) != 1) ++missing;
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  sqlite3_close_v2(db);
  if (missing) Failure(std::to_string(missing) + " reported commits missing in " + path);
}

// ---- Threads --------------------------------------------------------------------------------

void Twice(safeconc_ctx* c) { g_api->result_int64(c, 2 * g_api->arg_int64(c, 0)); }

// A worker: a connection for a while, transactions (some calling a UDF owned by the owner
// thread of this worker's generation), then it closes and a new worker takes its place.
void WorkerGeneration(const std::string& path, int id, std::mt19937& rng) {
  sqlite3* db = Open(path);
  if (db == nullptr) return;
  // Owner churn: an fd owner thread for this generation, closed when it ends.
  std::atomic<bool> owner_ready{false}, owner_stop{false};
  safeconc_owner* owner = nullptr;
  std::thread owner_thread([&] {
    if (g_api->owner_open_fd(&owner) != SQLITE_OK) {
      Failure(std::string("owner_open_fd: ") + g_api->errmsg());
      owner_ready = true;
      return;
    }
    owner_ready = true;
    pollfd p{g_api->owner_fd(owner), POLLIN, 0};
    while (!owner_stop.load()) {
      if (poll(&p, 1, 5) > 0) g_api->owner_drain(owner, 0);
    }
    g_api->owner_drain(owner, 0);
    g_api->owner_close(owner);
  });
  while (!owner_ready.load()) std::this_thread::yield();
  g_owner_churn.fetch_add(1);
  const bool udf = owner != nullptr && g_api->create_function(db, "twice", 1, 0, owner, nullptr,
                                                              Twice, nullptr) == SQLITE_OK;
  const int n = std::uniform_int_distribution<int>(5, 50)(rng);
  for (int i = 0; i < n && !g_stop.load(); ++i) {
    std::string body =
        "INSERT INTO t(v, who) VALUES (randomblob(200), " + std::to_string(id) + ");";
    if (udf && i % 3 == 0) {
      body += " INSERT INTO t(v, who) VALUES (twice(" + std::to_string(i) + "), -1);";
      g_udf_calls.fetch_add(1);
    }
    Tx(db, body, "writer thread");
    sqlite3_exec(db, "SELECT count(*) FROM t WHERE who = -1", nullptr, nullptr, nullptr);
  }
  sqlite3_close_v2(db);  // before the owner closes: no call is in flight
  owner_stop = true;
  owner_thread.join();
  g_worker_churn.fetch_add(1);
}

void Worker(const std::string& path, int id) {
  std::mt19937 rng(static_cast<unsigned>(id + 1));
  while (!g_stop.load()) {
    std::thread gen([&] { WorkerGeneration(path, id, rng); });  // a new thread each time
    gen.join();
  }
}

void Checkpointer(const std::string& path) {
  sqlite3* db = Open(path);
  if (db == nullptr) return;
  const char* modes[] = {"PASSIVE", "FULL", "RESTART", "TRUNCATE"};
  for (int i = 0; !g_stop.load(); ++i) {
    const std::string sql = std::string("PRAGMA wal_checkpoint(") + modes[i % 4] + ")";
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK)
      Failure("checkpoint: " + std::string(sqlite3_errmsg(db)));
    g_checkpoints.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a periodic job, not a sync
  }
  sqlite3_close_v2(db);
}

int64_t StatInt(sqlite3* db, const char* path) {
  sqlite3_stmt* st = nullptr;
  const std::string sql = std::string("SELECT json_extract(safeconc_stats(), '") + path + "')";
  sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr);
  const int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  return v;
}

long RssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--child") == 0) {
    ChildMain(argv[2], std::atoi(argv[3]), std::atoll(argv[4]));
  }
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 600;
  signal(SIGPIPE, SIG_IGN);
  sqlite3* boot = nullptr;
  sqlite3_open(":memory:", &boot);
  sqlite3_db_config(boot, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* err = nullptr;
  if (sqlite3_load_extension(boot, SAFECONC_SO_PATH, nullptr, &err) != SQLITE_OK) {
    std::fprintf(stderr, "soak: cannot load %s: %s\n", SAFECONC_SO_PATH, err ? err : "?");
    return 2;
  }
  sqlite3_close(boot);  // the VFS and the library stay (SQLITE_OK_LOAD_PERMANENTLY)
  void* so = dlopen(SAFECONC_SO_PATH, RTLD_NOW | RTLD_NOLOAD);
  g_api = static_cast<const safeconc_api_v1*>(
      reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL))(1));
  char dir_template[] = "/tmp/safeconc-soak-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  std::vector<std::string> paths;
  for (const char* mode : {"delete", "wal"}) {
    const std::string path = dir + "/" + mode + ".db";
    paths.push_back(path);
    sqlite3* db = nullptr;
    sqlite3_open(path.c_str(), &db);
    const std::string setup = std::string("PRAGMA journal_mode=") + mode +
                              "; CREATE TABLE t(id INTEGER PRIMARY KEY, v, who);"
                              " CREATE TABLE p(id INTEGER PRIMARY KEY, v);";
    sqlite3_exec(db, setup.c_str(), nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  std::printf("soak: %d s in %s (rollback and WAL)\n", seconds, dir.c_str());
  const long rss_start = RssKb();
  std::vector<std::thread> threads;
  int id = 0;
  for (const std::string& p : paths) {
    for (int w = 0; w < 3; ++w) threads.emplace_back(Worker, p, id++);
    threads.emplace_back(ProcessKiller, p, id++);
  }
  threads.emplace_back(Checkpointer, paths[1]);
  const Clock::time_point end = Clock::now() + std::chrono::seconds(seconds);
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::seconds(std::min(10, seconds)));
    std::printf("  %lld tx, %lld failures, %lld kills\n", static_cast<long long>(g_tx.load()),
                static_cast<long long>(g_failures.load()), static_cast<long long>(g_kills.load()));
    std::fflush(stdout);
  }
  g_stop = true;
  for (auto& t : threads) t.join();

  // Integrity and leaks, with every worker connection and owner gone.
  for (const std::string& p : paths) {
    sqlite3* db = Open(p);
    if (db == nullptr) continue;
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr);
    if (sqlite3_step(st) != SQLITE_ROW ||
        std::strcmp(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "ok") != 0) {
      Failure("integrity_check of " + p);
    }
    sqlite3_finalize(st);
    sqlite3_close_v2(db);
  }
  sqlite3* check = nullptr;
  sqlite3_open(":memory:", &check);
  const int64_t files = StatInt(check, "$.process.files_open");
  const int64_t owners = StatInt(check, "$.udf.owners_open");
  const int64_t tasks = StatInt(check, "$.udf.tasks_in_use");
  const int64_t misuse = StatInt(check, "$.misuse.total");
  sqlite3_close(check);
  const bool leaks = files != 0 || owners != 0 || tasks != 0;
  if (misuse != 0) Failure("misuse counted: " + std::to_string(misuse));
  std::printf(
      "soak summary: %d s\n"
      "  transactions:   %lld (%lld UDF calls dispatched, %lld checkpoints)\n"
      "  failures:       %lld%s%s\n"
      "  kills survived: %lld (writer processes SIGKILLed, every reported commit present)\n"
      "  churn:          %lld owners opened and closed, %lld worker threads\n"
      "  leaks:          %s (files open %lld, owners open %lld, tasks in use %lld; max RSS %ld -> "
      "%ld "
      "KB)\n",
      seconds, static_cast<long long>(g_tx.load()), static_cast<long long>(g_udf_calls.load()),
      static_cast<long long>(g_checkpoints.load()), static_cast<long long>(g_failures.load()),
      g_first_failure.empty() ? "" : ", first: ", g_first_failure.c_str(),
      static_cast<long long>(g_kills.load()), static_cast<long long>(g_owner_churn.load()),
      static_cast<long long>(g_worker_churn.load()), leaks ? "YES" : "none",
      static_cast<long long>(files), static_cast<long long>(owners), static_cast<long long>(tasks),
      rss_start, RssKb());
  const std::string rm = "rm -rf " + dir;
  if (g_failures.load() == 0 && !leaks && std::system(rm.c_str()) != 0) return 1;
  return g_failures.load() == 0 && !leaks ? 0 : 1;
}
