// errors.cc - errors as users of better-sqlite3 know them: SqliteError with `code`, the name
// of SQLite's extended result code (SQLITE_CONSTRAINT_PRIMARYKEY); TypeError and RangeError
// for misuse. The SqliteError class is defined in JS (lib/sqlite-error.js) and handed to the
// addon by native.setup().
#include <cstring>

#include "common.h"

namespace scnode {

namespace {
struct CodeNameEntry {
  int code;
  const char* name;
};
// Every primary and extended result code of SQLite 3.40's sqlite3.h, by value (so a newer
// SQLite's codes read as their primary name plus the number instead of nothing).
const CodeNameEntry kCodeNames[] = {
    {0, "SQLITE_OK"},
    {1, "SQLITE_ERROR"},
    {2, "SQLITE_INTERNAL"},
    {3, "SQLITE_PERM"},
    {4, "SQLITE_ABORT"},
    {5, "SQLITE_BUSY"},
    {6, "SQLITE_LOCKED"},
    {7, "SQLITE_NOMEM"},
    {8, "SQLITE_READONLY"},
    {9, "SQLITE_INTERRUPT"},
    {10, "SQLITE_IOERR"},
    {11, "SQLITE_CORRUPT"},
    {12, "SQLITE_NOTFOUND"},
    {13, "SQLITE_FULL"},
    {14, "SQLITE_CANTOPEN"},
    {15, "SQLITE_PROTOCOL"},
    {16, "SQLITE_EMPTY"},
    {17, "SQLITE_SCHEMA"},
    {18, "SQLITE_TOOBIG"},
    {19, "SQLITE_CONSTRAINT"},
    {20, "SQLITE_MISMATCH"},
    {21, "SQLITE_MISUSE"},
    {22, "SQLITE_NOLFS"},
    {23, "SQLITE_AUTH"},
    {24, "SQLITE_FORMAT"},
    {25, "SQLITE_RANGE"},
    {26, "SQLITE_NOTADB"},
    {27, "SQLITE_NOTICE"},
    {28, "SQLITE_WARNING"},
    {100, "SQLITE_ROW"},
    {101, "SQLITE_DONE"},
    {256, "SQLITE_OK_LOAD_PERMANENTLY"},
    {257, "SQLITE_ERROR_MISSING_COLLSEQ"},
    {261, "SQLITE_BUSY_RECOVERY"},
    {262, "SQLITE_LOCKED_SHAREDCACHE"},
    {264, "SQLITE_READONLY_RECOVERY"},
    {266, "SQLITE_IOERR_READ"},
    {267, "SQLITE_CORRUPT_VTAB"},
    {270, "SQLITE_CANTOPEN_NOTEMPDIR"},
    {275, "SQLITE_CONSTRAINT_CHECK"},
    {279, "SQLITE_AUTH_USER"},
    {283, "SQLITE_NOTICE_RECOVER_WAL"},
    {284, "SQLITE_WARNING_AUTOINDEX"},
    {512, "SQLITE_OK_SYMLINK"},
    {513, "SQLITE_ERROR_RETRY"},
    {516, "SQLITE_ABORT_ROLLBACK"},
    {517, "SQLITE_BUSY_SNAPSHOT"},
    {518, "SQLITE_LOCKED_VTAB"},
    {520, "SQLITE_READONLY_CANTLOCK"},
    {522, "SQLITE_IOERR_SHORT_READ"},
    {523, "SQLITE_CORRUPT_SEQUENCE"},
    {526, "SQLITE_CANTOPEN_ISDIR"},
    {531, "SQLITE_CONSTRAINT_COMMITHOOK"},
    {539, "SQLITE_NOTICE_RECOVER_ROLLBACK"},
    {769, "SQLITE_ERROR_SNAPSHOT"},
    {773, "SQLITE_BUSY_TIMEOUT"},
    {776, "SQLITE_READONLY_ROLLBACK"},
    {778, "SQLITE_IOERR_WRITE"},
    {779, "SQLITE_CORRUPT_INDEX"},
    {782, "SQLITE_CANTOPEN_FULLPATH"},
    {787, "SQLITE_CONSTRAINT_FOREIGNKEY"},
    {1032, "SQLITE_READONLY_DBMOVED"},
    {1034, "SQLITE_IOERR_FSYNC"},
    {1038, "SQLITE_CANTOPEN_CONVPATH"},
    {1043, "SQLITE_CONSTRAINT_FUNCTION"},
    {1288, "SQLITE_READONLY_CANTINIT"},
    {1290, "SQLITE_IOERR_DIR_FSYNC"},
    {1294, "SQLITE_CANTOPEN_DIRTYWAL"},
    {1299, "SQLITE_CONSTRAINT_NOTNULL"},
    {1544, "SQLITE_READONLY_DIRECTORY"},
    {1546, "SQLITE_IOERR_TRUNCATE"},
    {1550, "SQLITE_CANTOPEN_SYMLINK"},
    {1555, "SQLITE_CONSTRAINT_PRIMARYKEY"},
    {1802, "SQLITE_IOERR_FSTAT"},
    {1811, "SQLITE_CONSTRAINT_TRIGGER"},
    {2058, "SQLITE_IOERR_UNLOCK"},
    {2067, "SQLITE_CONSTRAINT_UNIQUE"},
    {2314, "SQLITE_IOERR_RDLOCK"},
    {2323, "SQLITE_CONSTRAINT_VTAB"},
    {2570, "SQLITE_IOERR_DELETE"},
    {2579, "SQLITE_CONSTRAINT_ROWID"},
    {2826, "SQLITE_IOERR_BLOCKED"},
    {2835, "SQLITE_CONSTRAINT_PINNED"},
    {3082, "SQLITE_IOERR_NOMEM"},
    {3091, "SQLITE_CONSTRAINT_DATATYPE"},
    {3338, "SQLITE_IOERR_ACCESS"},
    {3594, "SQLITE_IOERR_CHECKRESERVEDLOCK"},
    {3850, "SQLITE_IOERR_LOCK"},
    {4106, "SQLITE_IOERR_CLOSE"},
    {4362, "SQLITE_IOERR_DIR_CLOSE"},
    {4618, "SQLITE_IOERR_SHMOPEN"},
    {4874, "SQLITE_IOERR_SHMSIZE"},
    {5130, "SQLITE_IOERR_SHMLOCK"},
    {5386, "SQLITE_IOERR_SHMMAP"},
    {5642, "SQLITE_IOERR_SEEK"},
    {5898, "SQLITE_IOERR_DELETE_NOENT"},
    {6154, "SQLITE_IOERR_MMAP"},
    {6410, "SQLITE_IOERR_GETTEMPPATH"},
    {6666, "SQLITE_IOERR_CONVPATH"},
    {6922, "SQLITE_IOERR_VNODE"},
    {7178, "SQLITE_IOERR_AUTH"},
    {7434, "SQLITE_IOERR_BEGIN_ATOMIC"},
    {7690, "SQLITE_IOERR_COMMIT_ATOMIC"},
    {7946, "SQLITE_IOERR_ROLLBACK_ATOMIC"},
    {8202, "SQLITE_IOERR_DATA"},
    {8458, "SQLITE_IOERR_CORRUPTFS"},
};
}  // namespace

const char* CodeName(int rc) {
  for (const auto& e : kCodeNames) {
    if (e.code == rc) return e.name;
  }
  for (const auto& e : kCodeNames) {  // an extended code this table lacks: its primary name
    if (e.code == (rc & 0xff)) return e.name;
  }
  return "SQLITE_ERROR";
}

napi_value Pending(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    const napi_extended_error_info* info = nullptr;
    napi_get_last_error_info(env, &info);
    napi_throw_error(env, nullptr,
                     info && info->error_message ? info->error_message : "N-API call failed");
  }
  return nullptr;
}

