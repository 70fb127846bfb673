'use strict';
// The rest of better-sqlite3's Database API (docs/api.md): properties, loadExtension,
// backup, serialize / new Database(buffer), unsafeMode, the verbose option,
// defaultSafeIntegers, and the Statement properties. Also the async twins' pipeline: many
// queries in flight on one connection each settle with their own result or error.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Database, tempDir, opener, series } = require('./helpers');

const dir = tempDir();
const fresh = opener(dir, 'x');

function filled(rows = 3) {
  const db = fresh();
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
  const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
  db.transaction(() => { for (let i = 1; i <= rows; i++) ins.run(`v${i}`); })();
  return db;
}

test('Database properties: name, open, readonly, memory, inTransaction', () => {
  const file = path.join(dir, 'props.db');
  const db = new Database(file);
  assert.deepEqual([db.name, db.open, db.readonly, db.memory], [file, true, false, false]);
  db.exec('CREATE TABLE t (a)');
  db.exec('BEGIN');
  assert.equal(db.inTransaction, true);
  db.exec('COMMIT');
  const ro = new Database(file, { readonly: true });
  assert.deepEqual([ro.readonly, ro.memory], [true, false]);
  assert.equal(new Database('').memory, true);
  db.close();
  assert.equal(db.open, false);
  assert.equal(ro.close().open, false);
});

test('Statement properties: database, source, reader, readonly, busy', async () => {
  const db = filled();
  const sel = db.prepare('SELECT * FROM t');
  const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
  assert.equal(sel.database, db);
  assert.equal(sel.source, 'SELECT * FROM t');
  assert.deepEqual([sel.reader, sel.readonly], [true, true]);
  assert.deepEqual([ins.reader, ins.readonly], [false, false]);
  assert.equal(db.prepare('INSERT INTO t (v) VALUES (1) RETURNING id').reader, true);
  assert.equal(sel.busy, false);
  const it = sel.iterate();
  it.next();
  assert.equal(sel.busy, true);
  it.return();
  assert.equal(sel.busy, false);
  const p = sel.allAsync();
  assert.equal(sel.busy, true);
  await p;
  assert.equal(sel.busy, false);
});

test('defaultSafeIntegers(): BigInt for statements prepared after it; per statement override', async () => {
  const db = fresh();
  assert.equal(typeof db.prepare('SELECT 1 AS v').get().v, 'number');
  assert.equal(db.defaultSafeIntegers(), db);
  const big = db.prepare('SELECT 1 AS v');
  assert.equal(big.get().v, 1n);
  assert.equal((await big.getAsync()).v, 1n);
  assert.equal(big.safeIntegers(false).get().v, 1);
  db.defaultSafeIntegers(false);
  assert.equal(db.prepare('SELECT 2 AS v').get().v, 2);
  assert.throws(() => db.defaultSafeIntegers('yes'), TypeError);
});

test('loadExtension(): loads into this connection; a bad path is a SqliteError', () => {
  const db = fresh();
  assert.equal(db.loadExtension(process.env.SAFECONC_SO || require('../../bindings/node/lib/native').soPath), db);
  assert.equal(typeof db.prepare('SELECT safeconc_stats() AS s').get().s, 'string');
  assert.throws(() => db.loadExtension(path.join(dir, 'no-such-extension')), (e) =>
    e instanceof Database.SqliteError && e.code === 'SQLITE_ERROR' && /no-such-extension/.test(e.message));
  assert.throws(() => db.loadExtension(42), TypeError);
  // Loading is enabled only for the call: SQL's load_extension() stays refused.
  assert.throws(() => db.prepare("SELECT load_extension('x')").get(), /not authorized/);
});

