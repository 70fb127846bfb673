// common.h - what the files of the Node addon share: values copied between threads, the
// per-environment state, connections, statements and the jobs of the async twins.
//
// Threads. Everything runs on the JS thread of its environment (the main thread or a
// worker_thread) except the pool's loop (pool.cc), which runs on one of the addon's own
// threads and touches only the Jobs handed to it, their connection and statement (read
// only, besides stepping), Lane fields and EnvState::mu-guarded fields. A connection runs
// one Job at a time, in call order (its Lane): sqlite3_step holds the connection's mutex for
// a whole step, including while a pool thread waits for a UDF to run on the JS thread, so
// the JS thread never waits for a connection that has a Job running, except in
// ConnectionLock (database.cc), which runs the waiting UDF calls while it waits.
//
// Fields without SC_GUARDED_BY are the JS thread's, unless their comment names the
// hand-off that passes them between threads (a Job's inputs and results: see Job).
//
// Lifetimes. Db and Stmt are shared_ptr-owned: by their JS wrapper, by the Stmts of a Db, by
// the Jobs that use them. Both are destroyed on the JS thread (Jobs are deleted there).
// EnvState is shared by the Dbs and Jobs of its environment; its destructor is trivial, so
// the last reference may drop on a pool thread.
#ifndef SAFECONC_NODE_COMMON_H
#define SAFECONC_NODE_COMMON_H

#include <node_api.h>
#include <sqlite3.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "base/sync.h"
#include "safeconc.h"

namespace scnode {

extern const safeconc_api_v1* g_api;  // set once by LoadLibrary, never changed after

// ---- Leak accounting (native.liveObjects()) ----
enum LiveKind { kLiveEnvs, kLiveDbs, kLiveStmts, kLiveFuncs, kLiveJobs, kLiveKinds };
extern std::atomic<int64_t> g_live[kLiveKinds];
struct Tally {
  const LiveKind kind;
  explicit Tally(LiveKind k) : kind(k) { g_live[kind].fetch_add(1, std::memory_order_relaxed); }
  ~Tally() { g_live[kind].fetch_sub(1, std::memory_order_relaxed); }
  Tally(const Tally&) = delete;
  Tally& operator=(const Tally&) = delete;
};

// ---- Values (values.cc) ----
struct Val {
  int type = SQLITE_NULL;
  int64_t i = 0;
  double d = 0;
  std::string bytes;  // text or blob
};

// Row shapes, a bit set passed by the JS layer with each call.
enum RowFlags { kPluck = 1, kRaw = 2, kExpand = 4, kSafeInts = 8 };

bool GetString(napi_env env, napi_value v, std::string* out);
bool ToVal(napi_env env, napi_value v, Val* out, std::string* why);
napi_value ValToJs(napi_env env, const Val& v, bool safe_ints);
napi_value ColumnToJs(napi_env env, sqlite3_stmt* st, int c, bool safe_ints);
void ValFromColumn(sqlite3_stmt* st, int c, Val* v);
int BindVal(sqlite3_stmt* st, int i, const Val& v);
napi_value Int64ToJs(napi_env env, int64_t v, bool safe_ints);

// ---- Errors (errors.cc) ----
struct EnvState;
const char* CodeName(int rc);      // "SQLITE_CONSTRAINT_PRIMARYKEY"
napi_value Pending(napi_env env);  // makes sure an exception is pending; returns nullptr
napi_value ThrowError(napi_env env, const std::string& msg);
napi_value ThrowType(napi_env env, const std::string& msg);
napi_value ThrowRange(napi_env env, const std::string& msg);
// new SqliteError(msg, CodeName(rc)), the JS class given to native.setup().
napi_value MakeSqliteError(napi_env env, const std::string& msg, int rc);
napi_value ThrowSqlite(napi_env env, const std::string& msg, int rc);
std::string ExceptionMessage(napi_env env, napi_value exc);

#define NAPI_OK(call)                           \
  do {                                          \
    if ((call) != napi_ok) return Pending(env); \
  } while (0)

// ---- Per-environment state (addon.cc) ----
struct Db;
struct FuncData;
struct Job;

struct EnvState {
  // JS thread only.
  napi_env env = nullptr;
  safeconc_owner* owner = nullptr;               // opened on first use, closed at teardown
  napi_threadsafe_function udf_tsfn = nullptr;   // wakes the JS thread for UDF tasks
  napi_threadsafe_function done_tsfn = nullptr;  // wakes it for finished Jobs (see done)
  int jobs_submitted = 0;                        // Jobs on the pool; done_tsfn is ref'd while > 0
  bool exiting = false;                          // process 'exit' or teardown: no new async work
  std::set<Db*> dbs;                             // open connections
  std::set<FuncData*> funcs;                     // registered functions not yet destroyed
  Job* jobs = nullptr;                           // every Job not yet deleted (Job::prev/next)
  napi_ref sqlite_error = nullptr;               // the SqliteError class
  napi_ref db_ctor = nullptr, stmt_ctor = nullptr;

