// udf.cc - JavaScript user-defined functions: scalar, aggregate and window, registered with
// libsafeconc's trampoline so they run on the JS thread whichever thread steps the query.
//
// A callback runs on the JS thread: directly when the JS thread steps the statement (the
// sync API), or through the environment's owner when a pool thread does (the async twins).
// A JS exception fails the statement; its JS value is kept on the Job that stepped it
// (Job::udf_error), or on the connection for a sync query (Db::udf_error), so the statement
// throws or rejects with that very error, class and `code` included, as better-sqlite3 does.
#include <vector>

#include "common.h"

namespace scnode {

struct FuncData {
  EnvState* st = nullptr;  // the environment outlives its functions (FreeFuncs)
  Db* db = nullptr;        // callbacks run only while the connection is open
  std::string name;
  bool safe_ints = false;
  napi_ref fn = nullptr;     // scalar
  napi_ref start = nullptr;  // aggregate: returns the initial accumulator
  napi_ref step = nullptr;
  napi_ref result = nullptr;   // optional
  napi_ref inverse = nullptr;  // window functions only
  Tally tally{kLiveFuncs};

  void Unref(napi_env env) {
    for (napi_ref* r : {&fn, &start, &step, &result, &inverse}) {
      if (*r) napi_delete_reference(env, *r);
      *r = nullptr;
    }
  }
};

namespace {

void DestroyFunc(void* p) {  // on the owner (JS) thread, per the trampoline's contract
  FuncData* f = static_cast<FuncData*>(p);
  f->Unref(f->st->env);
  f->st->funcs.erase(f);
  delete f;
}

napi_value ArgToJs(napi_env env, safeconc_ctx* ctx, int i, bool safe_ints) {
  napi_value r = nullptr;
  switch (g_api->arg_type(ctx, i)) {
    case SQLITE_INTEGER:
      return Int64ToJs(env, g_api->arg_int64(ctx, i), safe_ints);
    case SQLITE_FLOAT:
      napi_create_double(env, g_api->arg_double(ctx, i), &r);
      break;
    case SQLITE_TEXT: {
      const unsigned char* p = g_api->arg_text(ctx, i);
      const int n = g_api->arg_bytes(ctx, i);
      napi_create_string_utf8(env, p ? reinterpret_cast<const char*>(p) : "",
                              p ? static_cast<size_t>(n) : 0, &r);
      break;
    }
    case SQLITE_BLOB: {
      const void* p = g_api->arg_blob(ctx, i);
      const int n = g_api->arg_bytes(ctx, i);
      napi_create_buffer_copy(env, p && n > 0 ? static_cast<size_t>(n) : 0, p ? p : "", nullptr,
                              &r);
      break;
    }
    default:
      napi_get_null(env, &r);
  }
  return r;
}

void SetResult(napi_env env, safeconc_ctx* ctx, napi_value r, const std::string& fname) {
  Val v;
  std::string why;
  if (!ToVal(env, r, &v, &why)) {
    g_api->result_error(ctx, ("User-defined function " + fname + "() returned " + why).c_str(), 0);
    return;
  }
  switch (v.type) {
    case SQLITE_INTEGER:
      g_api->result_int64(ctx, v.i);
      break;
    case SQLITE_FLOAT:
      g_api->result_double(ctx, v.d);
      break;
    case SQLITE_TEXT:
      g_api->result_text(ctx, v.bytes.data(), static_cast<int>(v.bytes.size()));
      break;
    case SQLITE_BLOB:
      g_api->result_blob(ctx, v.bytes.data(), static_cast<int>(v.bytes.size()));
      break;
    default:
      g_api->result_null(ctx);
  }
}

napi_value RefValue(napi_env env, napi_ref r) {
  napi_value v = nullptr;
  if (r) napi_get_reference_value(env, r, &v);
  if (!v) napi_get_undefined(env, &v);
  return v;
}

// Calls fn(args...). On a JS exception: keeps it as the connection's UDF error, reports its
// message as the statement's error and returns false.
bool CallJs(FuncData* f, safeconc_ctx* ctx, napi_value fn, size_t argc, const napi_value* argv,
            napi_value* out) {
  napi_env env = f->st->env;
  napi_value global;
  napi_get_global(env, &global);
  if (napi_call_function(env, global, fn, argc, argv, out) == napi_ok) return true;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  std::string msg = "JavaScript could not run the function (its environment is shutting down)";
  if (pending) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    msg = ExceptionMessage(env, exc);
    napi_ref* slot = UdfErrorSlot(f->db);
    if (*slot) napi_delete_reference(env, *slot);
    *slot = nullptr;
    napi_create_reference(env, exc, 1, slot);
  }
  g_api->result_error(ctx, msg.c_str(), 0);
  return false;
}

void Scalar(safeconc_ctx* ctx) {
  FuncData* f = static_cast<FuncData*>(g_api->user_data(ctx));
  napi_env env = f->st->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  const int argc = g_api->argc(ctx);
  napi_value stack[8];
  std::vector<napi_value> heap;
  napi_value* argv = stack;
  if (argc > 8) {
    heap.resize(static_cast<size_t>(argc));
    argv = heap.data();
  }
  for (int i = 0; i < argc; ++i) argv[i] = ArgToJs(env, ctx, i, f->safe_ints);
  napi_value r;
  if (CallJs(f, ctx, RefValue(env, f->fn), static_cast<size_t>(argc), argv, &r)) {
    SetResult(env, ctx, r, f->name);
  }
  napi_close_handle_scope(env, scope);
}

// Aggregates keep a group's accumulator in a holder object ({ v: acc, failed }: N-API 8 has
// no references to primitives) whose napi_ref is the group's state slot.
napi_value Holder(napi_env env, FuncData* f, safeconc_ctx* ctx, void** slot) {
  if (*slot) return RefValue(env, static_cast<napi_ref>(*slot));
  napi_value acc;
  if (!CallJs(f, ctx, RefValue(env, f->start), 0, nullptr, &acc)) return nullptr;
  napi_value holder;
  napi_create_object(env, &holder);
  napi_set_named_property(env, holder, "v", acc);
  napi_ref r = nullptr;
  napi_create_reference(env, holder, 1, &r);
  *slot = r;
  return holder;
}

bool Failed(napi_env env, napi_value holder) {
  napi_value flag;
  bool failed = false;
  if (napi_get_named_property(env, holder, "failed", &flag) == napi_ok) {
    napi_get_value_bool(env, flag, &failed);  // unset (undefined): stays false
  }
  return failed;
}

// step and inverse: fn(acc, ...args) returns the next accumulator (undefined: unchanged).
void Accumulate(safeconc_ctx* ctx, bool inverse) {
  FuncData* f = static_cast<FuncData*>(g_api->user_data(ctx));
  napi_env env = f->st->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  void** slot = g_api->aggregate_state(ctx);
  napi_value holder = Holder(env, f, ctx, slot);
  if (holder != nullptr && !Failed(env, holder)) {
    const int argc = g_api->argc(ctx);
    std::vector<napi_value> argv(static_cast<size_t>(argc) + 1);
    napi_get_named_property(env, holder, "v", &argv[0]);
    for (int i = 0; i < argc; ++i) {
      argv[static_cast<size_t>(i) + 1] = ArgToJs(env, ctx, i, f->safe_ints);
    }
    napi_value next;
    if (CallJs(f, ctx, RefValue(env, inverse ? f->inverse : f->step), argv.size(), argv.data(),
               &next)) {
      napi_valuetype t;
      napi_typeof(env, next, &t);
      if (t != napi_undefined) napi_set_named_property(env, holder, "v", next);
    } else {
      // The statement fails; SQLite still calls final to free the group: result() must
      // not run then.
      napi_value yes;
      napi_get_boolean(env, true, &yes);
      napi_set_named_property(env, holder, "failed", yes);
    }
  }
  napi_close_handle_scope(env, scope);
}

void Step(safeconc_ctx* ctx) { Accumulate(ctx, false); }
void Inverse(safeconc_ctx* ctx) { Accumulate(ctx, true); }

// final (frees the group) and value (a window's current result, the group lives on).
void Result(safeconc_ctx* ctx, bool final) {
  FuncData* f = static_cast<FuncData*>(g_api->user_data(ctx));
  napi_env env = f->st->env;
  void** slot = g_api->aggregate_state(ctx);
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value holder = Holder(env, f, ctx, slot);  // no rows: the start value
  if (final && *slot) {
    napi_delete_reference(env, static_cast<napi_ref>(*slot));
    *slot = nullptr;
  }
  if (holder != nullptr && !Failed(env, holder)) {
    napi_value acc, r;
    napi_get_named_property(env, holder, "v", &acc);
    r = acc;
    if (f->result == nullptr || CallJs(f, ctx, RefValue(env, f->result), 1, &acc, &r)) {
      SetResult(env, ctx, r, f->name);
    }
  }
  napi_close_handle_scope(env, scope);
}

void Final(safeconc_ctx* ctx) { Result(ctx, true); }
void Value(safeconc_ctx* ctx) { Result(ctx, false); }

bool IsFunction(napi_env env, napi_value v) {
  napi_valuetype t = napi_undefined;
  return napi_typeof(env, v, &t) == napi_ok && t == napi_function;
}

// db._function(name, nArg, flags, safeInts, fn)
// db._aggregate(name, nArg, flags, safeInts, start, step, result, inverse)
napi_value Register(napi_env env, napi_callback_info info, bool aggregate) {
  try {
    size_t argc = 8;
    napi_value argv[8], self;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
    Db* d = Unwrap<Db>(env, self);
    if (!d) return ThrowType(env, "not a Database");
    const char* what = aggregate ? "db.aggregate()" : "db.function()";
    if (!d->Open()) return ThrowType(env, "The database connection is not open");
    if (InUdfOf(d)) {
      return ThrowType(env, std::string(what) +
                                " was called from inside a user-defined function "
                                "of this database; register it before the query");
    }
    if (d->Busy()) {
      return ThrowType(env, std::string(what) +
                                ": the database is busy with async queries; "
                                "await them first");
    }
    if (argc < (aggregate ? 8u : 5u)) return ThrowType(env, "bad arguments");
    auto f = std::make_unique<FuncData>();
    f->st = d->st.get();
    f->db = d;
    int32_t nArg = -1, flags = 0;
    bool safe = false;
    if (!GetString(env, argv[0], &f->name)) return ThrowType(env, "the name must be a string");
    napi_get_value_int32(env, argv[1], &nArg);
    napi_get_value_int32(env, argv[2], &flags);
    napi_get_value_bool(env, argv[3], &safe);
    f->safe_ints = safe;
    if (!aggregate) {
      NAPI_OK(napi_create_reference(env, argv[4], 1, &f->fn));
    } else {
      NAPI_OK(napi_create_reference(env, argv[4], 1, &f->start));
      NAPI_OK(napi_create_reference(env, argv[5], 1, &f->step));
      if (IsFunction(env, argv[6])) NAPI_OK(napi_create_reference(env, argv[6], 1, &f->result));
      if (IsFunction(env, argv[7])) NAPI_OK(napi_create_reference(env, argv[7], 1, &f->inverse));
    }
    // A failed create_* never runs DestroyFunc (safeconc.h): the data is then still ours.
    FuncData* raw = f.release();
    d->st->funcs.insert(raw);
    int rc;
    if (!aggregate) {
      rc = g_api->create_function(d->db, raw->name.c_str(), nArg, flags, d->st->owner, raw, Scalar,
                                  DestroyFunc);
    } else if (raw->inverse) {
      rc = g_api->create_window(d->db, raw->name.c_str(), nArg, flags, d->st->owner, raw, Step,
                                Final, Value, Inverse, DestroyFunc);
    } else {
      rc = g_api->create_aggregate(d->db, raw->name.c_str(), nArg, flags, d->st->owner, raw, Step,
                                   Final, DestroyFunc);
    }
    if (rc != SQLITE_OK) {
      const std::string msg = "cannot register " + raw->name + "(): " + g_api->errmsg();
      d->st->funcs.erase(raw);
      raw->Unref(env);
      delete raw;
      return ThrowSqlite(env, msg, rc);
    }
    return nullptr;
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

}  // namespace

napi_value DbFunction(napi_env env, napi_callback_info info) { return Register(env, info, false); }
napi_value DbAggregate(napi_env env, napi_callback_info info) { return Register(env, info, true); }

// The owner is closed: the trampoline no longer runs the destructors of the functions still
// registered, so the environment frees them.
void FreeFuncs(EnvState* st) {
  for (FuncData* f : st->funcs) {
    f->Unref(st->env);
    delete f;
  }
  st->funcs.clear();
}

}  // namespace scnode
