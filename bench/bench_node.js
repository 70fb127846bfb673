'use strict';
// bench_node.js - the Node binding's costs, every ratio measured in this one run:
//   1. per-call cost of a JS UDF on the sync path (direct, on the JS thread) against a C
//      function of SQLite (abs), both net of the same query without a function;
//   2. a UDF-heavy query: async (stepped on the addon's pool, each call handed to the JS
//      thread) against sync;
//   3. that hand-off's round trip per call against a raw ping-pong of two threads on a
//      futex (Atomics.wait/notify between this thread and a worker: a condition variable's
//      floor), the trampoline's goal being within 3x;
//   4. plain queries (no UDF): async against sync, for 1000-row reads and for one-row
//      lookups. Each async row says how many queries are in flight: 1 (each awaited before
//      the next: the latency of one query, hand-offs included) or a window of N kept in
//      flight (a server with N requests at once: the throughput figure the 1.5x target is
//      about);
//   5. fs.readFile latency alone and beside 4 UDF-heavy async queries.
// Usage: node bench/bench_node.js [rows]   (SAFECONC_NODE_ADDON / SAFECONC_SO as in tests)
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const Database = require('../bindings/node');

const rows = Number(process.argv[2] || 100000);
const series = (n, expr) =>
  `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${n}) SELECT ${expr} FROM c`;
const now = () => Number(process.hrtime.bigint()) / 1e9;

async function best(n, fn) {
  let t = Infinity;
  for (let i = 0; i < n; i++) {
    const t0 = now();
    await fn();
    t = Math.min(t, now() - t0);
  }
  return t;
}

// Round trips per second of two threads handing a turn back and forth on a futex.
function futexPingPong(iters) {
  return new Promise((resolve, reject) => {
    const sab = new SharedArrayBuffer(8);
    const a = new Int32Array(sab);
    const w = new Worker(`
      const { workerData } = require('node:worker_threads');
      const a = new Int32Array(workerData.sab);
      for (let i = 0; i < workerData.iters; i++) {
        while (Atomics.load(a, 0) !== 1) Atomics.wait(a, 0, 0);
        Atomics.store(a, 0, 0);
        Atomics.notify(a, 0);
      }`, { eval: true, workerData: { sab, iters } });
    w.on('error', reject);
    w.on('online', () => {
      const t0 = now();
      for (let i = 0; i < iters; i++) {
        Atomics.store(a, 0, 1);
        Atomics.notify(a, 0);
        while (Atomics.load(a, 0) !== 0) Atomics.wait(a, 0, 1);
      }
      const dt = now() - t0;
      w.terminate().then(() => resolve(dt / iters));
    });
  });
}

// Runs total calls of fn(i), keeping `inflight` of them outstanding at any time.
async function windowed(total, inflight, fn) {
  let next = 0;
  const lane = async () => {
    while (next < total) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(inflight, total) }, lane));
}