  // UDF tasks handed over by the dispatch hook (any thread), run on the JS thread.
  // udf_mu and mu are never held together.
  safeconc::Mutex udf_mu;
  safeconc::CondVar udf_cv;  // signalled on every push (ConnectionLock waits on it)
  std::deque<safeconc_task*> udf_queue SC_GUARDED_BY(udf_mu);
  bool udf_closed SC_GUARDED_BY(udf_mu) = false;

  // Shared with pool threads. Lock order: Lane::mu before mu.
  safeconc::Mutex mu;
  safeconc::CondVar cv;                      // signalled when a Job finishes
  int running SC_GUARDED_BY(mu) = 0;         // Jobs handed to the pool and not finished
  bool torn_down SC_GUARDED_BY(mu) = false;  // done_tsfn is being released: nothing delivered
  bool stopping SC_GUARDED_BY(mu) = false;   // Quiesce: Jobs not started yet are skipped
  // Finished Jobs in the order their connections finished them; one done_tsfn call (made
  // when this goes from empty to not empty) delivers all that are here by then.
  std::vector<Job*> done SC_GUARDED_BY(mu);

  Tally tally{kLiveEnvs};
};

EnvState* State(napi_env env);
std::shared_ptr<EnvState> StateRef(napi_env env);
// Runs the UDF tasks waiting for this environment's JS thread; returns how many ran.
int DrainUdfTasks(EnvState* st);
// Closes the environment's owner (fails the UDF calls waiting for it), releases the tasks
// still queued and udf_tsfn. Idempotent; JS thread.
void CloseOwner(EnvState* st);
// Opens the environment's owner and libsafeconc if needed.
bool EnsureReady(napi_env env, EnvState* st, const std::string& so, std::string* why);

// ---- Connections and statements ----
struct Stmt;

// A connection's hand-off to the pool: the JS thread appends Jobs, one pool thread at a time
// runs them in order. Shared by its Db and by the pool thread serving it, so that thread may
// outlive the Db (which the JS thread destroys once the last Job is delivered).
struct Lane {
  safeconc::Mutex mu;
  std::deque<Job*> pending SC_GUARDED_BY(mu);  // handed over, not started, in call order
  bool scheduled SC_GUARDED_BY(mu) = false;    // on the pool's queue or being served
  Job* stepping SC_GUARDED_BY(mu) = nullptr;   // the Job a pool thread runs now
};

struct Db {
  std::shared_ptr<EnvState> st;
  sqlite3* db = nullptr;  // nullptr once closed
  std::string path;
  bool readonly = false;
  bool closing = false;    // close() called while jobs were queued: closes when they end
  int inflight = 0;        // Jobs handed to lane and not delivered yet
  std::deque<Job*> queue;  // waiting for a sync statement of this connection, in call order
  std::shared_ptr<Lane> lane = std::make_shared<Lane>();
  int sync_running = 0;   // sync statements of this connection stepping on the JS thread
  int iterating = 0;      // sync iterators open
  std::set<Stmt*> stmts;  // finalized when the connection closes
  std::vector<sqlite3_stmt*> finalize_later;  // statements collected while a job ran
  napi_ref udf_error = nullptr;               // what a JS UDF of a sync query threw last
  napi_ref verbose = nullptr;                 // the verbose option: called with each SQL run
  bool unsafe = false;                        // unsafeMode(): not defensive, writes while iterating
  Tally tally{kLiveDbs};

