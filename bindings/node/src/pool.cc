// pool.cc - the async twins: jobs run on the addon's own threads, never on libuv's pool.
//
// Why a pool of its own: a job whose query calls a JS UDF waits on its thread for the JS
// thread, for as long as the query runs. On libuv's pool (4 threads by default) four such
// queries took every thread, and fs, dns and zlib work waited behind them (an fs.readFile
// went from 5 ms to 543 ms). These threads are the addon's: libuv's pool stays free.
//
// Size: SAFECONC_NODE_THREADS (1..64), default 4. Connections run one job at a time each
// (their Lane), so more threads only help with more connections. The threads are created on
// first use and never joined: the process exits without waiting for them (Quiesce has made
// sure no job of an environment is left running first). The pool object is never destroyed
// for the same reason: a static destructor would run while they wait on its mutex.
//
// Hand-offs, each amortised over the jobs in flight (a one-row query costs a few
// microseconds; waking a thread costs as much):
//  - JS thread -> pool: a job goes to its connection's Lane; only a Lane that was idle is
//    put on the pool's queue (and wakes a thread). The thread serving a Lane runs its jobs
//    back to back, kBurst at most before it requeues the Lane behind the others.
//  - pool -> JS thread: a finished job goes to EnvState::done; only the push that finds it
//    empty calls done_tsfn, and that one call delivers every job found there (settles many
//    promises per wake-up). Pushed under Lane::mu, so one connection's jobs are delivered in
//    call order, and under EnvState::mu, so teardown can stop deliveries before it releases
//    done_tsfn.
#include <cstdlib>
#include <thread>

#include "common.h"
#include "rows.h"

namespace scnode {

namespace {

constexpr int kBurst = 64;  // jobs a thread runs from one Lane before letting others in

class Pool {
 public:
  void Schedule(std::shared_ptr<Lane> lane) SC_EXCLUDES(mu_) {
    safeconc::MutexLock l(&mu_);
    if (!started_) Start();
    ready_.push_back(std::move(lane));
    cv_.Signal();
  }

 private:
  void Start() SC_REQUIRES(mu_) {
    int n = 4;
    if (const char* e = std::getenv("SAFECONC_NODE_THREADS")) {
      const int v = std::atoi(e);
      if (v >= 1 && v <= 64) n = v;
    }
    for (int i = 0; i < n; ++i) std::thread([this] { Loop(); }).detach();
    started_ = true;
  }

  void Loop() SC_EXCLUDES(mu_) {
    for (;;) {
      std::shared_ptr<Lane> lane;
      {
        safeconc::MutexLock l(&mu_);
        while (ready_.empty()) cv_.Wait(&mu_);
        lane = std::move(ready_.front());
        ready_.pop_front();
      }
      Serve(std::move(lane));
    }
  }

  // Runs the Lane's jobs in order until it is empty (or kBurst ran: then it is requeued).
  // The Lane stays alive through `lane` after its last job was delivered and its Db freed.
  void Serve(std::shared_ptr<Lane> lane) SC_EXCLUDES(mu_) {
    Lane* ln = lane.get();
    Job* j;
    {
      safeconc::MutexLock l(&ln->mu);
      j = ln->pending.front();  // scheduled implies not empty
      ln->pending.pop_front();
      ln->stepping = j;
    }
    for (int served = 1;; ++served) {
      if (!Stopping(j)) RunJob(j);
      bool requeue = false;
      {
        safeconc::MutexLock l(&ln->mu);
        ln->stepping = nullptr;
        Finish(j);  // j may be deleted from here on
        j = nullptr;
        if (ln->pending.empty()) {
          ln->scheduled = false;
        } else if (served >= kBurst) {
          requeue = true;  // stays scheduled
        } else {
          j = ln->pending.front();
          ln->pending.pop_front();
          ln->stepping = j;
        }
      }
      if (requeue) return Schedule(std::move(lane));
      if (j == nullptr) return;
    }
  }

  // Quiesce stopped the environment: the job is failed without running.
  static bool Stopping(Job* j) {
    EnvState* st = j->st.get();
    safeconc::MutexLock l(&st->mu);
    if (!st->stopping) return false;
    j->rc = SQLITE_INTERRUPT;
    j->error = "interrupted: the JavaScript environment is shutting down";
    j->done = true;
    return true;
  }

