// lookahead.cc - what the connection making a lock call is about to do, read through SQLite's
// own API on that connection (never another: see Caller() in shim.h): whether a statement
// running on it will write, and whether SQLite will retry a refused write start.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <strings.h>

#include <cstring>

#include "vfs/lookahead.h"
#include "vfs/shim.h"

namespace safeconc {
namespace {

// Skips blanks and SQL comments.
const char* SkipSpace(const char* z) {
  for (;;) {
    while (*z == ' ' || *z == '\t' || *z == '\n' || *z == '\r' || *z == '\f') ++z;
    if (z[0] == '-' && z[1] == '-') {
      while (*z && *z != '\n') ++z;
    } else if (z[0] == '/' && z[1] == '*') {
      const char* end = std::strstr(z + 2, "*/");
      z = end ? end + 2 : z + std::strlen(z);
    } else {
      return z;
    }
  }
}

bool Keyword(const char** z, const char* word) {
  const size_t n = std::strlen(word);
  if (strncasecmp(*z, word, n) != 0) return false;
  const char c = (*z)[n];
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') {
    return false;
  }
  *z = SkipSpace(*z + n);
  return true;
}

// BEGIN IMMEDIATE / BEGIN EXCLUSIVE: sqlite3_stmt_readonly() calls every transaction-control
// statement read-only, but these take the write lock right after the read lock.
bool BeginsWriteTransaction(const char* sql) {
  if (sql == nullptr) return false;
  const char* z = SkipSpace(sql);
  return Keyword(&z, "BEGIN") && (Keyword(&z, "IMMEDIATE") || Keyword(&z, "EXCLUSIVE"));
}

// The transaction state of the connection's schema that p is the file of; the highest of all
// its schemas if p's cannot be told (then "will not retry" errs on the safe side below).
int TxnStateOf(ShimFile* p, sqlite3* db) {
  for (int i = 0;; ++i) {
    const char* schema = sqlite3_db_name(db, i);
    if (schema == nullptr) break;
    const char* file = sqlite3_db_filename(db, schema);
    if (file == p->path || (file != nullptr && std::strcmp(file, p->path) == 0)) {
      return sqlite3_txn_state(db, schema);
    }
  }
  return sqlite3_txn_state(db, nullptr);
}

}  // namespace

// Will the lock period that starts now write? True when a statement running on the
// connection writes: then the write lock is asked for right after the read lock, and waiting
// for the turn here (a safe point) spares the refusal, the dropped locks and the retry.
// Read-then-write transactions are not affected: their write comes in a later statement.
bool StatementWillWrite(sqlite3* db) {
  for (sqlite3_stmt* s = sqlite3_next_stmt(db, nullptr); s != nullptr;
       s = sqlite3_next_stmt(db, s)) {
    if (!sqlite3_stmt_busy(s)) continue;
    if (!sqlite3_stmt_readonly(s) || BeginsWriteTransaction(sqlite3_sql(s))) return true;
  }
  return false;
}

// Will SQLite retry this refused write start through the busy handler? Its btree retries
// only while no transaction of the schema is open (btree.c: inTransaction == TRANS_NONE): an
// autocommit write, BEGIN IMMEDIATE, a deferred transaction whose first statement writes.
// Not a write made while a read transaction is open, in an explicit transaction or through a
// SELECT cursor of the same connection still being stepped (the btree is in TRANS_READ even
// with autocommit on). During the lock call the state is still the one before it. Unknown
// caller (shared cache): treated as not retried.
bool WillRetry(ShimFile* p) {
  sqlite3* db = Caller(p);
  return db != nullptr && TxnStateOf(p, db) == SQLITE_TXN_NONE;
}

}  // namespace safeconc
