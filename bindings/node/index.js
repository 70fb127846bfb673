'use strict';
// safeconc-sqlite: better-sqlite3's API with async twins whose JavaScript UDFs run on the JS
// thread (libsafeconc's trampoline), over system SQLite with libsafeconc loaded.
//
//   const Database = require('safeconc-sqlite');
//   const db = new Database('app.db');
//   db.function('twice', (x) => 2 * x);
//   db.prepare('SELECT twice(?) AS v').get(21);              // { v: 42 }, on this thread
//   await db.prepare('SELECT twice(?) AS v').getAsync(21);   // { v: 42 }, stepped on a pool
//
// See README.md in this directory and docs/host-integration.md section 8.
const { native } = require('./lib/native');
const SqliteError = require('./lib/sqlite-error');
const Database = require('./lib/database');
const Statement = require('./lib/statement');

native.setup({ SqliteError });
// process.exit() and uncaught exceptions end the process without the environment's cleanup
// hooks: close the UDF owner and stop running queries here, so no pool thread is left
// waiting for this thread (which will never run the UDF) while the process exits.
process.on('exit', () => native.shutdown());

module.exports = Database;
module.exports.Database = Database;
module.exports.Statement = Statement;
module.exports.SqliteError = SqliteError;
/** Objects of the binding alive in the process, for leak checks. */
module.exports.liveObjects = () => native.liveObjects();