async function readLatency(file, n) {
  const t = [];
  for (let i = 0; i < n; i++) {
    const t0 = now();
    await fs.promises.readFile(file);
    t.push((now() - t0) * 1000);
  }
  t.sort((x, y) => x - y);
  return t[Math.floor(t.length / 2)];
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safeconc-bench-node-'));
  const db = new Database(path.join(dir, 'b.db'));
  db.function('js_inc', { deterministic: false }, (x) => x + 1);
  const q = (expr) => db.prepare(series(rows, `sum(${expr}) AS s`));
  // The C function nested 16 deep per row: one call is below this machine's timing noise.
  const nest = 16;
  const cfunN = await best(7, () => q(`${'abs('.repeat(nest)}x${')'.repeat(nest)} + 1`).get());
  const plain = await best(7, () => q('x + 1').get());
  const jsSync = await best(7, () => q('js_inc(x)').get());
  const udfRows = Math.min(rows, 20000); // the async path is slow: fewer rows, same per-call cost
  const qa = db.prepare(series(udfRows, 'sum(js_inc(x)) AS s'));
  const plainSmall = await best(3, () => db.prepare(series(udfRows, 'sum(x + 1) AS s')).get());
  const jsAsync = await best(3, () => qa.getAsync());
  const jsSyncSmall = await best(3, () => qa.get());
  const perC = ((cfunN - plain) / (nest * rows)) * 1e9;
  const perJs = ((jsSync - plain) / rows) * 1e9;
  const perAsync = ((jsAsync - plainSmall) / udfRows) * 1e9;
  const futex = (await futexPingPong(20000)) * 1e9;

  // Plain reads: a 1000-row table, all() vs allAsync(); one-row lookups, get vs getAsync.
  db.exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT); INSERT INTO t ${series(1000, "x, x * 7, 'row ' || x")}`);
  const scan = db.prepare('SELECT * FROM t');
  const scans = 200;
  const sScan = await best(3, () => { for (let i = 0; i < scans; i++) scan.all(); });
  const aScan = await best(3, async () => { for (let i = 0; i < scans; i++) await scan.allAsync(); });
  const look = db.prepare('SELECT * FROM t WHERE id = ?');
  const looks = 5000;
  const sLook = await best(3, () => { for (let i = 0; i < looks; i++) look.get((i % 1000) + 1); });
  const key = (i) => (i % 1000) + 1;
  const aLook1 = await best(3, () => windowed(looks, 1, (i) => look.getAsync(key(i))));
  const aLook64 = await best(3, () => windowed(looks, 64, (i) => look.getAsync(key(i))));
  const dbs4 = [1, 2, 3, 4].map(() => new Database(path.join(dir, 'b.db')));
  const scans4 = dbs4.map((d) => d.prepare('SELECT * FROM t'));
  const aScan4 = await best(3, () => Promise.all(scans4.map(async (s) => { for (let i = 0; i < scans / 4; i++) await s.allAsync(); })));
  const looks4 = dbs4.map((d) => d.prepare('SELECT * FROM t WHERE id = ?'));
  const aLook4 = await best(3, () => windowed(looks, 64, (i) => looks4[i % 4].getAsync(key(i))));

  // fs.readFile beside 4 UDF-heavy async queries.
  const file = path.join(dir, 'payload.bin');
  fs.writeFileSync(file, Buffer.alloc(64 * 1024, 1));
  const idleRead = await readLatency(file, 20);
  dbs4.forEach((d) => d.function('f', (x) => x));
  let running = 4;
  const heavy = dbs4.map((d) => d.prepare(series(udfRows * 2, 'sum(f(x))')).getAsync().finally(() => running--));
  const busyRead = await readLatency(file, 20);
  const stillRunning = running;
  await Promise.all(heavy);

  for (const d of [db, ...dbs4]) d.close();
  fs.rmSync(dir, { recursive: true, force: true });

  const r = (x) => `${x.toPrecision(3)}x`;
  const ns = (x) => `${x.toFixed(0)} ns`;
  const line = (a, b, c) => console.log(`  ${a.padEnd(58)} ${String(b).padStart(16)}  ${c}`);
  console.log(`Node binding (${os.cpus().length} cores, ${process.version}; rows per UDF query: sync ${rows}, async ${udfRows})`);
  line('measure', 'value', 'ratio (same run)');
  line('1. sync: JS UDF per call (direct path)', ns(perJs), `${r(perJs / perC)} a C function`);
  line('   sync: C function of SQLite (abs) per call', ns(perC), '');
  line('2. UDF-heavy query: async per call (pool + hand-off)', ns(perAsync), `${r(perAsync / perJs)} sync (async/sync time)`);
  line('3. hand-off round trip (async - sync per call)', ns(perAsync - perJs), `${r((perAsync - perJs) / futex)} futex ping-pong (goal <= 3x)`);
  line('   raw futex ping-pong round trip, two threads', ns(futex), '');
  line('4. plain all() of 1000 rows, sync', `${(scans / sScan).toFixed(0)} /s`, '');
  line('   plain allAsync() of 1000 rows, 1 in flight', `${(scans / aScan).toFixed(0)} /s`, `${r(aScan / sScan)} sync time (target <= 1.5x)`);
  line('   plain allAsync(), 4 connections, 1 in flight each', `${(scans / aScan4).toFixed(0)} /s`, `${r(aScan4 / sScan)} sync time`);
  line('   one-row get(), sync', `${(looks / sLook).toFixed(0)} /s`, `${((sLook / looks) * 1e6).toFixed(1)} us per query`);
  line('   one-row getAsync(), 1 in flight (each awaited)', `${(looks / aLook1).toFixed(0)} /s`, `${r(aLook1 / sLook)} sync time; +${(((aLook1 - sLook) / looks) * 1e6).toFixed(1)} us = ${r(((aLook1 - sLook) / looks) / (futex / 1e9))} futex ping-pong`);
  line('   one-row getAsync(), 64 in flight, 1 connection', `${(looks / aLook64).toFixed(0)} /s`, `${r(aLook64 / sLook)} sync time (target <= 1.5x)`);
  line('   one-row getAsync(), 64 in flight, 4 connections', `${(looks / aLook4).toFixed(0)} /s`, `${r(aLook4 / sLook)} sync time`);
  line('5. fs.readFile 64 KiB median, idle', `${idleRead.toFixed(2)} ms`, '');
  line('   fs.readFile beside 4 UDF-heavy async queries', `${busyRead.toFixed(2)} ms`, `(queries still running after: ${stillRunning}/4)`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
