// addon.cc - safeconc_node: a better-sqlite3-style binding over system SQLite whose async
// twins run queries on threads of their own while their JavaScript user-defined functions
// run on the JS thread, through libsafeconc's trampoline table. The reference binding of
// docs/host-integration.md; the JS API is in ../lib.
//
// This file: module set-up, the per-environment state, loading libsafeconc, the owner and
// its dispatch hook, and teardown. The other parts: database.cc (connections), statement.cc
// (prepared statements), udf.cc (JS functions), pool.cc (async jobs), values.cc and
// errors.cc.
//
// Owners. One safeconc owner per environment (the main thread, each worker_thread), opened
// on first use. Its dispatch hook queues the task on EnvState::udf_queue and wakes the JS
// thread through udf_tsfn (unref'd: an idle owner keeps no process alive); the JS thread
// runs the queued tasks in one batch per wake-up, so the event loop turns between batches.
// ConnectionLock runs them too while it waits for a connection.
//
// Teardown, three ways, each prompt with queries in flight:
//  - process.exit() / an uncaught exception: lib/ calls native.shutdown() from the process
//    'exit' event: the owner closes (UDF calls waiting for it fail at once), running
//    queries are interrupted, and it waits (bounded) until the pool has none of them left.
//    Node runs no cleanup hook on this path, and does not join the addon's threads.
//  - worker.terminate() and the normal end of an environment: the cleanup hooks below.
//
// Errors. No C++ exception leaves a napi callback or a SQLite callback: each entry point
// catches and turns failures into a JS exception (or an SQLite error for a UDF).
#include <dlfcn.h>

#include "common.h"