test('serialize() and new Database(buffer): a copy in memory; readonly honoured', () => {
  const db = filled(50);
  const buf = db.serialize();
  assert.ok(Buffer.isBuffer(buf));
  assert.equal(buf.subarray(0, 15).toString(), 'SQLite format 3');
  const copy = new Database(buf);
  assert.deepEqual([copy.name, copy.memory], [':memory:', true]);
  assert.equal(copy.prepare('SELECT count(*) AS n FROM t').get().n, 50);
  copy.prepare('DELETE FROM t').run();  // the copy is writable, the original untouched
  assert.equal(db.prepare('SELECT count(*) AS n FROM t').get().n, 50);
  const ro = new Database(buf, { readonly: true });
  assert.throws(() => ro.exec('DELETE FROM t'), (e) => e.code.startsWith('SQLITE_READONLY'));
  fs.writeFileSync(path.join(dir, 'from-buffer.db'), buf);
  assert.equal(new Database(path.join(dir, 'from-buffer.db')).prepare('SELECT v FROM t WHERE id = 7').pluck().get(), 'v7');
  assert.equal(new Database().serialize().length, 0);
  db.exec(`ATTACH '${path.join(dir, 'att.db')}' AS other; CREATE TABLE other.u (x); INSERT INTO other.u VALUES (9)`);
  assert.equal(new Database(db.serialize({ attached: 'other' })).prepare('SELECT x FROM u').pluck().get(), 9);
  assert.throws(() => db.serialize({ attached: 'nope' }), RangeError);
  assert.throws(() => new Database(Buffer.from('not a database')).prepare('SELECT * FROM t'), Database.SqliteError);
});

test('backup(): a Promise; progress reports pages and sets the step; a throw aborts', async () => {
  const db = filled(2000); // a few dozen pages
  db.prepare("UPDATE t SET v = hex(randomblob(200))").run();
  const dest = path.join(dir, 'backup.db');
  const reports = [];
  const r = await db.backup(dest, { progress(p) { reports.push(p); return 5; } });
  assert.ok(r.totalPages > 10, `totalPages ${r.totalPages}`);
  assert.equal(r.remainingPages, 0);
  assert.ok(reports.length >= 2, `${reports.length} progress reports`);
  for (let i = 1; i < reports.length; i++) {
    // After the first 100-page step, each step copies the 5 pages progress() asked for.
    assert.equal(reports[i - 1].remainingPages - reports[i].remainingPages, 5);
  }
  const copy = new Database(dest);
  assert.deepEqual(copy.prepare('SELECT count(*) AS n, sum(length(v)) AS l FROM t').get(),
    db.prepare('SELECT count(*) AS n, sum(length(v)) AS l FROM t').get());
  copy.close();
  // A throwing progress callback rejects with its error; the connection stays usable.
  const boom = new Error('stop');
  await assert.rejects(db.backup(path.join(dir, 'aborted.db'), { progress() { throw boom; } }), (e) => e === boom);
  assert.equal(db.prepare('SELECT count(*) AS n FROM t').get().n, 2000);
  // A destination that cannot be opened rejects with a SqliteError.
  await assert.rejects(db.backup(path.join(dir, 'no', 'such', 'dir.db')), (e) =>
    e instanceof Database.SqliteError && e.code.startsWith('SQLITE_CANTOPEN'));
  await assert.rejects(db.backup(dest, { attached: 'nope' }), Database.SqliteError);
  await assert.rejects(db.backup(dest, { progress: 3 }), TypeError);
  // Runs in the connection's order with its async queries, even with a JS UDF in them.
  db.function('twice', (x) => 2 * x);
  const q = db.prepare(series(3000, 'sum(twice(x)) AS s')).getAsync();
  const b = db.backup(path.join(dir, 'busy.db'));
  assert.equal((await q).s, 3000 * 3001);
  assert.equal((await b).remainingPages, 0);
  // close() during a backup aborts it (as better-sqlite3).
  const pending = db.backup(path.join(dir, 'closed.db'), { progress() { return 1; } });
  await new Promise((resolve) => setImmediate(resolve));
  db.close();
  await assert.rejects(pending, /not open/);
});

