// udf.h - the UDF trampoline table: the model and the rules its parts share, and the one
// header ext/api.cc and ext/sql_functions.cc include. The C API (include/safeconc.h) is a
// thin layer over it (ext/api.cc). The parts, one concern each:
//   task.{h,cc}          Task, copied values, the pool, the hook handles
//   owner.{h,cc}         Owner: dispatch, drain, close; running a task on the owner thread
//   call.{h,cc}          Func, Ctx; the functions SQLite calls (direct and dispatched), create
//   thread_state.{h,cc}  the calling thread's id, direct-call counter and running callbacks
//   stats.{h,cc}         the "udf" object of safeconc_stats()
//
// Model. An Owner is one owner thread plus a way to hand it tasks (the binding's hook, or an
// eventfd and a queue). A Func is one registered function: host callbacks, user data, its
// owner. When SQLite calls a Func on the owner thread, the callback runs directly on
// SQLite's own context and values. On another thread, the call becomes a Task: arguments
// copied into it, dispatched to the owner, the worker parked on the task until the owner
// ran it or the connection's safeconc_call_timeout passed; then the worker applies the
// copied result with sqlite3_result_*.
//
// Task life cycle and hand-over protocols: task.h.
//
// Mutex rules (every one a base/sync.h Mutex; what each guards is SC_GUARDED_BY or
// SC_REQUIRES where it is declared):
//   Owner::mu_      an owner's queue, its tasks handed to the hook, its hook calls running
//   Task::mu        a task's state transitions (the data is handed over by protocol, task.h)
//   g_pool_mu       the task pool (task.cc)
//   g_handles_mu    the hook-handle table and its counter (task.cc)
//   g_stats_mu      the dispatch-latency histogram (stats.cc)
//   g_direct_mu     the list of per-thread direct-call counters, exited threads' total (stats.cc)
//   g_owners_mu     the set of owner handles and each handle's owner (ext/api.cc)
// Lock order: none; every one is a leaf (no mutex is taken while another is held). No mutex
// is held while a host callback, a dispatch hook or SQLite runs.
#ifndef SAFECONC_EXT_UDF_UDF_H
#define SAFECONC_EXT_UDF_UDF_H

#include "ext/udf/call.h"
#include "ext/udf/owner.h"
#include "ext/udf/stats.h"
#include "ext/udf/task.h"
#include "ext/udf/thread_state.h"

#endif  // SAFECONC_EXT_UDF_UDF_H
