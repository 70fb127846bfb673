/*
** safeconc.h - the C API of libsafeconc for host-language bindings.
**
** Problem: a binding runs sqlite3_step() on a worker thread (a thread pool, an async API),
** SQLite calls a user-defined function there, and the function's body lives in a runtime
** that may only be entered from its owner thread (a V8 isolate, a GUI loop, an interpreter
** without a GIL). libsafeconc runs such callbacks on their owner thread:
**
**   - An OWNER stands for one owner thread plus the binding's DISPATCH HOOK, a function the
**     library calls (on any thread) to hand the owner a task; the binding arranges for
**     safeconc_task_run(task) to be called on the owner thread exactly once
**     (uv_async_send, napi_call_threadsafe_function, a GUI post, ...). The built-in fd owner
**     needs no hook: its file descriptor becomes readable when tasks wait, and
**     owner_drain() runs them.
**   - Functions (scalar, aggregate, window) registered with an owner run directly when
**     SQLite calls them on the owner thread (no copy, no queue). On any other thread the
**     arguments are copied, the task is dispatched, the worker waits (bounded by the
**     connection's safeconc_call_timeout) and applies the result on its own thread.
**
** Reaching the API. The library is loaded with sqlite3_load_extension() like any
** extension; then one exported symbol returns a versioned table of function pointers:
**
**     #include <dlfcn.h>
**     #include "safeconc.h"
**     sqlite3_load_extension(db, "build/libsafeconc", 0, &err);            (1)
**     void* so = dlopen("build/libsafeconc.so", RTLD_NOW | RTLD_NOLOAD);   (2)
**     const safeconc_api_v1* api = (const safeconc_api_v1*)
**         ((safeconc_api_fn)dlsym(so, SAFECONC_API_SYMBOL))(1);            (3)
**     if (api == NULL) ... the library is older than version 1 of this table ...
**
** Errors. Every call returns an SQLite result code (SQLITE_OK on success); on failure
** api->errmsg() returns a message for the calling thread's last failed call. Calls before
** the extension is loaded, with a closed owner, or with bad arguments fail this way (mostly
** SQLITE_MISUSE); none crashes.
**
** Thread rules. owner_open/owner_open_fd bind the calling thread as the owner thread;
** owner_close and owner_drain must be called on it. task_run must be called on the owner
** thread of the task's owner. Everything else may be called on any thread.
*/
#ifndef SAFECONC_H
#define SAFECONC_H

#include <sqlite3.h>

#include "safeconc_version.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct safeconc_owner safeconc_owner; /* an owner thread and its dispatch hook */
typedef struct safeconc_task safeconc_task;   /* one callback waiting to run on its owner */
typedef struct safeconc_ctx safeconc_ctx;     /* what a host callback sees */

/* The binding's dispatch hook: arrange for task_run(task) to be called on the owner thread
** exactly once, then return 0. Return non-zero if that cannot happen (the loop is closing):
** the call then fails at once and the task is never run. Called on any thread, never with a
** library lock held. It must not wait for the task to run. */
typedef int (*safeconc_dispatch_fn)(void* hook_arg, safeconc_task* task);

/* Host callbacks. A scalar function gets one call per row; an aggregate step per row and
** final once per group; a window function also value and inverse. */
typedef void (*safeconc_callback_fn)(safeconc_ctx* ctx);
/* Destroys a function's user data. Always called on the owner thread (see owner_close). */
typedef void (*safeconc_destroy_fn)(void* user_data);

/* Flags for create_*: any of these SQLite flags, others are refused. */
#define SAFECONC_FUNCTION_FLAGS (SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY | SQLITE_INNOCUOUS)

