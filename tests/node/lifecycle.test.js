'use strict';
// Closing, re-entry, worker threads that end mid-call, timeouts: each fails cleanly.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const { Database, bindingPath, tempDir, series, udfStats, runNode } = require('./helpers');

// The garbage collector, for the leak checks (closed databases stay counted until collected).
require('node:v8').setFlagsFromString('--expose-gc');
const gc = require('node:vm').runInNewContext('gc');
// Node runs N-API finalizers after the collection, from the event loop: let them run.
async function collect() {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}

const dir = tempDir();
let n = 0;
const file = () => path.join(dir, `l${++n}.db`);

test('db.close() with an async query in flight lets it finish, then calls throw', async () => {
  const db = new Database(file());
  let calls = 0;
  db.function('slow', (x) => { calls++; const u = Date.now() + 1; while (Date.now() < u); return x; });
  const q = db.prepare(series(100, 'sum(slow(x)) AS s')).getAsync();
  assert.equal(db.close(), db);
  assert.equal(db.open, false);
  assert.deepEqual(await q, { s: 5050 }); // the query finished normally
  assert.equal(calls, 100);
  assert.throws(() => db.prepare('SELECT 1'), { name: 'TypeError', message: /not open/ });
  await assert.rejects(db.execAsync('SELECT 1'), /not open/);
  db.close(); // closing again is harmless
});

test('statements of a closed database throw, sync and async', async () => {
  const db = new Database(file());
  const s = db.prepare('SELECT 1 AS v');
  db.close();
  assert.throws(() => s.get(), /not open/);
  await assert.rejects(s.getAsync(), /not open/);
});

test('db.close() from inside a UDF throws a clear error (async and sync paths)', async () => {
  const db = new Database(file());
  const errors = [];
  db.function('closer', () => {
    try { db.close(); } catch (e) { errors.push(e.message); }
    return 1;
  });
  assert.deepEqual(await db.prepare('SELECT closer() AS v').getAsync(), { v: 1 });
  assert.deepEqual(db.prepare('SELECT closer() AS v').get(), { v: 1 });
  assert.equal(errors.length, 2);
  for (const m of errors) assert.match(m, /close\(\) was called from inside a user-defined function/);
  assert.equal(db.open, true);
  db.close();
});

test('re-entering the running statement or its connection from its UDF throws, not crashes', async () => {
  const db = new Database(file());
  let stmt;
  const errors = [];
  db.function('reenter', () => {
    for (const call of [() => stmt.get(), () => db.prepare('SELECT 1').get(), () => db.exec('SELECT 1')]) {
      try { call(); errors.push('no error'); } catch (e) { errors.push(e.message); }
    }
    return 7;
  });
  stmt = db.prepare('SELECT reenter() AS v');
  assert.deepEqual(stmt.get(), { v: 7 });
  assert.match(errors[0], /busy executing a query: it was called again from inside a user-defined function/);
  assert.match(errors[1], /re-enter that connection/);
  assert.match(errors[2], /from inside a user-defined function of this database/);
  errors.length = 0;
  assert.deepEqual(await stmt.getAsync(), { v: 7 }); // from the pool: busy, refused the same way
  assert.equal(errors.length, 3);
  for (const m of errors) assert.doesNotMatch(m, /no error/);
  db.close();
});

// A synchronous query releases the connection between two steps. Work queued from one of its
// UDFs must not start on the pool then: its UDF call would wait for the JS thread while the
// JS thread waits for the connection, a stall of safeconc_call_timeout that fails the query.
test('an async query started from a UDF of a synchronous query runs after it, without a stall', async () => {
  const db = new Database(`file:${file()}?safeconc_call_timeout=3000`);
  let later;
  db.function('f', (x) => {
    if (x === 1) later = db.prepare('SELECT f(-5) AS v').getAsync();
    return x;
  });
  assert.equal(db.prepare(series(50000, 'sum(f(x)) AS s')).get().s, (50000 * 50001) / 2);
  assert.deepEqual(await later, { v: -5 }); // not a "timed out" rejection
  db.close();
});

test('close() and SQL from a UDF nested 20 queries deep throw, not crash', () => {
  const dbs = Array.from({ length: 20 }, () => new Database(file()));
  const errors = [];
  dbs.forEach((db, i) =>
    db.function('down', () => {
      if (i + 1 < dbs.length) return dbs[i + 1].prepare('SELECT down() AS v').get().v + 1;
      for (const call of [() => db.function('down', () => 0), () => db.close(), () => db.exec('SELECT 1')]) {
        try { call(); errors.push('no error'); } catch (e) { errors.push(e.message); }
      }
      return 1;
    }),
  );
  assert.deepEqual(dbs[0].prepare('SELECT down() AS v').get(), { v: 20 });
  assert.equal(errors.length, 3);
  for (const m of errors) assert.match(m, /from inside a user-defined function of this database/);
  for (const db of dbs) db.close();
});

