'use strict';
// JS UDFs called from queries stepped on the addon's pool run on the JS thread.
const test = require('node:test');
const assert = require('node:assert/strict');
const { isMainThread } = require('node:worker_threads');
const { tempDir, opener, series, udfStats } = require('./helpers');

const fresh = opener(tempDir());

// The seed (../shared/seeds/000_*): node:sqlite segfaulted when its async API called a JS
// UDF on a pool thread. Here the call is dispatched to the JS thread.
test('seed reproduction: sleep(200) in an async query returns {val: 200}', async () => {
  const db = fresh();
  const seen = [];
  db.function('sleep', (ms) => {
    seen.push(isMainThread); // touching JS state is only possible on the JS thread
    const until = Date.now() + ms;
    while (Date.now() < until);
    return ms;
  });
  const before = udfStats(db).calls_dispatched;
  assert.deepEqual(await db.prepare('SELECT sleep(200) AS val').getAsync(), { val: 200 });
  assert.deepEqual(seen, [true]);
  assert.ok(udfStats(db).calls_dispatched > before); // it went through the trampoline
  db.close();
});

test('4 concurrent async queries, each a JS UDF on 10k rows, while a timer keeps firing', async () => {
  const dbs = [fresh(), fresh(), fresh(), fresh()];
  let calls = 0;
  dbs.forEach((db, i) => db.function('f', (x) => { calls++; return x * (i + 1); }));
  let pending = 0;
  let ticksWhilePending = 0;
  let callsAtFirstTick = -1;
  const timer = setInterval(() => {
    if (pending === 0) return;
    ticksWhilePending++;
    if (callsAtFirstTick < 0) callsAtFirstTick = calls;
  }, 1);
  const results = await Promise.all(
    dbs.map((db) => {
      pending++;
      return db.prepare(series(10000, 'sum(f(x)) AS s')).getAsync().finally(() => pending--);
    }),
  );
  clearInterval(timer);
  const base = (10000 * 10001) / 2;
  assert.deepEqual(results.map((r) => r.s), [base, 2 * base, 3 * base, 4 * base]);
  assert.equal(calls, 40000);
  // The timer fired between UDF calls: the JS thread kept turning its event loop (counts,
  // not a timing threshold).
  assert.ok(ticksWhilePending > 0, 'the timer never fired while the queries ran');
  assert.ok(callsAtFirstTick < 40000, `first tick after ${callsAtFirstTick} UDF calls`);
  for (const db of dbs) db.close();
});

test('async all() and run() step on the pool and call the JS UDF on the JS thread', async () => {
  const db = fresh();
  const threads = new Set();
  db.function('sq', (x) => { threads.add(isMainThread); return x * x; });
  await db.execAsync('CREATE TABLE t(x INTEGER)');
  const before = udfStats(db).calls_dispatched;
  const ins = await db.prepare(`INSERT INTO t ${series(500, 'sq(x)')}`).runAsync();
  assert.deepEqual(ins, { changes: 500, lastInsertRowid: 500 });
  const rows = await db.prepare('SELECT sq(x) AS y FROM t WHERE x <= 16 ORDER BY x').allAsync();
  assert.deepEqual(rows.map((r) => r.y), [1, 16, 81, 256]); // sq(sq(k)) for k = 1..4
  assert.deepEqual(await db.prepare('SELECT x FROM t WHERE x < 0').allAsync(), []);
  assert.deepEqual([...threads], [true]);
  // Every call went through the trampoline's dispatched path (stepped on a pool thread).
  assert.ok(udfStats(db).calls_dispatched - before >= 504);
  db.close();
});

test('several queries on one connection run in call order, each with its UDF calls', async () => {
  const db = fresh();
  db.function('twice', (x) => 2 * x);
  const stmt = db.prepare('SELECT twice(?) AS v');
  const got = await Promise.all([1, 2, 3, 4].map((k) => stmt.getAsync(k)));
  assert.deepEqual(got.map((r) => r.v), [2, 4, 6, 8]);
  db.close();
});

