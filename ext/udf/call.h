// call.h - registered functions (Func), what a host callback sees (Ctx), and registration.
// call.cc holds the functions SQLite calls (xFunc, xStep, xFinal, xValue, xInverse,
// xDestroy): the direct path on the owner thread, and the dispatched path that turns a call
// on any other thread into a Task and waits for it.
#ifndef SAFECONC_EXT_UDF_CALL_H
#define SAFECONC_EXT_UDF_CALL_H

#include <sqlite3ext.h>

#include <memory>
#include <string>

#include "ext/udf/task.h"
#include "safeconc.h"

namespace safeconc {

// A registered function. Constant after registration; shared (shared_ptr) by SQLite's user
// data for it and by every task in flight, so it outlives a replaced or deleted function.
struct Func {
  std::string name;
  sqlite3* db = nullptr;  // the connection it is registered on
  std::shared_ptr<Owner> owner;
  void* user_data = nullptr;
  safeconc_callback_fn fn = nullptr;  // scalar
  safeconc_callback_fn step = nullptr, final = nullptr, value = nullptr, inverse = nullptr;
  safeconc_destroy_fn destroy = nullptr;
};

// What a host callback sees (safeconc_ctx). Lives on the stack of whoever runs the callback.
struct Ctx {
  Func* func = nullptr;
  CallKind kind = CallKind::kScalar;
  // Direct path: SQLite's own context and values.
  sqlite3_context* sctx = nullptr;
  sqlite3_value** argv = nullptr;
  // Dispatched path: the task's copies.
  Task* task = nullptr;
  int argc = 0;
  void** agg_slot = nullptr;
};

}  // namespace safeconc

// The opaque C type is this.
struct safeconc_ctx : safeconc::Ctx {};

namespace safeconc {

// Runs f's host callback of that kind (not kDestroy) with context c.
void Invoke(Func* f, CallKind kind, safeconc_ctx* c);

// Registration. Returns an SQLite code; *why on failure.
int CreateFunction(sqlite3* db, const char* name, int nArg, int flags,
                   const std::shared_ptr<Owner>& owner, void* user_data, safeconc_callback_fn fn,
                   safeconc_callback_fn step, safeconc_callback_fn final,
                   safeconc_callback_fn value, safeconc_callback_fn inverse,
                   safeconc_destroy_fn destroy, std::string* why);

}  // namespace safeconc

#endif  // SAFECONC_EXT_UDF_CALL_H