  static void RunJob(Job* j) {
    sqlite3* db = j->db->db;
    switch (j->kind) {
      case JobKind::kExec:
        if (j->log) {
          ExecScript(db, j->sql, &j->rc, &j->error, [j](sqlite3_stmt* s) {
            j->logged.push_back(ExpandedSql(s));
            return true;
          });
        } else {
          ExecScript(db, j->sql, &j->rc, &j->error);
        }
        return;
      case JobKind::kBackup:
        RunBackup(j);
        return;
      case JobKind::kReset:
        if (j->stmt->st) sqlite3_reset(j->stmt->st);
        return;
      default:
        break;
    }
    sqlite3_stmt* st = j->stmt->st;
    if (j->bind) {
      sqlite3_reset(st);
      for (size_t i = 0; i < j->params.size(); ++i) {
        const int rc = BindVal(st, static_cast<int>(i) + 1, j->params[i]);
        if (rc != SQLITE_OK) {
          j->rc = sqlite3_extended_errcode(db);
          j->error = sqlite3_errmsg(db);
          j->done = true;
          return;
        }
      }
      if (j->log) j->logged.push_back(ExpandedSql(st));
    }
    RunStatementInto(db, st, j, j->kind == JobKind::kFetch ? j->batch : 0);
  }

  // The pool is done with j: queue it for its JS thread, unless teardown stopped deliveries.
  // Every access goes through j->st, the path the analysis knows Job::finished by; j stays
  // alive until the lock is released.
  static void Finish(Job* j) {
    std::shared_ptr<EnvState> keep = j->st;  // outlives the lock: j may go once it is released
    safeconc::MutexLock l(&j->st->mu);
    j->finished = true;
    --j->st->running;
    if (!j->st->torn_down) {
      const bool wake = j->st->done.empty();  // else a call is pending and will find j
      j->st->done.push_back(j);
      if (wake) napi_call_threadsafe_function(j->st->done_tsfn, nullptr, napi_tsfn_nonblocking);
    }
    j->st->cv.SignalAll();
  }

