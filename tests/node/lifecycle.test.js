'use strict';
// Closing, re-entry, worker threads that end mid-call, timeouts: each fails cleanly.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const { binding, tempDir, series, udfStats } = require('./helpers');

const dir = tempDir();
let n = 0;
const file = () => path.join(dir, `l${++n}.db`);

test('db.close() while an async query is in flight waits for it, then later calls reject', async () => {
  const db = binding.open(file());
  let calls = 0;
  db.function('slow', (x) => { calls++; const u = Date.now() + 1; while (Date.now() < u); return x; });
  const q = db.prepare(series(100, 'sum(slow(x)) AS s')).get();
  const closed = db.close();
  assert.deepEqual(await q, { s: 5050 }); // the query finished normally
  await closed;
  assert.equal(calls, 100);
  await assert.rejects(db.prepare('SELECT 1').get(), /database is closed/);
  assert.throws(() => db.prepare('SELECT 1').getSync(), /database is closed/);
  await db.close(); // closing again is harmless
});

test('db.close() from inside a UDF throws a clear error (async and sync paths)', async () => {
  const db = binding.open(file());
  const errors = [];
  db.function('closer', () => {
    try { db.close(); } catch (e) { errors.push(e.message); }
    return 1;
  });
  assert.deepEqual(await db.prepare('SELECT closer() AS v').get(), { v: 1 });
  assert.deepEqual(db.prepare('SELECT closer() AS v').getSync(), { v: 1 });
  assert.equal(errors.length, 2);
  for (const m of errors) assert.match(m, /close\(\) was called from inside a user-defined function/);
  assert.deepEqual(await db.prepare('SELECT 2 AS v').get(), { v: 2 }); // still open
  await db.close();
});

test('re-entering the running statement from its UDF throws instead of crashing', async () => {
  const db = binding.open(file());
  let stmt;
  const errors = [];
  db.function('reenter', () => {
    for (const call of [() => stmt.getSync(), () => stmt.get(), () => stmt.all()]) {
      try { call(); } catch (e) { errors.push(e.message); }
    }
    return 7;
  });
  stmt = db.prepare('SELECT reenter() AS v');
  assert.deepEqual(await stmt.get(), { v: 7 });
  assert.equal(errors.length, 3, errors.join('\n'));
  for (const m of errors) assert.match(m, /from inside a user-defined function/);
  // Synchronous SQL on the same connection from inside its UDF is refused too.
  db.function('nested', () => { try { db.prepare('SELECT 1').getSync(); return 'ran'; } catch (e) { return e.message; } });
  assert.match(db.prepare('SELECT nested() AS m').getSync().m, /would re-enter the statement/);
  await db.close();
});

// A synchronous query releases the connection between two steps. Work queued from one of its
// UDFs must not start on the pool then: its UDF call would wait for the JS thread while the
// JS thread waits for the connection, a stall of safeconc_call_timeout that fails the query.
test('an async query started from a UDF of a synchronous query runs after it, without a stall', async () => {
  const db = binding.open(`file:${file()}?safeconc_call_timeout=3000`);
  let later;
  db.function('f', (x) => {
    if (x === 1) later = db.prepare('SELECT f(-5) AS v').get();
    return x;
  });
  assert.equal(db.prepare(series(50000, 'sum(f(x)) AS s')).getSync().s, (50000 * 50001) / 2);
  assert.deepEqual(await later, { v: -5 }); // not a "timed out" rejection
  await db.close();
});

// in_callback() tracks 16 nested callbacks per thread; deeper ones must still be refused.
test('close(), function() and SQL from a UDF nested 20 queries deep throw, not crash', async () => {
  const dbs = Array.from({ length: 20 }, () => binding.open(file()));
  const errors = [];
  dbs.forEach((db, i) =>
    db.function('down', () => {
      if (i + 1 < dbs.length) return dbs[i + 1].prepare('SELECT down() AS v').getSync().v + 1;
      for (const call of [() => db.function('down', () => 0), () => db.close(), () => db.prepare('SELECT 1').getSync()]) {
        try { call(); errors.push('no error'); } catch (e) { errors.push(e.message); }
      }
      return 1;
    }),
  );
  assert.deepEqual(dbs[0].prepare('SELECT down() AS v').getSync(), { v: 20 });
  assert.equal(errors.length, 3);
  for (const m of errors) assert.match(m, /from inside a user-defined function of this database/);
  assert.deepEqual(await dbs[19].prepare('SELECT down() AS v').get(), { v: 1 }); // still open
  await Promise.all(dbs.map((db) => db.close()));
});

