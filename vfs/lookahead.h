// lookahead.h - what the calling connection is about to do (lookahead.cc), for the lock paths.
// Both must be called from inside a VFS method of `p` with Caller(p) known, or they answer
// for an unknown caller (shared cache) as documented below.
#ifndef SAFECONC_VFS_LOOKAHEAD_H
#define SAFECONC_VFS_LOOKAHEAD_H

#include <sqlite3.h>

namespace safeconc {

struct ShimFile;

// Will the lock period that starts now write? True when a statement running on `db` writes
// (or is BEGIN IMMEDIATE/EXCLUSIVE).
bool StatementWillWrite(sqlite3* db);

// Will SQLite retry a refused write start of p through the busy handler? False for an
// unknown caller (shared cache).
bool WillRetry(ShimFile* p);

}  // namespace safeconc

#endif  // SAFECONC_VFS_LOOKAHEAD_H
