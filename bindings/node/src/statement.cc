// statement.cc - prepared statements: compiled once by the constructor, run many times,
// synchronously on the JS thread (run/get/all/iterate) or on the pool (the async twins).
//
// Re-entry. A statement is refused only when running it would re-enter something running:
// itself (its UDF calls it again: SQLite would reset a statement in the middle of its step),
// or its connection from inside one of that connection's UDFs. A statement of another
// connection, prepared once and reused in every call of a UDF, runs as usual.
#include <cstring>

#include "common.h"
#include "rows.h"

namespace scnode {

namespace {

enum Mode { kModeRun = 0, kModeGet = 1, kModeAll = 2 };

const char* const kNotOpen = "The database connection is not open";

// Why s cannot run synchronously now, or nullptr.
std::string SyncRefusal(Stmt* s) {
  Db* d = s->db.get();
  if (!d->Open() || s->st == nullptr) return kNotOpen;
  if (s->stepping) {
    return "This statement is busy executing a query: it was called again from inside a "
           "user-defined function it is running; prepare a second statement for that";
  }
  if (s->iter) return "This statement is busy executing a query: an iterator of it is open";
  if (InUdfOf(d)) {
    return "This statement's database is running a query that called this user-defined "
           "function: running another statement of the same connection from inside it "
           "would re-enter that connection. Use another connection, or run it after the "
           "query finishes";
  }
  if (d->Busy()) {
    return "The database is busy with " + std::to_string(d->Pending()) +
           " async query(ies): await them before running a statement synchronously (the JS "
           "thread must not wait for the connection while a query on the pool waits for "
           "the JS thread)";
  }
  return std::string();
}

bool Bind(napi_env env, Stmt* s, const std::vector<Val>& params) {
  sqlite3_reset(s->st);
  for (size_t i = 0; i < params.size(); ++i) {
    const int rc = BindVal(s->st, static_cast<int>(i) + 1, params[i]);
    if (rc != SQLITE_OK) {
      ThrowSqlite(env, sqlite3_errmsg(s->db->db), sqlite3_extended_errcode(s->db->db));
      return false;
    }
  }
  return true;
}

// The verbose logger, with the statement as bound; if it throws, the statement does not run.
bool LogRun(napi_env env, Stmt* s) {
  if (s->db->verbose == nullptr) return true;
  if (Log(env, s->db.get(), ExpandedSql(s->st))) return true;
  sqlite3_reset(s->st);
  return false;
}

std::vector<std::string> Names(sqlite3_stmt* st, int flags, std::vector<std::string>* tables) {
  const int ncol = sqlite3_column_count(st);
  std::vector<std::string> names;
  for (int c = 0; c < ncol; ++c) {
    const char* n = sqlite3_column_name(st, c);
    names.emplace_back(n ? n : "");
    if (flags & kExpand) {
      const char* t = sqlite3_column_table_name(st, c);
      tables->emplace_back(t ? t : "$");
    }
  }
  return names;
}

// Marks a sync step of s on the stack; queued jobs start when the outermost one ends.
struct Stepping {
  napi_env env;
  Stmt* s;
  Stepping(napi_env e, Stmt* st) : env(e), s(st) {
    s->stepping = true;
    ++s->db->sync_running;
    ClearUdfError(env, s->db.get());
  }
  ~Stepping() {
    s->stepping = false;
    if (--s->db->sync_running == 0) StartNext(env, s->db.get());
  }
};

struct Call {
  Stmt* s = nullptr;
  std::shared_ptr<Stmt> ref;
  napi_value argv[3] = {nullptr, nullptr, nullptr};
  size_t argc = 3;
};

bool GetCall(napi_env env, napi_callback_info info, Call* c) {
  napi_value self;
  if (napi_get_cb_info(env, info, &c->argc, c->argv, &self, nullptr) != napi_ok) return false;
  c->ref = UnwrapShared<Stmt>(env, self);
  c->s = c->ref.get();
  if (!c->s) ThrowType(env, "not a Statement");
  return c->s != nullptr;
}

int32_t IntArg(napi_env env, napi_value v) {
  int32_t i = 0;
  if (v) napi_get_value_int32(env, v, &i);
  return i;
}

// _step(mode, flags, args): run/get/all on the JS thread.
napi_value StepSync(napi_env env, napi_callback_info info) {
  try {
    Call c;
    if (!GetCall(env, info, &c)) return nullptr;
    Stmt* s = c.s;
    const int mode = IntArg(env, c.argv[0]);
    const int flags = IntArg(env, c.argv[1]);
    const std::string why = SyncRefusal(s);
    if (!why.empty()) return ThrowType(env, why);
    if (mode != kModeRun && !s->reader) {
      return ThrowType(env, "This statement does not return data. Use run() instead");
    }
    if (mode == kModeRun && s->db->iterating > 0 && !s->db->unsafe) {
      return ThrowType(env, "This database connection is busy executing a query");
    }
    std::vector<Val> params;
    if (!Params(env, s, c.argv[2], &params) || !Bind(env, s, params)) return nullptr;
    if (!LogRun(env, s)) return nullptr;
    sqlite3* db = s->db->db;
    sqlite3_stmt* st = s->st;
    const bool safe = flags & kSafeInts;
    std::vector<std::string> tables;
    std::vector<std::string> names;
    if (mode != kModeRun) names = Names(st, flags, &tables);
    RowShape shape(env, flags, names, tables);
    auto row = [&] {
      return shape.Build(names.size(),
                         [&](size_t k) { return ColumnToJs(env, st, static_cast<int>(k), safe); });
    };
    napi_value out = nullptr;
    if (mode == kModeAll) napi_create_array(env, &out);
    uint32_t n = 0;
    const int64_t before = sqlite3_total_changes64(db);
    int rc;
    std::string msg;
    {
      Stepping scope(env, s);  // ends before anything is thrown: it may start queued jobs
      while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (mode == kModeGet) {
          out = row();
          break;
        }
        if (mode == kModeAll) napi_set_element(env, out, n++, row());
      }
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) msg = sqlite3_errmsg(db);
      sqlite3_reset(st);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
      return ThrowStatementError(env, s->db.get(), msg, rc);
    if (mode == kModeGet && out == nullptr) napi_get_undefined(env, &out);
    if (mode == kModeRun) {
      napi_value v;
      napi_create_object(env, &out);
      const int64_t changes = sqlite3_total_changes64(db) != before ? sqlite3_changes64(db) : 0;
      napi_create_double(env, static_cast<double>(changes), &v);
      napi_set_named_property(env, out, "changes", v);
      napi_set_named_property(env, out, "lastInsertRowid",
                              Int64ToJs(env, sqlite3_last_insert_rowid(db), safe));
    }
    return out;
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

// _stepAsync(mode, flags, args) -> Promise: the same on the pool.
napi_value StepAsync(napi_env env, napi_callback_info info) {
  try {
    Call c;
    if (!GetCall(env, info, &c)) return nullptr;
    Stmt* s = c.s;
    const int mode = IntArg(env, c.argv[0]);
    if (!s->db->Open() || s->st == nullptr || s->db->st->exiting) return ThrowType(env, kNotOpen);
    if (s->iter)
      return ThrowType(env, "This statement is busy executing a query: an iterator of it is open");
    if (mode != kModeRun && !s->reader) {
      return ThrowType(env, "This statement does not return data. Use runAsync() instead");
    }
    auto j = std::make_unique<Job>();
    if (!Params(env, s, c.argv[2], &j->params)) return nullptr;
    j->st = s->db->st;
    j->db = s->db;
    j->stmt = c.ref;
    j->kind = mode == kModeRun ? JobKind::kRun : mode == kModeGet ? JobKind::kGet : JobKind::kAll;
    j->flags = IntArg(env, c.argv[1]);
    j->log = s->db->verbose != nullptr;
    return QueueJob(env, std::move(j));
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

// _iterOpen(args), _iterNext(flags) -> row or undefined at the end, _iterClose().
napi_value IterOpen(napi_env env, napi_callback_info info) {
  Call c;
  if (!GetCall(env, info, &c)) return nullptr;
  Stmt* s = c.s;
  const std::string why = SyncRefusal(s);
  if (!why.empty()) return ThrowType(env, why);
  if (!s->reader) return ThrowType(env, "This statement does not return data. Use run() instead");
  std::vector<Val> params;
  if (!Params(env, s, c.argv[0], &params) || !Bind(env, s, params)) return nullptr;
  if (!LogRun(env, s)) return nullptr;
  s->iter = 1;
  ++s->db->iterating;
  return nullptr;
}

void EndSyncIter(napi_env env, Stmt* s) {
  if (s->iter != 1) return;
  if (s->st) sqlite3_reset(s->st);
  s->iter = 0;
  if (--s->db->iterating == 0) StartNext(env, s->db.get());
}

napi_value IterNext(napi_env env, napi_callback_info info) {
  try {
    Call c;
    if (!GetCall(env, info, &c)) return nullptr;
    Stmt* s = c.s;
    if (s->iter != 1) return nullptr;  // ended
    if (!s->db->Open() || s->st == nullptr) return ThrowType(env, kNotOpen);
    if (s->stepping) return ThrowType(env, "This statement is busy executing a query");
    if (InUdfOf(s->db.get()) && s->db->sync_running > 0) {
      return ThrowType(env,
                       "iterator.next() was called from inside a user-defined function "
                       "of its own database");
    }
    const int flags = IntArg(env, c.argv[0]);
    sqlite3_stmt* st = s->st;
    int rc;
    {
      Stepping scope(env, s);
      rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
      std::vector<std::string> tables;
      std::vector<std::string> names = Names(st, flags, &tables);
      RowShape shape(env, flags, names, tables);
      return shape.Build(names.size(), [&](size_t k) {
        return ColumnToJs(env, st, static_cast<int>(k), flags & kSafeInts);
      });
    }
    const std::string msg = sqlite3_errmsg(s->db->db);
    EndSyncIter(env, s);
    if (rc != SQLITE_DONE) return ThrowStatementError(env, s->db.get(), msg, rc);
    return nullptr;
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

napi_value IterClose(napi_env env, napi_callback_info info) {
  Call c;
  if (GetCall(env, info, &c)) EndSyncIter(env, c.s);
  return nullptr;
}

// _iterAsyncOpen(args); _fetch(flags, batch) -> Promise<{rows, done}>; _iterAsyncClose().
napi_value IterAsyncOpen(napi_env env, napi_callback_info info) {
  Call c;
  if (!GetCall(env, info, &c)) return nullptr;
  Stmt* s = c.s;
  if (!s->db->Open() || s->st == nullptr || s->db->st->exiting) return ThrowType(env, kNotOpen);
  if (s->iter)
    return ThrowType(env, "This statement is busy executing a query: an iterator of it is open");
  if (!s->reader)
    return ThrowType(env, "This statement does not return data. Use runAsync() instead");
  if (!Params(env, s, c.argv[0], &s->iter_params)) return nullptr;
  s->iter = 2;
  return nullptr;
}

napi_value Fetch(napi_env env, napi_callback_info info) {
  try {
    Call c;
    if (!GetCall(env, info, &c)) return nullptr;
    Stmt* s = c.s;
    napi_value first_v = c.argv[2];
    bool first = false;
    if (first_v) napi_get_value_bool(env, first_v, &first);
    if (s->iter != 2 || !s->db->Open() || s->st == nullptr) return ThrowType(env, kNotOpen);
    auto j = std::make_unique<Job>();
    j->st = s->db->st;
    j->db = s->db;
    j->stmt = c.ref;
    j->kind = JobKind::kFetch;
    j->flags = IntArg(env, c.argv[0]);
    j->batch = IntArg(env, c.argv[1]);
    if (j->batch <= 0) j->batch = 100;
    j->bind = first;
    j->log = first && s->db->verbose != nullptr;
    if (first) j->params = std::move(s->iter_params);
    return QueueJob(env, std::move(j));
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

napi_value IterAsyncClose(napi_env env, napi_callback_info info) {
  Call c;
  if (!GetCall(env, info, &c)) return nullptr;
  Stmt* s = c.s;
  if (s->iter != 2 || !s->db->Open() || s->st == nullptr) {
    if (s->iter == 2) s->iter = 0;
    napi_value undef;
    napi_get_undefined(env, &undef);
    return undef;
  }
  auto j = std::make_unique<Job>();
  j->st = s->db->st;
  j->db = s->db;
  j->stmt = c.ref;
  j->kind = JobKind::kReset;
  return QueueJob(env, std::move(j));
}

// _bind(args): binds for good.
napi_value BindForGood(napi_env env, napi_callback_info info) {
  Call c;
  if (!GetCall(env, info, &c)) return nullptr;
  Stmt* s = c.s;
  if (!s->db->Open() || s->st == nullptr) return ThrowType(env, kNotOpen);
  if (s->has_bound)
    return ThrowType(env, "The bind() method can only be invoked once per statement object");
  if (s->iter || s->jobs || s->stepping)
    return ThrowType(env, "This statement is busy executing a query");
  if (!ResolveParams(env, s, c.argv[0], &s->bound)) return nullptr;
  s->has_bound = true;
  return nullptr;
}

napi_value StrOrNull(napi_env env, const char* p) {
  napi_value v;
  if (p) {
    napi_create_string_utf8(env, p, NAPI_AUTO_LENGTH, &v);
  } else {
    napi_get_null(env, &v);
  }
  return v;
}

// _columns(): [{ name, column, table, database, type }]
napi_value Columns(napi_env env, napi_callback_info info) {
  Call c;
  if (!GetCall(env, info, &c)) return nullptr;
  Stmt* s = c.s;
  if (!s->db->Open() || s->st == nullptr) return ThrowType(env, kNotOpen);
  if (!s->reader) return ThrowType(env, "This statement does not return data");
  if (s->db->inflight > 0 && g_api->in_callback(s->db->db)) {
    return ThrowType(env,
                     "columns() was called from inside a user-defined function of a query "
                     "running on this statement's database");
  }
  ConnectionLock lock(s->db.get());
  const int n = sqlite3_column_count(s->st);
  napi_value arr;
  napi_create_array_with_length(env, static_cast<size_t>(n), &arr);
  for (int k = 0; k < n; ++k) {
    napi_value o;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "name", StrOrNull(env, sqlite3_column_name(s->st, k)));
    napi_set_named_property(env, o, "column", StrOrNull(env, sqlite3_column_origin_name(s->st, k)));
    napi_set_named_property(env, o, "table", StrOrNull(env, sqlite3_column_table_name(s->st, k)));
    napi_set_named_property(env, o, "database",
                            StrOrNull(env, sqlite3_column_database_name(s->st, k)));
    napi_set_named_property(env, o, "type", StrOrNull(env, sqlite3_column_decltype(s->st, k)));
    napi_set_element(env, arr, static_cast<uint32_t>(k), o);
  }
  return arr;
}

napi_value Busy(napi_env env, napi_callback_info info) {
  Call c;
  napi_value v;
  if (!GetCall(env, info, &c)) return nullptr;
  napi_get_boolean(env, c.s->iter != 0 || c.s->stepping || c.s->jobs > 0, &v);
  return v;
}

napi_value Readonly(napi_env env, napi_callback_info info) {
  Call c;
  napi_value v;
  if (!GetCall(env, info, &c)) return nullptr;
  napi_get_boolean(env, c.s->st != nullptr && sqlite3_stmt_readonly(c.s->st), &v);
  return v;
}

napi_value Reader(napi_env env, napi_callback_info info) {
  Call c;
  napi_value v;
  if (!GetCall(env, info, &c)) return nullptr;
  napi_get_boolean(env, c.s->reader, &v);
  return v;
}

void FinalizeStmt(napi_env, void* data, void*) { delete static_cast<std::shared_ptr<Stmt>*>(data); }

// new Statement(database, sql): compiles at once; SQL errors throw here.
napi_value New(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 2;
    napi_value argv[2], self;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
    std::shared_ptr<Db> d = argc > 0 ? UnwrapShared<Db>(env, argv[0]) : nullptr;
    if (!d) return ThrowType(env, "Statement(database, sql): database must be a Database");
    std::string sql;
    if (argc < 2 || !GetString(env, argv[1], &sql)) {
      return ThrowType(env, "Expected first argument to be a string");
    }
    if (!d->Open()) return ThrowType(env, kNotOpen);
    if (d->inflight > 0 && g_api->in_callback(d->db)) {
      return ThrowType(env,
                       "prepare() was called from inside a user-defined function of a query "
                       "running on the pool on this database; prepare it beforehand");
    }
    auto s = std::make_shared<Stmt>();
    s->db = d;
    s->sql = sql;
    const char* tail = nullptr;
    int rc;
    {
      ConnectionLock lock(d.get());
      rc = sqlite3_prepare_v3(d->db, sql.c_str(), static_cast<int>(sql.size()) + 1,
                              SQLITE_PREPARE_PERSISTENT, &s->st, &tail);
      if (rc != SQLITE_OK)
        return ThrowSqlite(env, sqlite3_errmsg(d->db), sqlite3_extended_errcode(d->db));
    }
    if (s->st == nullptr) return ThrowRange(env, "The supplied SQL string contains no statements");
    while (tail && *tail && std::strchr(" \t\r\n;", *tail)) ++tail;
    if (tail && *tail) {
      return ThrowRange(env,
                        "The supplied SQL string contains more than one statement; use "
                        "db.exec() for a script");
    }
    s->reader = sqlite3_column_count(s->st) > 0;
    auto* holder = new std::shared_ptr<Stmt>(s);
    if (napi_wrap(env, self, holder, FinalizeStmt, nullptr, nullptr) != napi_ok) {
      delete holder;
      return Pending(env);
    }
    d->stmts.insert(s.get());
    return self;
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

}  // namespace

Stmt::~Stmt() {
  if (db) db->stmts.erase(this);
  if (st == nullptr) return;
  // sqlite3_finalize takes the connection's mutex: with a job of the connection running it
  // could wait for the pool thread, which may be waiting for this (JS) thread. Defer then.
  if (db && db->Busy()) {
    db->finalize_later.push_back(st);
  } else {
    sqlite3_finalize(st);
  }
  st = nullptr;
}

napi_value InitStatement(napi_env env, napi_value exports) {
  napi_property_descriptor m[] = {
      {"_step", nullptr, StepSync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_stepAsync", nullptr, StepAsync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_iterOpen", nullptr, IterOpen, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_iterNext", nullptr, IterNext, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_iterClose", nullptr, IterClose, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_iterAsyncOpen", nullptr, IterAsyncOpen, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_fetch", nullptr, Fetch, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_iterAsyncClose", nullptr, IterAsyncClose, nullptr, nullptr, nullptr, napi_default,
       nullptr},
      {"_bind", nullptr, BindForGood, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"_columns", nullptr, Columns, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"busy", nullptr, nullptr, Busy, nullptr, nullptr, napi_default, nullptr},
      {"readonly", nullptr, nullptr, Readonly, nullptr, nullptr, napi_default, nullptr},
      {"reader", nullptr, nullptr, Reader, nullptr, nullptr, napi_default, nullptr},
  };
  napi_value ctor;
  NAPI_OK(napi_define_class(env, "Statement", NAPI_AUTO_LENGTH, New, nullptr,
                            sizeof m / sizeof m[0], m, &ctor));
  NAPI_OK(napi_create_reference(env, ctor, 1, &State(env)->stmt_ctor));
  NAPI_OK(napi_set_named_property(env, exports, "Statement", ctor));
  return exports;
}

}  // namespace scnode
