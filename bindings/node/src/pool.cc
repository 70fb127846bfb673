// pool.cc - the async twins: jobs run on the addon's own threads, never on libuv's pool.
//
// Why a pool of its own: a job whose query calls a JS UDF waits on its thread for the JS
// thread, for as long as the query runs. On libuv's pool (4 threads by default) four such
// queries took every thread, and fs, dns and zlib work waited behind them (an fs.readFile
// went from 5 ms to 543 ms). These threads are the addon's: libuv's pool stays free.
//
// Size: SAFECONC_NODE_THREADS (1..64), default 4. Connections run one job at a time each
// (Db::queue), so more threads only help with more connections. The threads are created on
// first use and never joined: the process exits without waiting for them (Quiesce has made
// sure no job of an environment is left running first). The pool object is never destroyed
// for the same reason: a static destructor would run while they wait on its mutex.
//
// Delivery: a finished job is handed to its environment's JS thread through done_tsfn (one
// threadsafe function per environment, ref'd while jobs are out), under EnvState::mu so that
// teardown can stop deliveries before it releases done_tsfn.
#include <cstdlib>
#include <thread>

#include "common.h"
#include "rows.h"

namespace scnode {

namespace {

class Pool {
 public:
  void Submit(Job* j) {
    std::lock_guard<std::mutex> l(mu_);
    if (!started_) Start();
    queue_.push_back(j);
    cv_.notify_one();
  }

 private:
  // Mutex rules: mu_ guards queue_ and started_.
  void Start() {
    int n = 4;
    if (const char* e = std::getenv("SAFECONC_NODE_THREADS")) {
      const int v = std::atoi(e);
      if (v >= 1 && v <= 64) n = v;
    }
    for (int i = 0; i < n; ++i) std::thread([this] { Loop(); }).detach();
    started_ = true;
  }

  void Loop() {
    for (;;) {
      Job* j;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return !queue_.empty(); });
        j = queue_.front();
        queue_.pop_front();
      }
      RunJob(j);
      Finish(j);
    }
  }

  static void RunJob(Job* j) {
    sqlite3* db = j->db->db;
    switch (j->kind) {
      case JobKind::kExec:
        ExecScript(db, j->sql, &j->rc, &j->error);
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
    }
    RunStatementInto(db, st, j, j->kind == JobKind::kFetch ? j->batch : 0);
  }

  // The pool is done with j: hand it to its JS thread, unless teardown stopped deliveries.
  static void Finish(Job* j) {
    std::shared_ptr<EnvState> st = j->st;  // j may be deleted as soon as it is delivered
    std::lock_guard<std::mutex> l(st->mu);
    j->finished = true;
    --st->running;
    if (!st->torn_down) napi_call_threadsafe_function(st->done_tsfn, j, napi_tsfn_nonblocking);
    st->cv.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
  bool started_ = false;
};

Pool* const g_pool = new Pool;  // never destroyed: see the file comment

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
    default:
      napi_get_undefined(env, &out);
      return out;
  }
}

}  // namespace

void PoolSubmit(Job* j) { g_pool->Submit(j); }

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

void ExecScript(sqlite3* db, const std::string& sql, int* rc, std::string* err) {
  const bool was_autocommit = sqlite3_get_autocommit(db) != 0;
  char* msg = nullptr;
  *rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg);
  if (*rc != SQLITE_OK) {
    const int ext = sqlite3_extended_errcode(db);
    if ((ext & 0xff) == (*rc & 0xff)) *rc = ext;
    *err = msg ? msg : sqlite3_errstr(*rc);
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
  j->st->jobs.insert(j);
  d->queue.push_back(j);
  StartNext(env, d);
  return promise;
}

void DeleteJob(EnvState* st, Job* j) {
  st->jobs.erase(j);
  delete j;
}

void StartNext(napi_env env, Db* d) {
  EnvState* st = d->st.get();
  // A sync statement or iterator of the connection is between two steps on the JS thread:
  // a job started now could take the connection and wait for the JS thread, which waits for
  // the connection. Jobs wait for them to finish.
  while (d->running == nullptr && d->sync_running == 0 && d->iterating == 0 && !d->queue.empty()) {
    Job* j = d->queue.front();
    d->queue.pop_front();
    if (d->db == nullptr || st->exiting) {
      napi_value e;
      napi_value m;
      napi_create_string_utf8(env, "The database connection is not open", NAPI_AUTO_LENGTH, &m);
      napi_create_type_error(env, nullptr, m, &e);
      napi_reject_deferred(env, j->deferred, e);
      if (j->stmt) --j->stmt->jobs;
      DeleteJob(st, j);
      continue;
    }
    ClearUdfError(env, d);
    d->running = j;
    if (st->jobs_submitted++ == 0) napi_ref_threadsafe_function(env, st->done_tsfn);
    {
      std::lock_guard<std::mutex> l(st->mu);
      ++st->running;
      j->submitted = true;
    }
    PoolSubmit(j);
  }
  if (!d->Busy()) {
    d->FinalizeLater();
    if (d->closing && d->db) d->CloseNow(env);
  }
}

void DeliverJob(napi_env env, Job* j) {
  if (env == nullptr) return;  // done_tsfn is being torn down: FreeEnv deletes the job
  EnvState* st = j->st.get();
  std::shared_ptr<Db> keep = j->db;  // the job may hold the last reference
  Db* d = keep.get();
  if (--st->jobs_submitted == 0) napi_unref_threadsafe_function(env, st->done_tsfn);
  d->running = nullptr;
  Stmt* s = j->stmt.get();
  if (s) {
    --s->jobs;
    if (j->kind == JobKind::kReset || (j->kind == JobKind::kFetch && j->done)) s->iter = 0;
  }
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  if (j->rc != SQLITE_OK) {
    napi_value e = TakeUdfError(env, d);
    napi_reject_deferred(env, j->deferred, e ? e : MakeSqliteError(env, j->error, j->rc));
  } else {
    napi_resolve_deferred(env, j->deferred, RowsToJs(env, j));
  }
  napi_close_handle_scope(env, scope);
  DeleteJob(st, j);
  StartNext(env, d);
}

void Quiesce(EnvState* st, bool final) {
  st->exiting = true;
  for (Db* d : st->dbs) {
    if (d->running && d->db) sqlite3_interrupt(d->db);  // a long query without UDFs, too
  }
  std::unique_lock<std::mutex> l(st->mu);
  if (final) st->torn_down = true;
  // Bounded: a job waiting in a lock (the coordinator's wait is not interrupted) may take up
  // to its timeout; it is then left to finish alone (FreeEnv leaks it rather than free it).
  st->cv.wait_for(l, std::chrono::seconds(2), [&] { return st->running == 0; });
}

}  // namespace scnode
