'use strict';
// JS UDFs called from queries stepped on the libuv pool run on the JS thread.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { isMainThread } = require('node:worker_threads');
const { binding, tempDir, series, udfStats } = require('./helpers');

const dir = tempDir();
let n = 0;
const fresh = () => binding.open(path.join(dir, `t${++n}.db`));

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
  const row = await db.prepare('SELECT sleep(200) AS val').get();
  assert.deepEqual(row, { val: 200 });
  assert.deepEqual(seen, [true]);
  const udf = await udfStats(db);
  assert.ok(udf.calls_dispatched >= 1, JSON.stringify(udf)); // it went through the trampoline
  await db.close();
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
      return db.prepare(series(10000, 'sum(f(x)) AS s')).get().finally(() => pending--);
    }),
  );
  clearInterval(timer);
  const base = (10000 * 10001) / 2;
  assert.deepEqual(results.map((r) => r.s), [base, 2 * base, 3 * base, 4 * base]);
  assert.equal(calls, 40000);
  // The timer fired while the queries were still running, between their UDF calls: the JS
  // thread kept running its event loop (counts, not a timing threshold).
  assert.ok(ticksWhilePending > 0, 'the timer never fired while the queries ran');
  assert.ok(callsAtFirstTick < 40000, `first tick after ${callsAtFirstTick} UDF calls`);
  await Promise.all(dbs.map((db) => db.close()));
});

test('async all() and run() step on the pool and call the JS UDF on the JS thread', async () => {
  const db = fresh();
  const threads = new Set();
  db.function('sq', (x) => { threads.add(isMainThread); return x * x; });
  await db.exec('CREATE TABLE t(x INTEGER)');
  const before = (await udfStats(db)).calls_dispatched;
  const ins = await db.prepare(`INSERT INTO t ${series(500, 'sq(x)')}`).run();
  assert.deepEqual(ins, { changes: 500, lastInsertRowid: 500 });
  const rows = await db.prepare('SELECT sq(x) AS y FROM t WHERE x <= 16 ORDER BY x').all();
  assert.deepEqual(rows.map((r) => r.y), [1, 16, 81, 256]); // sq(sq(k)) for k = 1..4
  assert.deepEqual(await db.prepare('SELECT x FROM t WHERE x < 0').all(), []);
  assert.deepEqual([...threads], [true]);
  const udf = await udfStats(db);
  // Every call went through the trampoline's dispatched path (stepped on a pool thread).
  assert.ok(udf.calls_dispatched - before >= 504, JSON.stringify(udf));
  await db.close();
});

test('several queries on one connection run in call order, each with its UDF calls', async () => {
  const db = fresh();
  db.function('twice', (x) => 2 * x);
  const got = await Promise.all([1, 2, 3, 4].map((k) => db.prepare(`SELECT twice(${k}) AS v`).get()));
  assert.deepEqual(got.map((r) => r.v), [2, 4, 6, 8]);
  await db.close();
});

test('values round-trip between SQL and JS in both directions', async () => {
  const db = fresh();
  db.function('id', (x) => x);
  db.function('typ', (x) => (x === null ? 'null' : Buffer.isBuffer(x) ? 'buffer' : typeof x));
  const row = await db
    .prepare(
      "SELECT id(NULL) AS n, id(42) AS i, id(1.5) AS f, id('héllo') AS t, id(x'00ff00') AS b, " +
        'id(9223372036854775807) AS big, typ(9223372036854775807) AS bigt, typ(x\'01\') AS bt',
    )
    .get();
  assert.deepEqual(row, {
    n: null, i: 42, f: 1.5, t: 'héllo', b: Buffer.from([0, 255, 0]),
    big: 9223372036854775807n, bigt: 'bigint', bt: 'buffer',
  });
  const p = await db.prepare('SELECT ? AS a, ? AS b, ? AS c, ? AS d').get(7, 'x', null, 2n ** 40n);
  assert.deepEqual(p, { a: 7, b: 'x', c: null, d: 2 ** 40 });
  await db.close();
});

test('a JS aggregate over an async query, and its sync twin', async () => {
  const db = fresh();
  db.aggregate('jsum', { start: 0, step: (acc, x) => acc + x });
  db.aggregate('collect', { start: () => [], step: (acc, x) => { acc.push(x); }, result: (acc) => acc.join(',') });
  const row = await db.prepare(series(1000, 'jsum(x) AS s, collect(x % 3) AS c')).get();
  assert.equal(row.s, 500500);
  assert.equal(row.c.split(',').length, 1000);
  assert.equal(db.prepare(series(1000, 'jsum(x) AS s')).getSync().s, 500500);
  // No rows: the start value.
  assert.deepEqual(await db.prepare('SELECT jsum(1) AS s WHERE 0').get(), { s: 0 });
  await db.close();
});

test('a throwing UDF and a throwing aggregate result reject with the JS message', async () => {
  const db = fresh();
  db.function('boom', () => { throw new Error('kaboom from a UDF'); });
  db.aggregate('badagg', { start: 0, step: (a, x) => a + x, result: () => { throw new TypeError('result exploded'); } });
  await assert.rejects(db.prepare('SELECT boom()').get(), /kaboom from a UDF/);
  await assert.rejects(db.prepare(series(10, 'badagg(x)')).get(), /result exploded/);
  assert.throws(() => db.prepare('SELECT boom()').getSync(), /kaboom from a UDF/);
  // A throwing step rejects with its message, and result() does not run after it.
  let results = 0;
  db.aggregate('badstep', {
    start: 0,
    step: (a, x) => { if (x === 3) throw new RangeError('step exploded'); return a + x; },
    result: (a) => { results++; return a; },
  });
  await assert.rejects(db.prepare(series(10, 'badstep(x)')).get(), /step exploded/);
  assert.throws(() => db.prepare(series(10, 'badstep(x)')).getSync(), /step exploded/);
  assert.equal(results, 0);
  // The connection is fine afterwards.
  assert.deepEqual(await db.prepare('SELECT 1 AS one').get(), { one: 1 });
  await db.close();
});

test('sync stepping calls the UDF directly on the JS thread', async () => {
  const db = fresh();
  db.function('inc', (x) => x + 1);
  const before = (await udfStats(db)).calls_direct;
  assert.equal(db.prepare(series(100, 'sum(inc(x)) AS s')).getSync().s, 5050 + 100);
  assert.ok((await udfStats(db)).calls_direct >= before + 100);
  await db.close();
});

test('bad input fails with messages a user can act on', async () => {
  const db = fresh();
  assert.throws(() => db.function('f', 'not a function'), /fn must be a function/);
  await assert.rejects(db.prepare('SELEC 1').get(), /syntax error/);
  await assert.rejects(db.prepare('SELECT ?').get(), /1 parameter\(s\), 0 given/);
  await assert.rejects(db.prepare('SELECT 1; SELECT 2').get(), /one statement/);
  await assert.rejects(db.prepare('SELECT ?').get({}), /cannot be bound/);
  await db.exec('CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)');
  assert.deepEqual(await db.prepare('INSERT INTO t VALUES (3)').run(), { changes: 1, lastInsertRowid: 3 });
  await db.close();
});
