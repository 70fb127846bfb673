// values.cc - SQLite values <-> JS values, and the copies that cross threads.
//
// JS -> SQL: numbers that are safe integers bind as INTEGER, other numbers as REAL; BigInt
// as INTEGER (it must fit in 64 bits); booleans as 0/1; strings as TEXT; Buffers and typed
// arrays as BLOB; null and undefined as NULL.
// SQL -> JS: INTEGER as a number when it is a safe integer (|v| <= 2^53 - 1), else a BigInt
// (never a rounded number); with safeIntegers every INTEGER is a BigInt. REAL as a number,
// TEXT as a string, BLOB as a Buffer, NULL as null.
#include <cmath>
#include <cstring>

#include "common.h"

namespace scnode {

namespace {
constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER
}

bool GetString(napi_env env, napi_value v, std::string* out) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, nullptr, 0, &n) != napi_ok) return false;
  out->resize(n + 1);
  if (napi_get_value_string_utf8(env, v, &(*out)[0], n + 1, &n) != napi_ok) return false;
  out->resize(n);
  return true;
}

bool ToVal(napi_env env, napi_value v, Val* out, std::string* why) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return *why = "cannot inspect a value", false;
  switch (t) {
    case napi_undefined:
    case napi_null:
      out->type = SQLITE_NULL;
      return true;
    case napi_boolean: {
      bool b = false;
      napi_get_value_bool(env, v, &b);
      out->type = SQLITE_INTEGER;
      out->i = b ? 1 : 0;
      return true;
    }
    case napi_number: {
      double d = 0;
      napi_get_value_double(env, v, &d);
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= kMaxSafe) {
        out->type = SQLITE_INTEGER;
        out->i = static_cast<int64_t>(d);
      } else {
        out->type = SQLITE_FLOAT;
        out->d = d;
      }
      return true;
    }
    case napi_bigint: {
      bool lossless = false;
      int64_t i = 0;
      napi_get_value_bigint_int64(env, v, &i, &lossless);
      if (!lossless) return *why = "a BigInt outside the 64-bit integer range", false;
      out->type = SQLITE_INTEGER;
      out->i = i;
      return true;
    }
    case napi_string:
      out->type = SQLITE_TEXT;
      return GetString(env, v, &out->bytes) || (*why = "cannot read a string", false);
    case napi_object: {
      bool is = false;
      void* data = nullptr;
      size_t len = 0;
      if (napi_is_buffer(env, v, &is) == napi_ok && is) {
        napi_get_buffer_info(env, v, &data, &len);
      } else if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
        napi_typedarray_type tt;
        size_t count = 0, offset = 0;
        napi_value ab, bl;
        napi_get_typedarray_info(env, v, &tt, &count, &data, &ab, &offset);
        uint32_t bytes = 0;
        napi_get_named_property(env, v, "byteLength", &bl);
        napi_get_value_uint32(env, bl, &bytes);
        len = bytes;
      } else {
        return *why = "an object (only Buffers and typed arrays bind, as BLOB)", false;
      }
      out->type = SQLITE_BLOB;
      out->bytes.assign(static_cast<const char*>(data), len);
      return true;
    }
    default:
      return *why = "a value of an unsupported type (function or symbol)", false;
  }
}

napi_value Int64ToJs(napi_env env, int64_t v, bool safe_ints) {
  napi_value r = nullptr;
  if (!safe_ints && v >= -static_cast<int64_t>(kMaxSafe) && v <= static_cast<int64_t>(kMaxSafe)) {
    napi_create_double(env, static_cast<double>(v), &r);
  } else {
    napi_create_bigint_int64(env, v, &r);
  }
  return r;
}

napi_value ValToJs(napi_env env, const Val& v, bool safe_ints) {
  napi_value r = nullptr;
  switch (v.type) {
    case SQLITE_INTEGER:
      return Int64ToJs(env, v.i, safe_ints);
    case SQLITE_FLOAT:
      napi_create_double(env, v.d, &r);
      break;
    case SQLITE_TEXT:
      napi_create_string_utf8(env, v.bytes.data(), v.bytes.size(), &r);
      break;
    case SQLITE_BLOB:
      napi_create_buffer_copy(env, v.bytes.size(), v.bytes.data(), nullptr, &r);
      break;
    default:
      napi_get_null(env, &r);
  }
  return r;
}

napi_value ColumnToJs(napi_env env, sqlite3_stmt* st, int c, bool safe_ints) {
  napi_value r = nullptr;
  switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER:
      return Int64ToJs(env, sqlite3_column_int64(st, c), safe_ints);
    case SQLITE_FLOAT:
      napi_create_double(env, sqlite3_column_double(st, c), &r);
      break;
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_column_text(st, c);
      napi_create_string_utf8(env, reinterpret_cast<const char*>(p),
                              static_cast<size_t>(sqlite3_column_bytes(st, c)), &r);
      break;
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_column_blob(st, c);
      const size_t n = static_cast<size_t>(sqlite3_column_bytes(st, c));
      napi_create_buffer_copy(env, n, n ? p : "", nullptr, &r);
      break;
    }
    default:
      napi_get_null(env, &r);
  }
  return r;
}

void ValFromColumn(sqlite3_stmt* st, int c, Val* v) {
  v->type = sqlite3_column_type(st, c);
  switch (v->type) {
    case SQLITE_INTEGER:
      v->i = sqlite3_column_int64(st, c);
      break;
    case SQLITE_FLOAT:
      v->d = sqlite3_column_double(st, c);
      break;
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_column_text(st, c);
      v->bytes.assign(reinterpret_cast<const char*>(p),
                      static_cast<size_t>(sqlite3_column_bytes(st, c)));
      break;
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_column_blob(st, c);
      const int n = sqlite3_column_bytes(st, c);
      if (n > 0) v->bytes.assign(static_cast<const char*>(p), static_cast<size_t>(n));
      break;
    }
    default:
      break;
  }
}

int BindVal(sqlite3_stmt* st, int i, const Val& v) {
  switch (v.type) {
    case SQLITE_INTEGER:
      return sqlite3_bind_int64(st, i, v.i);
    case SQLITE_FLOAT:
      return sqlite3_bind_double(st, i, v.d);
    case SQLITE_TEXT:
      return sqlite3_bind_text64(st, i, v.bytes.data(), v.bytes.size(), SQLITE_TRANSIENT,
                                 SQLITE_UTF8);
    case SQLITE_BLOB:
      return sqlite3_bind_blob64(st, i, v.bytes.data(), v.bytes.size(), SQLITE_TRANSIENT);
    default:
      return sqlite3_bind_null(st, i);
  }
}

}  // namespace scnode