test('sync calls on a connection with queries in flight throw; prepare() waits instead', async () => {
  const db = new Database(file());
  let calls = 0;
  db.function('id', (x) => { calls++; return x; });
  const q = db.prepare(series(3000, 'sum(id(x)) AS s')).getAsync();
  assert.throws(() => db.prepare('SELECT 1').get(), /busy with 1 async query/);
  assert.throws(() => db.exec('SELECT 1'), /busy with 1 async query/);
  assert.throws(() => db.function('g', () => 1), /busy with async queries/);
  // prepare() needs the connection only briefly: it runs the pending UDF calls while it
  // waits for it, instead of waiting for a query that waits for this thread.
  while (calls === 0) await new Promise((r) => setImmediate(r)); // the query is in its step
  const s = db.prepare('SELECT 2 AS v');
  // The query's one step (the whole aggregate) held the connection: prepare() got it only
  // after that step ended, having run every remaining id() call itself meanwhile.
  assert.equal(calls, 3000);
  assert.deepEqual(await q, { s: 4501500 });
  assert.deepEqual(s.get(), { v: 2 });
  db.function('g', () => 1); // fine once idle
  db.close();
});

test('a UDF whose JS thread stays blocked past safeconc_call_timeout fails the query', async () => {
  const db = new Database(`file:${file()}?safeconc_call_timeout=200`);
  db.function('f', (x) => x);
  const q = db.prepare('SELECT f(1) AS v').getAsync();
  const until = Date.now() + 1000; // block the JS thread longer than the call timeout
  while (Date.now() < until);
  await assert.rejects(q, /safeconc_call_timeout|timed out|did not run/);
  assert.deepEqual(await db.prepare('SELECT f(2) AS v').getAsync(), { v: 2 }); // and recovers
  db.close();
});

test('statements collected while their connection runs a query are freed, no crash', async () => {
  const db = new Database(file());
  db.function('id', (x) => x);
  const q = db.prepare(series(2000, 'sum(id(x)) AS s')).getAsync();
  for (let i = 0; i < 200; i++) db.prepare('SELECT 1');
  gc(); // their finalizers run while the query holds the connection
  assert.deepEqual(await q, { s: 2001000 });
  db.close();
});

// A worker thread opens three databases, starts on each an async query whose UDF blocks the
// worker's JS thread (Atomics.wait on memory nobody notifies), and a second query queued
// behind it, and is terminated while pool threads wait for those calls. The process
// survives, the main thread's queries are unaffected, and nothing accumulates over repeats:
// the trampoline's owner and task gauges, and the binding's own environments, connections,
// statements, functions and queries, are back at their baseline.
const workerSource = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.binding);
const block = new Int32Array(new SharedArrayBuffer(4));
let entered = false;
for (let k = 0; k < 3; k++) {
  const db = new Database(workerData.file + '-' + k);
  db.function('stuck', () => {
    if (!entered) { entered = true; parentPort.postMessage('in udf'); }
    Atomics.wait(block, 0, 0);
    return 1;
  });
  db.prepare('SELECT stuck() AS v').getAsync().catch(() => {});
  db.prepare('SELECT stuck() AS v').allAsync().catch(() => {});
}
`;

test('terminating a worker with UDF calls in flight: no crash, no leak', async () => {
  const main = new Database(file());
  main.function('plus', (x) => x + 1);
  const before = udfStats(main);
  await collect();
  const liveBefore = Database.liveObjects();
  for (let round = 0; round < 5; round++) {
    const w = new Worker(workerSource, { eval: true, workerData: { binding: bindingPath, file: file() } });
    await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
    const mine = [1, 2, 3].map(() => main.prepare(series(2000, 'sum(plus(x)) AS s')).getAsync());
    await w.terminate();
    for (const r of await Promise.all(mine)) assert.equal(r.s, (2000 * 2001) / 2 + 2000);
  }
  const after = udfStats(main);
  await collect();
  assert.equal(after.owners_open, before.owners_open, JSON.stringify(after));
  assert.equal(after.tasks_in_use, 0, JSON.stringify(after));
  const live = Database.liveObjects();
  assert.deepEqual(live, liveBefore);
  main.close();
});

test('an idle owner does not keep the process alive', () => {
  const r = runNode(`
    const Database = require(${JSON.stringify(bindingPath)});
    const db = new Database(${JSON.stringify(file())});
    db.function('f', (x) => x);
    db.prepare('SELECT f(1) AS v').getAsync().then((r) => console.log(JSON.stringify(r)));
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '{"v":1}'); // exited on its own after the query, db left open
});

test('libsafeconc given without its .so suffix, as sqlite3_load_extension accepts it', () => {
  const so = process.env.SAFECONC_SO || path.join(__dirname, '..', '..', 'build', 'libsafeconc.so');
  const r = runNode(`
    const Database = require(${JSON.stringify(bindingPath)});
    const db = new Database(${JSON.stringify(file())}, { libsafeconc: ${JSON.stringify(so.replace(/\.so$/, ''))} });
    db.function('f', (x) => x);
    db.prepare('SELECT f(3) AS v').getAsync().then((r) => { console.log(JSON.stringify(r)); db.close(); });
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '{"v":3}');
});
