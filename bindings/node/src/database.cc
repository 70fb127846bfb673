// database.cc - connections: open with better-sqlite3's options, exec, close, and the rules
// for using a connection from the JS thread while the pool may be using it.
#include <chrono>
#include <cstring>

#include "common.h"

namespace scnode {

namespace {

const char* const kNotOpen = "The database connection is not open";

void FinalizeDb(napi_env, void* data, void*) { delete static_cast<std::shared_ptr<Db>*>(data); }

Db* Self(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  napi_value self;
  if (napi_get_cb_info(env, info, argc, argv, &self, nullptr) != napi_ok) return nullptr;
  Db* d = Unwrap<Db>(env, self);
  if (!d) ThrowType(env, "not a Database");
  return d;
}

// Why d cannot be used synchronously now (exec, close), or "".
std::string SyncRefusal(Db* d, const char* what) {
  if (!d->Open()) return kNotOpen;
  if (InUdfOf(d)) {
    return std::string(what) +
           " was called from inside a user-defined function of this database: that would "
           "re-enter the connection running it. Run it after the query finishes";
  }
  if (d->Busy()) {
    return std::string(what) + ": the database is busy with " + std::to_string(d->Pending()) +
           " async query(ies); await them first (the JS thread must not wait for the "
           "connection while a query on the pool waits for the JS thread)";
  }
  if (d->iterating && !d->unsafe)
    return "This database connection is busy executing a query (an iterator is open)";
  return std::string();
}

// Replaces the main database of a fresh in-memory connection with a copy of buf's bytes.
bool Deserialize(napi_env env, sqlite3* db, napi_value buf, bool readonly) {
  void* data = nullptr;
  size_t n = 0;
  if (napi_get_buffer_info(env, buf, &data, &n) != napi_ok) {
    ThrowType(env, "Expected a Buffer");
    return false;
  }
  auto* copy = static_cast<unsigned char*>(sqlite3_malloc64(n > 0 ? n : 1));
  if (copy == nullptr) {
    ThrowSqlite(env, "out of memory", SQLITE_NOMEM);
    return false;
  }
  if (n > 0) std::memcpy(copy, data, n);
  const unsigned flags = SQLITE_DESERIALIZE_FREEONCLOSE |
                         (readonly ? SQLITE_DESERIALIZE_READONLY : SQLITE_DESERIALIZE_RESIZEABLE);
  const auto size = static_cast<sqlite3_int64>(n);
  if (sqlite3_deserialize(db, "main", copy, size, size, flags) != SQLITE_OK) {
    ThrowSqlite(env, sqlite3_errmsg(db), sqlite3_extended_errcode(db));  // copy freed by SQLite
    return false;
  }
  return true;
}

// new Database(path, flags, timeoutMs, libsafeconcPath, buffer?)
//   flags: 1 readonly, 2 fileMustExist; buffer: serialize()d bytes opened in memory (path
//   is then ":memory:").
napi_value New(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 5;
    napi_value argv[5], self;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
    std::string path, so, why;
    if (argc < 4 || !GetString(env, argv[0], &path) || !GetString(env, argv[3], &so)) {
      return ThrowType(env, "Database(path, flags, timeout, libsafeconc): bad arguments");
    }
    int32_t flags = 0, timeout = 5000;
    napi_get_value_int32(env, argv[1], &flags);
    napi_get_value_int32(env, argv[2], &timeout);
    EnvState* st = State(env);
    if (!EnsureReady(env, st, so, &why)) return ThrowError(env, why);
    auto d = std::make_shared<Db>();
    d->st = StateRef(env);
    d->path = path;
    d->readonly = flags & 1;
    int open_flags = SQLITE_OPEN_URI | SQLITE_OPEN_FULLMUTEX;
    if (d->readonly) {
      open_flags |= SQLITE_OPEN_READONLY;
    } else {
      open_flags |= SQLITE_OPEN_READWRITE | ((flags & 2) ? 0 : SQLITE_OPEN_CREATE);
    }
    const int rc = sqlite3_open_v2(path.c_str(), &d->db, open_flags, nullptr);
    if (rc != SQLITE_OK) {
      const int ext = d->db ? sqlite3_extended_errcode(d->db) : rc;
      const std::string msg = d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc);
      sqlite3_close(d->db);
      d->db = nullptr;
      return ThrowSqlite(env, msg + ": " + path, ext);
    }
    sqlite3_extended_result_codes(d->db, 1);
    sqlite3_busy_timeout(d->db, timeout < 0 ? 0 : timeout);
    // As better-sqlite3: defensive unless unsafeMode() (no writable_schema, no raw shadow
    // table writes that can corrupt the file).
    sqlite3_db_config(d->db, SQLITE_DBCONFIG_DEFENSIVE, 1, nullptr);
    napi_valuetype bt = napi_undefined;
    if (argc > 4) napi_typeof(env, argv[4], &bt);
    if (bt == napi_object && !Deserialize(env, d->db, argv[4], d->readonly)) return nullptr;
    auto* holder = new std::shared_ptr<Db>(d);
    if (napi_wrap(env, self, holder, FinalizeDb, nullptr, nullptr) != napi_ok) {
      delete holder;  // ~Db closes the connection
      return Pending(env);
    }
    st->dbs.insert(d.get());
    return self;
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

// exec(sql): a script, on the JS thread.
napi_value Exec(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Db* d = Self(env, info, &argc, argv);
  if (!d) return nullptr;
  std::string sql;
  if (argc < 1 || !GetString(env, argv[0], &sql))
    return ThrowType(env, "Expected first argument to be a string");
  const std::string why = SyncRefusal(d, "exec()");
  if (!why.empty()) return ThrowType(env, why);
  int rc = SQLITE_OK;
  std::string err;
  ++d->sync_running;
  ClearUdfError(env, d);
  if (d->verbose) {
    ExecScript(d->db, sql, &rc, &err, [&](sqlite3_stmt* s) { return Log(env, d, ExpandedSql(s)); });
  } else {
    ExecScript(d->db, sql, &rc, &err);
  }
  if (--d->sync_running == 0) StartNext(env, d);
  if (rc == kStopped) return nullptr;  // the logger's exception is pending
  if (rc != SQLITE_OK) return ThrowStatementError(env, d, err, rc);
  return nullptr;
}

// _setVerbose(fn | null)
napi_value SetVerbose(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Db* d = Self(env, info, &argc, argv);
  if (!d) return nullptr;
  if (d->verbose) napi_delete_reference(env, d->verbose);
  d->verbose = nullptr;
  napi_valuetype t = napi_undefined;
  if (argc > 0) napi_typeof(env, argv[0], &t);
  if (t == napi_function) NAPI_OK(napi_create_reference(env, argv[0], 1, &d->verbose));
  return nullptr;
}

// unsafeMode(on): defensive off, writes while an iterator is open allowed.
napi_value UnsafeMode(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Db* d = Self(env, info, &argc, argv);
  if (!d) return nullptr;
  bool on = true;
  if (argc > 0 && napi_get_value_bool(env, argv[0], &on) != napi_ok) {
    return ThrowType(env, "Expected first argument to be a boolean");
  }
  if (!d->Open()) return ThrowType(env, kNotOpen);
  d->unsafe = on;
  // A flag of the connection's config: sqlite3_db_config takes the connection's mutex,
  // which a job on the pool may hold while it waits for this thread.
  ConnectionLock lock(d);
  sqlite3_db_config(d->db, SQLITE_DBCONFIG_DEFENSIVE, on ? 0 : 1, nullptr);
  return nullptr;
}

// loadExtension(path, entryPoint?)
napi_value LoadExtension(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  Db* d = Self(env, info, &argc, argv);
  if (!d) return nullptr;
  std::string path, entry;
  if (argc < 1 || !GetString(env, argv[0], &path))
    return ThrowType(env, "Expected first argument to be a string");
  napi_valuetype t = napi_undefined;
  if (argc > 1) napi_typeof(env, argv[1], &t);
  if (t != napi_undefined && !GetString(env, argv[1], &entry))
    return ThrowType(env, "Expected second argument to be a string");
  const std::string why = SyncRefusal(d, "loadExtension()");
  if (!why.empty()) return ThrowType(env, why);
  // Enabled for this one call only, so SQL cannot load extensions (load_extension()).
  sqlite3_db_config(d->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* err = nullptr;
  const int rc =
      sqlite3_load_extension(d->db, path.c_str(), entry.empty() ? nullptr : entry.c_str(), &err);
  sqlite3_db_config(d->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return ThrowSqlite(env, msg, rc);
  }
  return nullptr;
}

// _serialize(schema) -> Buffer
napi_value Serialize(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Db* d = Self(env, info, &argc, argv);
  if (!d) return nullptr;
  std::string schema;
  if (argc < 1 || !GetString(env, argv[0], &schema))
    return ThrowType(env, "Expected the \"attached\" option to be a string");
  const std::string why = SyncRefusal(d, "serialize()");
  if (!why.empty()) return ThrowType(env, why);
  sqlite3_int64 n = 0;
  unsigned char* p = sqlite3_serialize(d->db, schema.c_str(), &n, 0);
  if (p == nullptr) {
    // No such schema, out of memory, or an empty database (0 bytes).
    bool known = false;
    for (int i = 0; const char* name = sqlite3_db_name(d->db, i); ++i) known |= schema == name;
    if (!known) return ThrowRange(env, "The database \"" + schema + "\" does not exist");
    if (n > 0) return ThrowSqlite(env, "out of memory", SQLITE_NOMEM);
    n = 0;
  }
  napi_value buf;
  const napi_status s = napi_create_buffer_copy(
      env, static_cast<size_t>(n), p ? p : static_cast<const void*>(""), nullptr, &buf);
  sqlite3_free(p);
  NAPI_OK(s);
  return buf;
}

// _execAsync(sql) -> Promise
napi_value ExecAsync(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 1;
    napi_value argv[1], self;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
    std::shared_ptr<Db> d = UnwrapShared<Db>(env, self);
    if (!d) return ThrowType(env, "not a Database");
    auto j = std::make_unique<Job>();
    if (argc < 1 || !GetString(env, argv[0], &j->sql))
      return ThrowType(env, "Expected first argument to be a string");
    if (!d->Open() || d->st->exiting) return ThrowType(env, kNotOpen);
    j->st = d->st;
    j->db = d;
    j->kind = JobKind::kExec;
    j->log = d->verbose != nullptr;
    return QueueJob(env, std::move(j));
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

// close(): at once when idle; with async queries queued, after them (they finish normally).
napi_value Close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Db* d = Self(env, info, &argc, nullptr);
  if (!d) return nullptr;
  if (!d->Open()) return nullptr;  // closing twice is harmless
  if (InUdfOf(d)) {
    return ThrowType(env,
                     "close() was called from inside a user-defined function of this "
                     "database; close it after the query finishes");
  }
  if (d->iterating)
    return ThrowType(env,
                     "This database connection is busy executing a query (an iterator is open)");
  d->closing = true;
  if (!d->Busy()) d->CloseNow(env);
  return nullptr;
}

napi_value GetOpen(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Db* d = Self(env, info, &argc, nullptr);
  napi_value v;
  napi_get_boolean(env, d && d->Open(), &v);
  return v;
}

napi_value GetInTransaction(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Db* d = Self(env, info, &argc, nullptr);
  napi_value v;
  // sqlite3_get_autocommit reads one flag without the connection's mutex: no wait here.
  napi_get_boolean(env, d && d->db && !sqlite3_get_autocommit(d->db), &v);
  return v;
}

napi_value GetReadonly(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Db* d = Self(env, info, &argc, nullptr);
  napi_value v;
  napi_get_boolean(env, d && d->readonly, &v);
  return v;
}

}  // namespace

bool InUdfOf(Db* d) { return d->sync_running > 0 || (d->db && g_api->in_callback(d->db)); }

void Db::FinalizeLater() {
  for (sqlite3_stmt* s : finalize_later) sqlite3_finalize(s);
  finalize_later.clear();
}

bool Log(napi_env env, Db* d, const std::string& sql) {
  if (d->verbose == nullptr) return true;
  napi_value fn = nullptr, arg, undef, ignored;
  napi_get_reference_value(env, d->verbose, &fn);
  if (fn == nullptr) return true;
  napi_get_undefined(env, &undef);
  if (napi_create_string_utf8(env, sql.data(), sql.size(), &arg) != napi_ok) return false;
  return napi_call_function(env, undef, fn, 1, &arg, &ignored) == napi_ok;
}

void Db::CloseNow(napi_env env) {
  if (db == nullptr) return;
  for (Stmt* s : stmts) {
    if (s->st) sqlite3_finalize(s->st);
    s->st = nullptr;
  }
  stmts.clear();
  FinalizeLater();
  ClearUdfError(env, this);
  if (verbose) napi_delete_reference(env, verbose);
  verbose = nullptr;
  sqlite3_close_v2(db);
  db = nullptr;
  closing = false;
  st->dbs.erase(this);
}

Db::~Db() {
  if (db) CloseNow(st->env);
}

ConnectionLock::ConnectionLock(Db* d) : mu_(sqlite3_db_mutex(d->db)) {
  if (mu_ == nullptr) return;
  EnvState* st = d->st.get();
  // A job of this connection may hold the mutex for a whole step while it waits for a UDF
  // call on this thread: run those calls while waiting, instead of waiting for each other.
  while (sqlite3_mutex_try(mu_) != SQLITE_OK) {
    if (DrainUdfTasks(st) > 0) continue;
    safeconc::MutexLock l(&st->udf_mu);
    if (st->udf_queue.empty()) {
      st->udf_cv.WaitUntil(&st->udf_mu,
                           std::chrono::steady_clock::now() + std::chrono::milliseconds(1));
    }
  }
}

ConnectionLock::~ConnectionLock() {
  if (mu_) sqlite3_mutex_leave(mu_);
}

napi_value InitDatabase(napi_env env, napi_value exports) {
  napi_property_descriptor m[] = {
      {"exec", nullptr, Exec, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_execAsync", nullptr, ExecAsync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"close", nullptr, Close, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_function", nullptr, DbFunction, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_aggregate", nullptr, DbAggregate, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"open", nullptr, nullptr, GetOpen, nullptr, nullptr, napi_default, nullptr},
      {"inTransaction", nullptr, nullptr, GetInTransaction, nullptr, nullptr, napi_default,
       nullptr},
      {"readonly", nullptr, nullptr, GetReadonly, nullptr, nullptr, napi_default, nullptr},
      {"_setVerbose", nullptr, SetVerbose, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"unsafeMode", nullptr, UnsafeMode, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"loadExtension", nullptr, LoadExtension, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_serialize", nullptr, Serialize, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_backup", nullptr, DbBackup, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_value ctor;
  NAPI_OK(napi_define_class(env, "Database", NAPI_AUTO_LENGTH, New, nullptr, sizeof m / sizeof m[0],
                            m, &ctor));
  NAPI_OK(napi_create_reference(env, ctor, 1, &State(env)->db_ctor));
  NAPI_OK(napi_set_named_property(env, exports, "Database", ctor));
  return exports;
}

}  // namespace scnode
