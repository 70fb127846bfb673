// extension.cc - the entry point of libsafeconc.
//
//   sqlite3 shell:   .load ./build/libsafeconc
//   any binding:     sqlite3_load_extension(db, "build/libsafeconc", 0, &err)
//
// sqlite3_safeconc_init registers the `safeconc` VFS (once per process, as the default),
// an auto-extension that gives every later connection the per-connection parts, and those
// parts on the loading connection too. It returns SQLITE_OK_LOAD_PERMANENTLY: the VFS and
// the auto-extension must outlive the loading connection. Loading again is harmless.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include <mutex>
#include <string>

#include "ext/internal.h"
#include "vfs/locking.h"
#include "vfs/shim.h"

namespace safeconc {

int ConnectionInit(sqlite3* db, char** err, const sqlite3_api_routines* /*api*/) {
  int rc = RegisterSqlFunctions(db);
  if (rc != SQLITE_OK && err != nullptr) {
    *err = sqlite3_mprintf("safeconc: could not register SQL functions: %s", sqlite3_errstr(rc));
    return rc;
  }
  // Busy handling is enforced on every connection that goes through safeconc: one that never
  // sets a handler still waits (up to safeconc_timeout), woken on release. A binding that
  // sets its own timeout later replaces this handler and keeps its timeout; one that clears
  // it gets this handler back at its first refused lock (see vfs/busy.cc).
  ForgetConnection(db);
  if (ShimFileOf(db) != nullptr) sqlite3_busy_handler(db, BusyHandler, db);
  return SQLITE_OK;
}

namespace {

// The auto-extension callback, with the signature sqlite3_auto_extension expects.
int AutoInit(sqlite3* db, char** err, const sqlite3_api_routines* api) {
  return ConnectionInit(db, err, api);
}

std::once_flag g_api_once;

}  // namespace
}  // namespace safeconc

extern "C" __attribute__((visibility("default"))) int sqlite3_safeconc_init(
    sqlite3* db, char** pzErrMsg, const sqlite3_api_routines* pApi) {
  // The routine table is the same on every load; set it once so concurrent loads from
  // several threads do not race on the pointer.
  std::call_once(safeconc::g_api_once, [pApi] {
    (void)pApi;  // unused when compiled with SQLITE_CORE (unit tests)
    SQLITE_EXTENSION_INIT2(pApi);
  });
  try {
    std::string why;
    int rc = safeconc::RegisterVfs(&why);
    if (rc != SQLITE_OK) {
      if (pzErrMsg)
        *pzErrMsg = sqlite3_mprintf("safeconc: could not register the VFS: %s", why.c_str());
      return rc;
    }
    if (!safeconc::VfsOwnedByThisCopy()) {
      // Another copy of libsafeconc (another path) owns the VFS; its auto-extension already
      // serves later connections with SQL functions that see the VFS's state. Ours would
      // override them with functions that see this copy's empty state.
      return SQLITE_OK_LOAD_PERMANENTLY;
    }
    rc = sqlite3_auto_extension(reinterpret_cast<void (*)(void)>(safeconc::AutoInit));
    if (rc != SQLITE_OK) {
      if (pzErrMsg) {
        *pzErrMsg = sqlite3_mprintf("safeconc: could not register the auto-extension: %s",
                                    sqlite3_errstr(rc));
      }
      return rc;
    }
    rc = safeconc::ConnectionInit(db, pzErrMsg, pApi);
    return rc == SQLITE_OK ? SQLITE_OK_LOAD_PERMANENTLY : rc;
  } catch (...) {
    if (pzErrMsg) *pzErrMsg = sqlite3_mprintf("safeconc: out of memory while loading");
    return SQLITE_NOMEM;
  }
}