test('values round-trip between SQL and JS in both directions, sync and async', async () => {
  const db = fresh();
  db.function('id', (x) => x);
  db.function('typ', (x) => (x === null ? 'null' : Buffer.isBuffer(x) ? 'buffer' : typeof x));
  const stmt = db.prepare(
    "SELECT id(NULL) AS n, id(42) AS i, id(1.5) AS f, id('héllo') AS t, id(x'00ff00') AS b, " +
      "id(9223372036854775807) AS big, typ(9223372036854775807) AS bigt, typ(x'01') AS bt",
  );
  const expect = {
    n: null, i: 42, f: 1.5, t: 'héllo', b: Buffer.from([0, 255, 0]),
    big: 9223372036854775807n, bigt: 'bigint', bt: 'buffer',
  };
  assert.deepEqual(stmt.get(), expect);
  assert.deepEqual(await stmt.getAsync(), expect);
  const p = db.prepare('SELECT ? AS a, ? AS b, ? AS c, ? AS d, typeof(?) AS e');
  assert.deepEqual(p.get(7, 'x', null, 2n ** 40n, 2 ** 53 - 1), { a: 7, b: 'x', c: null, d: 2 ** 40, e: 'integer' });
  db.close();
});

test('a JS aggregate over an async query, and its sync twin', async () => {
  const db = fresh();
  db.aggregate('jsum', { start: 0, step: (acc, x) => acc + x });
  db.aggregate('collect', { start: () => [], step: (acc, x) => { acc.push(x); }, result: (acc) => acc.join(',') });
  const row = await db.prepare(series(1000, 'jsum(x) AS s, collect(x % 3) AS c')).getAsync();
  assert.equal(row.s, 500500);
  assert.equal(row.c.split(',').length, 1000);
  assert.equal(db.prepare(series(1000, 'jsum(x) AS s')).get().s, 500500);
  // No rows: the start value.
  assert.deepEqual(await db.prepare('SELECT jsum(1) AS s WHERE 0').getAsync(), { s: 0 });
  db.close();
});

test('a throwing UDF and a throwing aggregate result reject with the JS error', async () => {
  const db = fresh();
  db.function('boom', () => { throw new Error('kaboom from a UDF'); });
  db.aggregate('badagg', { start: 0, step: (a, x) => a + x, result: () => { throw new TypeError('result exploded'); } });
  await assert.rejects(db.prepare('SELECT boom()').getAsync(), /kaboom from a UDF/);
  await assert.rejects(db.prepare(series(10, 'badagg(x)')).getAsync(), TypeError);
  assert.throws(() => db.prepare('SELECT boom()').get(), /kaboom from a UDF/);
  // A throwing step rejects with its error, and result() does not run after it.
  let results = 0;
  db.aggregate('badstep', {
    start: 0,
    step: (a, x) => { if (x === 3) throw new RangeError('step exploded'); return a + x; },
    result: (a) => { results++; return a; },
  });
  await assert.rejects(db.prepare(series(10, 'badstep(x)')).getAsync(), RangeError);
  assert.throws(() => db.prepare(series(10, 'badstep(x)')).get(), RangeError);
  assert.equal(results, 0);
  assert.deepEqual(await db.prepare('SELECT 1 AS one').getAsync(), { one: 1 }); // still fine
  db.close();
});

test('sync stepping calls the UDF directly on the JS thread', () => {
  const db = fresh();
  db.function('inc', (x) => x + 1);
  const before = udfStats(db).calls_direct;
  assert.equal(db.prepare(series(100, 'sum(inc(x)) AS s')).get().s, 5050 + 100);
  assert.ok(udfStats(db).calls_direct >= before + 100);
  db.close();
});

test('function() options: varargs, deterministic, directOnly, safeIntegers', () => {
  const db = fresh();
  db.function('argc', { varargs: true, deterministic: true }, (...a) => a.length);
  assert.deepEqual(db.prepare('SELECT argc() AS a, argc(1, 2, 3) AS b').get(), { a: 0, b: 3 });
  db.function('two', (a, b) => a + b);
  assert.throws(() => db.prepare('SELECT two(1)'), { code: 'SQLITE_ERROR', message: /wrong number of arguments/ });
  // deterministic functions may be used in an index expression; others may not.
  db.function('det', { deterministic: true }, (x) => x * 2);
  db.function('nondet', (x) => x * 2);
  db.exec('CREATE TABLE t(x)');
  db.exec('CREATE INDEX i1 ON t(det(x))');
  assert.throws(() => db.exec('CREATE INDEX i2 ON t(nondet(x))'), /non-deterministic/);
  // directOnly functions cannot be used from a view.
  db.function('direct', { directOnly: true }, () => 1);
  db.exec('CREATE VIEW v AS SELECT direct() AS d');
  assert.throws(() => db.prepare('SELECT * FROM v').get(), /unsafe use of direct/);
  db.function('kind', { safeIntegers: true }, (x) => typeof x);
  assert.equal(db.prepare('SELECT kind(1) AS k').get().k, 'bigint');
  assert.throws(() => db.function('f', { varargs: 'yes' }, () => 1), TypeError);
  assert.throws(() => db.function('f', 'not a function'), TypeError);
  db.close();
});