namespace scnode {

const safeconc_api_v1* g_api = nullptr;
std::atomic<int64_t> g_live[kLiveKinds];

namespace {

safeconc::Mutex g_load_mu;  // held through the one-time load of libsafeconc (g_api)

using Slot = std::shared_ptr<EnvState>;

Slot* SlotOf(napi_env env) {
  void* p = nullptr;
  napi_get_instance_data(env, &p);
  return static_cast<Slot*>(p);
}

// The process-wide load: libsafeconc through sqlite3_load_extension, then its API table.
bool LoadLibrary(const std::string& so, std::string* why) {
  safeconc::MutexLock l(&g_load_mu);
  if (g_api) return true;
  sqlite3* tmp = nullptr;
  if (sqlite3_open_v2(":memory:", &tmp, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    *why = "cannot open a connection to load libsafeconc";
    sqlite3_close(tmp);
    return false;
  }
  sqlite3_db_config(tmp, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* err = nullptr;
  if (sqlite3_load_extension(tmp, so.c_str(), nullptr, &err) != SQLITE_OK) {
    *why = "cannot load libsafeconc from " + so + ": " + (err ? err : "unknown error");
    sqlite3_free(err);
    sqlite3_close(tmp);
    return false;
  }
  sqlite3_close(tmp);
  // sqlite3_load_extension appends ".so" to a path that fails as given: find it the same way.
  void* h = dlopen(so.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen((so + ".so").c_str(), RTLD_NOW | RTLD_NOLOAD);
  auto fn = h ? reinterpret_cast<safeconc_api_fn>(dlsym(h, SAFECONC_API_SYMBOL)) : nullptr;
  const void* api = fn ? fn(1) : nullptr;
  if (api == nullptr) {
    *why = "libsafeconc at " + so + " has no API table version 1 (too old?)";
    return false;
  }
  g_api = static_cast<const safeconc_api_v1*>(api);
  return true;
}

// The dispatch hook: any thread. Queues the task for the JS thread; never waits for it.
int Hook(void* arg, safeconc_task* task) {
  EnvState* st = static_cast<EnvState*>(arg);
  bool wake;
  {
    safeconc::MutexLock l(&st->udf_mu);
    if (st->udf_closed) return 1;
    wake = st->udf_queue.empty();  // else a wake-up is pending already
    st->udf_queue.push_back(task);
  }
  st->udf_cv.Signal();
  // Only fails while the environment closes; CloseOwner then runs the queued task.
  if (wake) napi_call_threadsafe_function(st->udf_tsfn, nullptr, napi_tsfn_nonblocking);
  return 0;
}

// udf_tsfn's call_js. env is nullptr once the function is torn down: CloseOwner has then
// run (or will run) what is queued.
void UdfWake(napi_env env, napi_value, void* ctx, void*) {
  if (env != nullptr) DrainUdfTasks(static_cast<EnvState*>(ctx));
}

void DoneCallJs(napi_env env, napi_value, void* ctx, void*) {
  DeliverDone(env, static_cast<EnvState*>(ctx));
}

// Cleanup hook added right after udf_tsfn was created, so it runs before the function's own
// cleanup (hooks run last-in first-out).
void CloseOwnerHook(void* arg) { CloseOwner(static_cast<EnvState*>(arg)); }

// Cleanup hook added right after done_tsfn was created (runs before its own cleanup): no job
// of this environment runs on the pool after it, and none is delivered.
void TeardownHook(void* arg) {
  EnvState* st = static_cast<EnvState*>(arg);
  CloseOwner(st);
  Quiesce(st, true);
  if (st->done_tsfn) napi_release_threadsafe_function(st->done_tsfn, napi_tsfn_abort);
  st->done_tsfn = nullptr;
}

// Cleanup hook added first, so it runs last: frees what the environment still holds.
void FreeEnv(void* arg) {
  auto* slot = static_cast<Slot*>(arg);
  EnvState* st = slot->get();
  napi_env env = st->env;
  std::vector<Job*> jobs;
  for (Job* j = st->jobs; j; j = j->next) jobs.push_back(j);
  std::set<Job*> on_pool;
  std::set<Db*> in_use;  // connections a job still on the pool uses
  {
    safeconc::MutexLock l(&st->mu);
    st->done.clear();  // not delivered: deleted below
  }
  for (Job* j : jobs) {
    safeconc::MutexLock l(&j->st->mu);  // st->mu: the analysis names it through the job
    if (j->submitted && !j->finished) on_pool.insert(j), in_use.insert(j->db.get());
  }
  for (Job* j : jobs) {
    // A job still on the pool after Quiesce's bound is left to finish alone, with what it
    // uses: freeing it would free memory in use.
    if (on_pool.count(j) == 0) DeleteJob(st, j);
  }
  for (Db* d : std::set<Db*>(st->dbs)) {
    d->queue.clear();  // their jobs were deleted above
    if (in_use.count(d) == 0) {
      d->inflight = 0;
      d->CloseNow(env);
    }
  }
  FreeFuncs(st);
  for (napi_ref* r : {&st->sqlite_error, &st->db_ctor, &st->stmt_ctor}) {
    if (*r) napi_delete_reference(env, *r);
    *r = nullptr;
  }
  napi_set_instance_data(env, nullptr, nullptr, nullptr);
  delete slot;  // Dbs, Stmts and leaked jobs still alive hold their own reference
}

// native.setup({ SqliteError })
napi_value Setup(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, cls;
  NAPI_OK(napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr));
  EnvState* st = State(env);
  if (argc < 1 || napi_get_named_property(env, arg, "SqliteError", &cls) != napi_ok) {
    return ThrowType(env, "setup({ SqliteError })");
  }
  if (st->sqlite_error) napi_delete_reference(env, st->sqlite_error);
  NAPI_OK(napi_create_reference(env, cls, 1, &st->sqlite_error));
  return nullptr;
}

// native.shutdown(): the process is exiting (its 'exit' event).
napi_value Shutdown(napi_env env, napi_callback_info) {
  EnvState* st = State(env);
  if (st) {
    CloseOwner(st);
    Quiesce(st, false);
  }
  return nullptr;
}

// native.liveObjects(): objects of the binding alive in the process, for leak checks.
napi_value LiveObjects(napi_env env, napi_callback_info) {
  napi_value r, v;
  NAPI_OK(napi_create_object(env, &r));
  const char* names[kLiveKinds] = {"environments", "databases", "statements", "functions",
                                   "queries"};
  for (int k = 0; k < kLiveKinds; ++k) {
    NAPI_OK(napi_create_int64(env, g_live[k].load(std::memory_order_relaxed), &v));
    NAPI_OK(napi_set_named_property(env, r, names[k], v));
  }
  return r;
}

napi_value Init(napi_env env, napi_value exports) {
  auto* slot = new Slot(std::make_shared<EnvState>());
  EnvState* st = slot->get();
  st->env = env;
  if (napi_set_instance_data(env, slot, nullptr, nullptr) != napi_ok) {
    delete slot;
    return Pending(env);
  }
  napi_add_env_cleanup_hook(env, FreeEnv, slot);
  napi_value name;
  NAPI_OK(napi_create_string_utf8(env, "safeconc-done", NAPI_AUTO_LENGTH, &name));
  NAPI_OK(napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, st,
                                          DoneCallJs, &st->done_tsfn));
  napi_unref_threadsafe_function(env, st->done_tsfn);  // ref'd while jobs are out
  napi_add_env_cleanup_hook(env, TeardownHook, st);
  if (!InitDatabase(env, exports) || !InitStatement(env, exports) || !InitBackup(env, exports))
    return nullptr;
  struct {
    const char* name;
    napi_callback cb;
  } fns[] = {{"setup", Setup}, {"shutdown", Shutdown}, {"liveObjects", LiveObjects}};
  for (const auto& f : fns) {
    napi_value fn;
    NAPI_OK(napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn));
    NAPI_OK(napi_set_named_property(env, exports, f.name, fn));
  }
  return exports;
}

}  // namespace

EnvState* State(napi_env env) {
  Slot* s = SlotOf(env);
  return s ? s->get() : nullptr;
}

std::shared_ptr<EnvState> StateRef(napi_env env) {
  Slot* s = SlotOf(env);
  return s ? *s : nullptr;
}

int DrainUdfTasks(EnvState* st) {
  std::deque<safeconc_task*> batch;
  {
    safeconc::MutexLock l(&st->udf_mu);
    batch.swap(st->udf_queue);
  }
  for (safeconc_task* t : batch) g_api->task_run(t);
  return static_cast<int>(batch.size());
}

void CloseOwner(EnvState* st) {
  st->exiting = true;
  if (st->owner == nullptr) return;
  g_api->owner_close(st->owner);  // fails waiting calls; returns once no hook call runs
  st->owner = nullptr;
  {
    safeconc::MutexLock l(&st->udf_mu);
    st->udf_closed = true;
  }
  DrainUdfTasks(st);  // on a closed owner task_run only releases each task
  if (st->udf_tsfn) napi_release_threadsafe_function(st->udf_tsfn, napi_tsfn_abort);
  st->udf_tsfn = nullptr;
}

bool EnsureReady(napi_env env, EnvState* st, const std::string& so, std::string* why) {
  if (!LoadLibrary(so, why)) return false;
  if (st->owner) return true;
  if (st->exiting) return *why = "the JavaScript environment is shutting down", false;
  napi_value name;
  napi_create_string_utf8(env, "safeconc-udf", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, st,
                                      UdfWake, &st->udf_tsfn) != napi_ok) {
    *why = "cannot create the threadsafe function for UDF calls";
    return false;
  }
  napi_unref_threadsafe_function(env, st->udf_tsfn);  // an idle owner keeps nobody alive
  if (g_api->owner_open(Hook, st, &st->owner) != SQLITE_OK) {
    *why = std::string("owner_open: ") + g_api->errmsg();
    napi_release_threadsafe_function(st->udf_tsfn, napi_tsfn_abort);
    st->udf_tsfn = nullptr;
    return false;
  }
  napi_add_env_cleanup_hook(env, CloseOwnerHook, st);
  return true;
}

}  // namespace scnode

NAPI_MODULE_INIT() { return scnode::Init(env, exports); }