  safeconc::Mutex mu_;
  safeconc::CondVar cv_;
  std::deque<std::shared_ptr<Lane>> ready_ SC_GUARDED_BY(mu_);  // Lanes waiting for a thread
  bool started_ SC_GUARDED_BY(mu_) = false;
};

Pool* const g_pool = new Pool;  // never destroyed: see the file comment

void LinkJob(EnvState* st, Job* j) {
  j->next = st->jobs;
  if (st->jobs) st->jobs->prev = j;
  st->jobs = j;
}

// Hands j to its connection's Lane; wakes a pool thread only if the Lane was idle.
void Submit(napi_env env, Db* d, Job* j) {
  EnvState* st = d->st.get();
  ++d->inflight;
  if (st->jobs_submitted++ == 0) napi_ref_threadsafe_function(env, st->done_tsfn);
  {
    safeconc::MutexLock l(&j->st->mu);  // == st->mu, named as Job::submitted names it
    ++j->st->running;
    j->submitted = true;
  }
  Lane* ln = d->lane.get();
  bool idle;
  {
    safeconc::MutexLock l(&ln->mu);
    ln->pending.push_back(j);
    idle = !ln->scheduled;
    ln->scheduled = true;
  }
  if (idle) g_pool->Schedule(d->lane);
}

void RejectNotOpen(napi_env env, Job* j) {
  napi_value e;
  napi_value m;
  napi_create_string_utf8(env, "The database connection is not open", NAPI_AUTO_LENGTH, &m);
  napi_create_type_error(env, nullptr, m, &e);
  napi_reject_deferred(env, j->deferred, e);
  if (j->stmt) --j->stmt->jobs;
  DeleteJob(j->st.get(), j);
}

// A sync statement or iterator of the connection is between two steps on the JS thread: a
// job started now could take the connection and wait for the JS thread, which waits for the
// connection. Jobs wait in Db::queue for them to finish.
bool HeldBack(Db* d) { return d->sync_running > 0 || d->iterating > 0; }

napi_value RowsToJs(napi_env env, Job* j) {
  const bool safe = j->flags & kSafeInts;
  RowShape shape(env, j->flags, j->names, j->tables);
  auto row = [&](const std::vector<Val>& r) {
    return shape.Build(r.size(), [&](size_t c) { return ValToJs(env, r[c], safe); });
  };
  napi_value out;
  switch (j->kind) {
    case JobKind::kGet:
      if (j->rows.empty()) {
        napi_get_undefined(env, &out);
      } else {
        out = row(j->rows[0]);
      }
      return out;
    case JobKind::kRun: {
      napi_value v;
      napi_create_object(env, &out);
      napi_create_double(env, static_cast<double>(j->changes), &v);
      napi_set_named_property(env, out, "changes", v);
      napi_set_named_property(env, out, "lastInsertRowid", Int64ToJs(env, j->last_rowid, safe));
      return out;
    }
    case JobKind::kAll:
    case JobKind::kFetch: {
      napi_value arr;
      napi_create_array_with_length(env, j->rows.size(), &arr);
      for (size_t i = 0; i < j->rows.size(); ++i) {
        napi_set_element(env, arr, static_cast<uint32_t>(i), row(j->rows[i]));
      }
      if (j->kind == JobKind::kAll) return arr;
      napi_value done;
      napi_create_object(env, &out);
      napi_set_named_property(env, out, "rows", arr);
      napi_get_boolean(env, j->done, &done);
      napi_set_named_property(env, out, "done", done);
      return out;
    }
    case JobKind::kBackup: {
      napi_value v;
      napi_create_object(env, &out);
      napi_create_int32(env, j->backup->total, &v);
      napi_set_named_property(env, out, "totalPages", v);
      napi_create_int32(env, j->backup->remaining, &v);
      napi_set_named_property(env, out, "remainingPages", v);
      napi_get_boolean(env, j->done, &v);
      napi_set_named_property(env, out, "done", v);
      return out;
    }
    default:
      napi_get_undefined(env, &out);
      return out;
  }
}

}  // namespace

void RunStatementInto(sqlite3* db, sqlite3_stmt* st, Job* j, int max_rows) {
  const int ncol = sqlite3_column_count(st);
  if (j->kind != JobKind::kRun) {
    for (int c = 0; c < ncol; ++c) {
      const char* n = sqlite3_column_name(st, c);
      j->names.emplace_back(n ? n : "");
      if (j->flags & kExpand) {
        const char* t = sqlite3_column_table_name(st, c);
        j->tables.emplace_back(t ? t : "$");
      }
    }
  }
  const int64_t before = sqlite3_total_changes64(db);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (j->kind == JobKind::kRun) continue;
    j->rows.emplace_back(static_cast<size_t>(ncol));
    for (int c = 0; c < ncol; ++c) ValFromColumn(st, c, &j->rows.back()[static_cast<size_t>(c)]);
    if (j->kind == JobKind::kGet) break;
    if (max_rows > 0 && static_cast<int>(j->rows.size()) >= max_rows) break;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    j->rc = rc;
    j->error = sqlite3_errmsg(db);
  }
  if (j->kind == JobKind::kRun) {
    j->changes = sqlite3_total_changes64(db) != before ? sqlite3_changes64(db) : 0;
    j->last_rowid = sqlite3_last_insert_rowid(db);
  }
  j->done = rc != SQLITE_ROW;
  if (j->kind != JobKind::kFetch || j->done) sqlite3_reset(st);
}

namespace {

// sqlite3_exec's loop, with before() called ahead of each statement.
int ExecEach(sqlite3* db, const std::string& sql,
             const std::function<bool(sqlite3_stmt*)>& before) {
  const char* p = sql.c_str();
  for (;;) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ';') ++p;
    if (*p == '\0') break;
    sqlite3_stmt* s = nullptr;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v2(db, p, -1, &s, &tail);
    if (rc != SQLITE_OK) return rc;
    p = tail;
    if (s == nullptr) continue;  // whitespace or a comment
    if (!before(s)) {
      sqlite3_finalize(s);
      return kStopped;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    }
    rc = sqlite3_finalize(s);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

}  // namespace

std::string ExpandedSql(sqlite3_stmt* st) {
  char* x = sqlite3_expanded_sql(st);
  std::string out = x ? x : sqlite3_sql(st);
  sqlite3_free(x);
  return out;
}

void ExecScript(sqlite3* db, const std::string& sql, int* rc, std::string* err,
                const std::function<bool(sqlite3_stmt*)>& before) {
  const bool was_autocommit = sqlite3_get_autocommit(db) != 0;
  char* msg = nullptr;
  *rc = before ? ExecEach(db, sql, before) : sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg);
  if (*rc == kStopped) {
    if (was_autocommit && sqlite3_get_autocommit(db) == 0) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    }
  } else if (*rc != SQLITE_OK) {
    const int ext = sqlite3_extended_errcode(db);
    if ((ext & 0xff) == (*rc & 0xff)) *rc = ext;
    *err = msg ? msg : sqlite3_errmsg(db);
    // A script that failed after opening a transaction of its own leaves the connection as it
    // found it: rolled back. Otherwise the jobs queued behind it (other callers' work) would
    // run inside it, or fail with "cannot start a transaction within a transaction".
    if (was_autocommit && sqlite3_get_autocommit(db) == 0) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    }
  }
  sqlite3_free(msg);
}