test('unsafeMode(): defensive by default; writes while iterating refused unless unsafe', () => {
  const db = filled();
  assert.throws(() => db.exec('PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = sql'),
    Database.SqliteError);
  const it = db.prepare('SELECT * FROM t').iterate();
  it.next();
  const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
  assert.throws(() => ins.run('during'), { name: 'TypeError', message: /busy executing a query/ });
  assert.equal(db.prepare('SELECT count(*) AS n FROM t').get().n, 3); // reads are allowed
  assert.equal(db.unsafeMode(), db);
  ins.run('during');
  it.return();
  db.exec('PRAGMA writable_schema = ON');
  assert.equal(db.pragma('writable_schema', { simple: true }), 1);
  db.unsafeMode(false);
  db.exec('PRAGMA writable_schema = OFF');
  assert.throws(() => db.unsafeMode(1), TypeError);
});

test('verbose: called with each SQL run, values expanded; sync, async and exec', async () => {
  const log = [];
  const db = new Database(path.join(dir, 'verbose.db'), { verbose: (s) => log.push(s) });
  db.exec('CREATE TABLE t (a, b);  INSERT INTO t VALUES (1, 2)');
  const ins = db.prepare('INSERT INTO t VALUES (?, ?)');
  ins.run(3, 'x');
  db.prepare('SELECT * FROM t WHERE a = ?').get(3);
  [...db.prepare('SELECT a FROM t WHERE b = @b').iterate({ b: 2 })];
  await ins.runAsync(5, 'y');
  await db.execAsync('DELETE FROM t WHERE a = 5; SELECT 1');
  assert.deepEqual(log, [
    'CREATE TABLE t (a, b);', 'INSERT INTO t VALUES (1, 2)', "INSERT INTO t VALUES (3, 'x')",
    'SELECT * FROM t WHERE a = 3', "SELECT a FROM t WHERE b = 2", "INSERT INTO t VALUES (5, 'y')",
    'DELETE FROM t WHERE a = 5;', 'SELECT 1',
  ]);
  // A logger that throws stops a sync statement before it runs.
  const boom = new Error('no logging today');
  const strict = new Database(path.join(dir, 'verbose.db'), { verbose: () => { throw boom; } });
  assert.throws(() => strict.prepare('DELETE FROM t').run(), (e) => e === boom);
  assert.throws(() => strict.exec('DELETE FROM t'), (e) => e === boom);
  assert.equal(db.prepare('SELECT count(*) AS n FROM t').get().n, 2);
  assert.throws(() => new Database(':memory:', { verbose: 'console.log' }), TypeError);
});

test('many async queries in flight on one connection: each settles with its own result or error', async () => {
  const db = filled(100);
  db.function('checked', (x) => {
    if (x % 3 === 0) {
      const e = new RangeError(`bad ${x}`);
      e.code = `E${x}`;
      throw e;
    }
    return x;
  });
  const get = db.prepare('SELECT checked(id) AS v FROM t WHERE id = ?');
  const ids = Array.from({ length: 100 }, (_, i) => i + 1);
  const order = [];
  const settled = await Promise.allSettled(ids.map((id) => get.getAsync(id).finally(() => order.push(id))));
  assert.deepEqual(order, ids); // settled in call order
  settled.forEach((s, i) => {
    const id = ids[i];
    if (id % 3 === 0) {
      assert.equal(s.status, 'rejected');
      assert.ok(s.reason instanceof RangeError);
      assert.equal(s.reason.code, `E${id}`); // its own UDF's error, not a neighbour's
    } else {
      assert.deepEqual(s.value, { v: id });
    }
  });
  // Four connections at once, plain and UDF queries mixed, then nothing left alive.
  const dbs = [1, 2, 3, 4].map(() => new Database(db.name));
  const sums = await Promise.all(dbs.flatMap((d) => {
    d.function('inc', (x) => x + 1);
    const p = d.prepare('SELECT count(*) AS n FROM t');
    const u = d.prepare('SELECT sum(inc(id)) AS s FROM t');
    return Array.from({ length: 50 }, (_, i) => (i % 2 ? p.getAsync() : u.getAsync()));
  }));
  assert.equal(sums.filter((r) => r.n === 100).length, 100);
  assert.equal(sums.filter((r) => r.s === 5050 + 100).length, 100);
  for (const d of dbs) d.close();
});