typedef struct safeconc_api_v1 {
  int version; /* 1 */

  /* ---- Owners ---- */
  /* Binds the calling thread and a dispatch hook. */
  int (*owner_open)(safeconc_dispatch_fn hook, void* hook_arg, safeconc_owner** out);
  /* The built-in kind: binds the calling thread; tasks are signalled on an eventfd. */
  int (*owner_open_fd)(safeconc_owner** out);
  /* The fd owner's file descriptor (readable while tasks wait), or -1 for a hook owner. */
  int (*owner_fd)(safeconc_owner* owner);
  /* On the owner thread: runs up to max waiting tasks (all if max <= 0); returns how many
  ** ran, or a negative SQLite error code. */
  int (*owner_drain)(safeconc_owner* owner, int max);
  /* On the owner thread: fails the owner's pending and future calls with an error naming
  ** the owner, runs destructors of functions already deleted, and makes the handle
  ** unusable (later calls with it fail with SQLITE_MISUSE). Functions still registered
  ** with it keep failing cleanly; their user data's destructor is not run once the owner
  ** is closed (the runtime behind it may be gone): free such data in the host. It returns
  ** after any hook call in progress on another thread returned: from then on the hook and
  ** hook_arg are never used again, and the binding may free them. */
  int (*owner_close)(safeconc_owner* owner);
  /* On the owner thread: runs a task handed to the dispatch hook (exactly once). */
  void (*task_run)(safeconc_task* task);

  /* ---- Functions ---- */
  /* nArg: -1 for any number, else 0..127. flags: SAFECONC_FUNCTION_FLAGS. Replaces a
  ** function of the same name and nArg, as sqlite3_create_function does. On success the
  ** function owns user_data (destroy runs when SQLite drops it). On any failure (a bad
  ** argument, a closed owner, SQLite refusing it: SQLITE_BUSY while a statement uses the old
  ** function, out of memory) destroy is NOT called and user_data is still the caller's to
  ** free. (sqlite3_create_function_v2 itself does call its destructor on failure.) */
  int (*create_function)(sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* owner,
                         void* user_data, safeconc_callback_fn fn, safeconc_destroy_fn destroy);
  int (*create_aggregate)(sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* owner,
                          void* user_data, safeconc_callback_fn step, safeconc_callback_fn final,
                          safeconc_destroy_fn destroy);
  int (*create_window)(sqlite3* db, const char* name, int nArg, int flags, safeconc_owner* owner,
                       void* user_data, safeconc_callback_fn step, safeconc_callback_fn final,
                       safeconc_callback_fn value, safeconc_callback_fn inverse,
                       safeconc_destroy_fn destroy);
  /* Non-zero while a host callback of a function of db runs (on its owner thread): a
  ** binding refuses close() or re-entry into the running statement then. */
  int (*in_callback)(sqlite3* db);
  /* The calling thread's last error message ("" if none). */
  const char* (*errmsg)(void);

  /* ---- Inside a callback (ctx is valid only during the call) ---- */
  int (*argc)(safeconc_ctx* ctx);
  int (*arg_type)(safeconc_ctx* ctx, int i); /* SQLITE_INTEGER, _FLOAT, _TEXT, _BLOB, _NULL */
  sqlite3_int64 (*arg_int64)(safeconc_ctx* ctx, int i);
  double (*arg_double)(safeconc_ctx* ctx, int i);
  const unsigned char* (*arg_text)(safeconc_ctx* ctx, int i); /* UTF-8, NUL-terminated */
  const void* (*arg_blob)(safeconc_ctx* ctx, int i);
  int (*arg_bytes)(safeconc_ctx* ctx, int i);
  void* (*user_data)(safeconc_ctx* ctx);
  /* Aggregates and windows: a slot for the host's state of the current group (NULL at the
  ** group's first call). The host frees what it stored there in final. */
  void** (*aggregate_state)(safeconc_ctx* ctx);
  void (*result_null)(safeconc_ctx* ctx);
  void (*result_int64)(safeconc_ctx* ctx, sqlite3_int64 v);
  void (*result_double)(safeconc_ctx* ctx, double v);
  void (*result_text)(safeconc_ctx* ctx, const char* text, int bytes); /* bytes<0: strlen */
  void (*result_blob)(safeconc_ctx* ctx, const void* data, int bytes);
  void (*result_zeroblob)(safeconc_ctx* ctx, int bytes);
  /* The statement fails with this message and code (SQLITE_ERROR if code is 0). */
  void (*result_error)(safeconc_ctx* ctx, const char* message, int code);
  void (*result_arg)(safeconc_ctx* ctx, int i); /* a copy of argument i */
} safeconc_api_v1;

/* The one exported symbol: the API table of the given version, or NULL if this library
** does not provide it. */
#define SAFECONC_API_SYMBOL "safeconc_api"
typedef const void* (*safeconc_api_fn)(int version);
const void* safeconc_api(int version);

#ifdef __cplusplus
}
#endif

#endif /* SAFECONC_H */