  ~Db();
  bool Busy() const { return inflight > 0 || !queue.empty(); }
  int Pending() const { return inflight + static_cast<int>(queue.size()); }
  bool Open() const { return db != nullptr && !closing; }
  void CloseNow(napi_env env);
  void FinalizeLater();  // when idle: finalizes what ~Stmt could not
};

struct Stmt {
  std::shared_ptr<Db> db;
  sqlite3_stmt* st = nullptr;  // nullptr once the connection closed
  std::string sql;
  bool reader = false;  // returns data
  bool has_bound = false;
  std::vector<Val> bound;        // bind(): the permanent parameters
  bool stepping = false;         // a sync step of it is on the stack
  int iter = 0;                  // 1: a sync iterator is open, 2: an async one
  std::vector<Val> iter_params;  // the async iterator's parameters, bound by its first fetch
  int jobs = 0;                  // async jobs of it not finished
  Tally tally{kLiveStmts};
  ~Stmt();
};

// ---- Async jobs (pool.cc) ----
enum class JobKind { kRun, kGet, kAll, kFetch, kReset, kExec, kBackup };

// db.backup(): its destination connection and the sqlite3_backup, stepped by kBackup jobs
// (backup.cc) on the pool in the source connection's order: each step takes the source's
// mutex, which a job of that connection may hold while it waits for this thread.
struct Backup {
  std::string dest, attached;
  sqlite3* dest_db = nullptr;    // the pool thread running a kBackup job, or JS when idle
  sqlite3_backup* b = nullptr;   // likewise
  int total = 0, remaining = 0;  // after the last step
  ~Backup();
};
enum BackupOp { kBackupInit = 0, kBackupStep = 1, kBackupFinish = 2 };

// Inputs are written on the JS thread before the Job is handed to its Lane; results are
// written by the pool thread and read on the JS thread after delivery. Both hand-offs go
// through a mutex (Lane::mu, then EnvState::mu and its done queue), which orders them.
struct Job {
  std::shared_ptr<EnvState> st;
  std::shared_ptr<Db> db;
  std::shared_ptr<Stmt> stmt;  // nullptr for kExec
  JobKind kind = JobKind::kAll;
  int flags = 0;    // RowFlags
  std::string sql;  // kExec
  std::vector<Val> params;
  bool bind = true;                // kFetch: the first batch resets and binds
  int batch = 0;                   // kFetch: rows per batch; kBackup: pages per step
  int op = 0;                      // kBackup: BackupOp
  std::shared_ptr<Backup> backup;  // kBackup
  bool log = false;                // the connection has a verbose logger: fill logged
  napi_deferred deferred = nullptr;
  Job* prev = nullptr;           // EnvState::jobs, JS thread only
  Job* next = nullptr;           // EnvState::jobs, JS thread only
  napi_ref udf_error = nullptr;  // what a JS UDF of this Job threw (JS thread only)
  // Results.
  int rc = SQLITE_OK;  // extended code
  std::string error;
  std::vector<std::string> names;
  std::vector<std::string> tables;  // kExpand
  std::vector<std::vector<Val>> rows;
  int64_t changes = 0, last_rowid = 0;
  bool done = false;                // kFetch: the statement reached its end (or failed)
  std::vector<std::string> logged;  // the SQL run, expanded, for the verbose logger
  bool submitted SC_GUARDED_BY(st->mu) = false;  // handed to the pool
  bool finished SC_GUARDED_BY(st->mu) = false;   // the pool is done with it
  Tally tally{kLiveJobs};
};

// Queues a job on its connection and starts it when the connection is free; returns the
// promise. On failure to create the promise, returns nullptr with an exception pending.
napi_value QueueJob(napi_env env, std::unique_ptr<Job> job);
// Hands the connection's waiting jobs to the pool once no sync statement holds them back;
// closes the connection when idle and closing.
void StartNext(napi_env env, Db* d);
// Deletes a job on the JS thread (its refs, its Tally).
void DeleteJob(EnvState* st, Job* j);
// Steps to completion on the calling thread, as the sync forms do (shared with the pool).
// Fills names/rows/changes/rc/error of j.
void RunStatementInto(sqlite3* db, sqlite3_stmt* st, Job* j, int max_rows);
// A script, as sqlite3_exec runs it. before(stmt), when given, runs before each statement is
// stepped; false stops the script with *rc = kStopped (the caller has its reason).
constexpr int kStopped = -1;
void ExecScript(sqlite3* db, const std::string& sql, int* rc, std::string* err,
                const std::function<bool(sqlite3_stmt*)>& before = nullptr);
// The SQL the verbose logger is given: the statement with its bound values expanded.
std::string ExpandedSql(sqlite3_stmt* st);
// Calls d's verbose logger, if any, with sql; false with its exception pending if it threw.
bool Log(napi_env env, Db* d, const std::string& sql);
void RunBackup(Job* j);  // backup.cc: a kBackup job, on the pool
napi_value DbBackup(napi_env env, napi_callback_info info);  // db._backup(handle, op, pages)
napi_value InitBackup(napi_env env, napi_value exports);
void DeliverDone(napi_env env, EnvState* st);  // done_tsfn's call_js: every finished Job
// The slot a JS UDF of d that throws keeps its exception in: the Job stepping on the pool if
// one is, else the connection's (a sync query). JS thread, inside the UDF.
napi_ref* UdfErrorSlot(Db* d);
// Fails waiting UDF calls and interrupts running queries, then waits (bounded) until the
// pool has no job of this environment. final: also stops delivering finished jobs.
void Quiesce(EnvState* st, bool final);

// ---- Helpers across files ----
// napi_unwrap of a shared_ptr<T>* holder.
template <typename T>
T* Unwrap(napi_env env, napi_value self) {
  void* p = nullptr;
  if (napi_unwrap(env, self, &p) != napi_ok || p == nullptr) return nullptr;
  return static_cast<std::shared_ptr<T>*>(p)->get();
}
template <typename T>
std::shared_ptr<T> UnwrapShared(napi_env env, napi_value self) {
  void* p = nullptr;
  if (napi_unwrap(env, self, &p) != napi_ok || p == nullptr) return nullptr;
  return *static_cast<std::shared_ptr<T>*>(p);
}

// True while JS runs inside a UDF of d (sync step on the stack, or a dispatched call).
bool InUdfOf(Db* d);
// A JS UDF of d threw: the statement's error is that exception (returns it and clears).
napi_value TakeUdfError(napi_env env, Db* d);
void ClearUdfError(napi_env env, Db* d);
// Throws (sync) the statement's error: the UDF's own exception if one threw, else a
// SqliteError with the extended code.
napi_value ThrowStatementError(napi_env env, Db* d, const std::string& msg, int rc);
// Takes the connection's mutex on the JS thread while a job may hold it, running the UDF
// calls that job waits for meanwhile. Releases it in the destructor.
class ConnectionLock {
 public:
  explicit ConnectionLock(Db* d);
  ~ConnectionLock();
  ConnectionLock(const ConnectionLock&) = delete;
  ConnectionLock& operator=(const ConnectionLock&) = delete;

 private:
  sqlite3_mutex* mu_;
};

// The values of args (a JS array of run()'s arguments) for s's parameters, in order
// (params.cc). false with an exception pending when they do not fit.
bool ResolveParams(napi_env env, Stmt* s, napi_value args, std::vector<Val>* out);
// The same, or bind()'s values when s has them (then args must be empty).
bool Params(napi_env env, Stmt* s, napi_value args, std::vector<Val>* out);

// Module parts: each adds its methods to exports.
napi_value InitDatabase(napi_env env, napi_value exports);
napi_value InitStatement(napi_env env, napi_value exports);
// db._function / db._aggregate (udf.cc)
napi_value DbFunction(napi_env env, napi_callback_info info);
napi_value DbAggregate(napi_env env, napi_callback_info info);
void FreeFuncs(EnvState* st);

}  // namespace scnode

#endif  // SAFECONC_NODE_COMMON_H
