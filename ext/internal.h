// internal.h - what the extension's parts share. Not a public header: bindings include
// include/safeconc.h only. Unit tests include this to reach internals.
#ifndef SAFECONC_EXT_INTERNAL_H
#define SAFECONC_EXT_INTERNAL_H

#include <sqlite3ext.h>

namespace safeconc {

// Registers the SQL functions on one connection. Returns an SQLite code.
int RegisterSqlFunctions(sqlite3* db);

// The per-connection part of the extension: run for the loading connection and, as an
// auto-extension, at the end of every later open. Returns SQLITE_OK or an error code with
// *err set (sqlite3_malloc'd).
int ConnectionInit(sqlite3* db, char** err, const sqlite3_api_routines* api);

// The versioned API table behind the exported safeconc_api (ext/api.cc): this copy's, or that
// of the copy of the library that owns the VFS; null for a version not provided.
const void* ApiTable(int version);

}  // namespace safeconc

#endif  // SAFECONC_EXT_INTERNAL_H
