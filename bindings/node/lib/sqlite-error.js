'use strict';
// The error of a failed SQLite call, as in better-sqlite3: `code` is the name of SQLite's
// extended result code ('SQLITE_CONSTRAINT_PRIMARYKEY', 'SQLITE_READONLY', ...).
class SqliteError extends Error {
  constructor(message, code) {
    if (typeof code !== 'string') throw new TypeError('Expected second argument to be a string');
    super(message);
    Object.defineProperty(this, 'message', { value: String(message), writable: true, configurable: true });
    this.code = code;
  }
}
Object.defineProperty(SqliteError.prototype, 'name', {
  value: 'SqliteError', writable: true, configurable: true, enumerable: false,
});

module.exports = SqliteError;