napi_value ThrowError(napi_env env, const std::string& msg) {
  napi_throw_error(env, nullptr, msg.c_str());
  return nullptr;
}

napi_value ThrowType(napi_env env, const std::string& msg) {
  napi_throw_type_error(env, nullptr, msg.c_str());
  return nullptr;
}

napi_value ThrowRange(napi_env env, const std::string& msg) {
  napi_throw_range_error(env, nullptr, msg.c_str());
  return nullptr;
}

napi_value MakeSqliteError(napi_env env, const std::string& msg, int rc) {
  napi_value m = nullptr, code = nullptr, e = nullptr, ctor = nullptr;
  napi_create_string_utf8(env, msg.data(), msg.size(), &m);
  napi_create_string_utf8(env, CodeName(rc), NAPI_AUTO_LENGTH, &code);
  EnvState* st = State(env);
  if (st && st->sqlite_error && napi_get_reference_value(env, st->sqlite_error, &ctor) == napi_ok &&
      ctor) {
    napi_value argv[2] = {m, code};
    if (napi_new_instance(env, ctor, 2, argv, &e) == napi_ok) return e;
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
  }
  napi_create_error(env, code, m, &e);  // setup() not called: a plain Error with the code
  return e;
}

napi_value ThrowSqlite(napi_env env, const std::string& msg, int rc) {
  napi_throw(env, MakeSqliteError(env, msg, rc));
  return nullptr;
}

std::string ExceptionMessage(napi_env env, napi_value exc) {
  std::string msg;
  napi_valuetype t;
  if (napi_typeof(env, exc, &t) == napi_ok && t == napi_object) {
    napi_value m;
    bool has = false;
    if (napi_has_named_property(env, exc, "message", &has) == napi_ok && has &&
        napi_get_named_property(env, exc, "message", &m) == napi_ok) {
      napi_value s;
      if (napi_coerce_to_string(env, m, &s) == napi_ok && GetString(env, s, &msg)) return msg;
    }
  }
  napi_value s;
  if (napi_coerce_to_string(env, exc, &s) == napi_ok && GetString(env, s, &msg)) return msg;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
  }
  return "a JavaScript exception";
}

napi_value TakeUdfError(napi_env env, Db* d) {
  if (d->udf_error == nullptr) return nullptr;
  napi_value v = nullptr;
  napi_get_reference_value(env, d->udf_error, &v);
  napi_delete_reference(env, d->udf_error);
  d->udf_error = nullptr;
  return v;
}

void ClearUdfError(napi_env env, Db* d) {
  if (d->udf_error) napi_delete_reference(env, d->udf_error);
  d->udf_error = nullptr;
}

napi_value ThrowStatementError(napi_env env, Db* d, const std::string& msg, int rc) {
  napi_value e = TakeUdfError(env, d);
  napi_throw(env, e ? e : MakeSqliteError(env, msg, rc));
  return nullptr;
}

}  // namespace scnode