napi_value QueueJob(napi_env env, std::unique_ptr<Job> job) {
  napi_value promise;
  NAPI_OK(napi_create_promise(env, &job->deferred, &promise));
  Job* j = job.release();
  Db* d = j->db.get();
  if (j->stmt) ++j->stmt->jobs;
  LinkJob(j->st.get(), j);
  if (d->queue.empty() && !HeldBack(d) && d->db != nullptr && !j->st->exiting) {
    Submit(env, d, j);  // the common case: straight to the Lane, behind its jobs
  } else {
    d->queue.push_back(j);
    StartNext(env, d);
  }
  return promise;
}

void DeleteJob(EnvState* st, Job* j) {
  if (j->prev) j->prev->next = j->next;
  if (j->next) j->next->prev = j->prev;
  if (st->jobs == j) st->jobs = j->next;
  if (j->udf_error) napi_delete_reference(st->env, j->udf_error);
  delete j;
}

void StartNext(napi_env env, Db* d) {
  EnvState* st = d->st.get();
  while (!HeldBack(d) && !d->queue.empty()) {
    Job* j = d->queue.front();
    d->queue.pop_front();
    if (d->db == nullptr || st->exiting) {
      RejectNotOpen(env, j);
    } else {
      Submit(env, d, j);
    }
  }
  if (!d->Busy()) {
    d->FinalizeLater();
    if (d->closing && d->db) d->CloseNow(env);
  }
}

namespace {

void DeliverJob(napi_env env, Job* j) {
  EnvState* st = j->st.get();
  std::shared_ptr<Db> keep = j->db;  // the job may hold the last reference
  Db* d = keep.get();
  if (--st->jobs_submitted == 0) napi_unref_threadsafe_function(env, st->done_tsfn);
  --d->inflight;
  Stmt* s = j->stmt.get();
  if (s) {
    --s->jobs;
    if (j->kind == JobKind::kReset || (j->kind == JobKind::kFetch && j->done)) s->iter = 0;
  }
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  // The verbose logger sees what ran (after the fact, on this thread); if it throws, the
  // promise rejects with its exception.
  napi_value log_error = nullptr;
  for (const std::string& sql : j->logged) {
    if (!Log(env, d, sql)) {
      napi_get_and_clear_last_exception(env, &log_error);
      break;
    }
  }
  if (log_error) {
    napi_reject_deferred(env, j->deferred, log_error);
  } else if (j->rc != SQLITE_OK) {
    napi_value e = nullptr;
    if (j->udf_error) napi_get_reference_value(env, j->udf_error, &e);
    napi_reject_deferred(env, j->deferred, e ? e : MakeSqliteError(env, j->error, j->rc));
  } else {
    napi_resolve_deferred(env, j->deferred, RowsToJs(env, j));
  }
  napi_close_handle_scope(env, scope);
  DeleteJob(st, j);
  if (d->inflight == 0) StartNext(env, d);  // idle: close or finalize what waited for it
}

}  // namespace

void DeliverDone(napi_env env, EnvState* st) {
  if (env == nullptr) return;  // done_tsfn is being torn down: FreeEnv deletes the jobs
  std::vector<Job*> batch;
  {
    safeconc::MutexLock l(&st->mu);
    batch.swap(st->done);
  }
  for (Job* j : batch) DeliverJob(env, j);
}

napi_ref* UdfErrorSlot(Db* d) {
  Lane* ln = d->lane.get();
  safeconc::MutexLock l(&ln->mu);
  return ln->stepping ? &ln->stepping->udf_error : &d->udf_error;
}

void Quiesce(EnvState* st, bool final) {
  st->exiting = true;
  {
    safeconc::MutexLock l(&st->mu);
    st->stopping = true;  // jobs not started are failed, not run
    if (final) st->torn_down = true;
  }
  for (Db* d : st->dbs) {
    if (d->inflight > 0 && d->db) sqlite3_interrupt(d->db);  // a long query without UDFs, too
  }
  // Bounded: a job waiting in a lock (the coordinator's wait is not interrupted) may take up
  // to its timeout; it is then left to finish alone (FreeEnv leaks it rather than free it).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  safeconc::MutexLock l(&st->mu);
  while (st->running > 0 && st->cv.WaitUntil(&st->mu, deadline)) {
  }
}

}  // namespace scnode