test('synchronous calls on a connection with queries in flight throw instead of deadlocking', async () => {
  const db = binding.open(file());
  db.function('id', (x) => x);
  const q = db.prepare(series(1000, 'sum(id(x)) AS s')).get();
  assert.throws(() => db.prepare('SELECT 1').getSync(), /busy with 1 async query/);
  assert.throws(() => db.function('g', () => 1), /busy with 1 async query/);
  assert.deepEqual(await q, { s: 500500 });
  db.function('g', () => 1); // fine once idle
  await db.close();
});

test('a UDF whose JS thread stays blocked past safeconc_call_timeout fails the query', async () => {
  const db = binding.open(`file:${file()}?safeconc_call_timeout=200`);
  db.function('f', (x) => x);
  const q = db.prepare('SELECT f(1) AS v').get();
  // Block the JS thread longer than the call timeout: the worker gives up waiting.
  const until = Date.now() + 1000;
  while (Date.now() < until);
  await assert.rejects(q, /safeconc_call_timeout|timed out|did not run/);
  assert.deepEqual(await db.prepare('SELECT f(2) AS v').get(), { v: 2 }); // and recovers
  await db.close();
});

// A worker thread opens three databases, starts on each an async query whose UDF blocks the
// worker's JS thread (Atomics.wait on memory nobody notifies), and a second query queued
// behind it, and is terminated while three pool threads wait for those calls: one running
// in the worker, two handed to its threadsafe function and not run yet. The process
// survives, the main thread's queries (with their own UDFs) are unaffected, and nothing
// accumulates over repeats: the trampoline's owner and task gauges, and the binding's own
// environments, connections, functions and queries, are back at their baseline.
const workerSource = `
const { parentPort, workerData } = require('node:worker_threads');
const binding = require(workerData.binding);
const block = new Int32Array(new SharedArrayBuffer(4));
let entered = false;
for (let k = 0; k < 3; k++) {
  const db = binding.open(workerData.file + '-' + k);
  db.function('stuck', (x) => {
    if (!entered) { entered = true; parentPort.postMessage('in-udf'); }
    Atomics.wait(block, 0, 0); // until terminate() interrupts it
    return x;
  });
  db.aggregate('acc', { start: 0, step: (a, x) => a + x });
  db.prepare('SELECT stuck(' + k + ')').get().catch(() => {});
  db.prepare('SELECT acc(stuck(' + k + '))').get().catch(() => {});
}
`;

test('worker.terminate() while its async queries wait on UDF calls', async () => {
  const main = binding.open(file());
  main.function('plus', (x) => x + 1);
  const before = await udfStats(main);
  const liveBefore = binding.liveObjects();
  const bindingPath = require.resolve('../../bindings/node');
  for (let round = 0; round < 5; round++) {
    const w = new Worker(workerSource, { eval: true, workerData: { binding: bindingPath, file: file() } });
    await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    // Main-thread queries in flight across the termination.
    const mine = [1, 2, 3].map(() => main.prepare(series(2000, 'sum(plus(x)) AS s')).get());
    await w.terminate();
    for (const r of await Promise.all(mine)) assert.equal(r.s, (2000 * 2001) / 2 + 2000);
  }
  const after = await udfStats(main);
  // Each worker's owner was closed when it ended, and no task was left behind.
  assert.equal(after.owners_open, before.owners_open, JSON.stringify(after));
  assert.equal(after.tasks_in_use, 0, JSON.stringify(after));
  // The workers' environments, connections, JS functions and queries were all freed.
  assert.deepEqual(binding.liveObjects(), liveBefore);
  await main.close();
});

test('an idle owner does not keep the process alive', async () => {
  const { spawnSync } = require('node:child_process');
  const script = `
    const b = require(${JSON.stringify(require.resolve('../../bindings/node'))});
    const db = b.open(${JSON.stringify(file())});
    db.function('f', (x) => x);
    db.prepare('SELECT f(1) AS v').get().then((r) => console.log(JSON.stringify(r)));
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '{"v":1}'); // exited on its own after the query, db left open
});

test('libsafeconc given without its .so suffix, as sqlite3_load_extension accepts it', () => {
  const { spawnSync } = require('node:child_process');
  const so = process.env.SAFECONC_SO || path.join(__dirname, '..', '..', 'build', 'libsafeconc.so');
  const script = `
    const b = require(${JSON.stringify(require.resolve('../../bindings/node'))});
    const db = b.open(${JSON.stringify(file())}, { libsafeconc: ${JSON.stringify(so.replace(/\.so$/, ''))} });
    db.function('f', (x) => x);
    db.prepare('SELECT f(3) AS v').get().then((r) => { console.log(JSON.stringify(r)); return db.close(); });
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '{"v":3}');
});
