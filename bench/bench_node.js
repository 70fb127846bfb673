'use strict';
// bench_node.js - a JavaScript UDF called once per row over 100k rows, through the Node addon:
//   sync   the query steps on the JS thread (allSync): the trampoline's direct path
//   async  the query steps on a libuv pool thread (await get): every call is dispatched to
//          the JS thread through the threadsafe function and the worker waits for it
// Printed: calls/s (best of 5) and async/sync (two significant digits: it is far below 1). Also a SQL built-in for scale, and the
// event loop's responsiveness during the async run (timer ticks).
// Usage: node bench/bench_node.js [rows]   (SAFECONC_NODE_ADDON / SAFECONC_SO as in tests)
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const binding = require('../bindings/node');

const rows = Number(process.argv[2] || 100000);
const sql = (expr) =>
  `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rows}) ` +
  `SELECT sum(${expr}) AS s FROM c`;

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safeconc-bench-node-'));
  const db = binding.open(path.join(dir, 'b.db'));
  db.function('js_inc', (x) => x + 1);
  const expect = (rows * (rows + 1)) / 2 + rows;
  const best = async (fn) => {
    let t = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = process.hrtime.bigint();
      const s = await fn();
      const dt = Number(process.hrtime.bigint() - t0) / 1e9;
      if (s !== expect) throw new Error(`wrong result ${s}, expected ${expect}`);
      t = Math.min(t, dt);
    }
    return rows / t;
  };
  const builtin = await best(() => db.prepare(sql('x + 1')).getSync().s);
  const sync = await best(() => db.prepare(sql('js_inc(x)')).getSync().s);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const asyncRate = await best(async () => (await db.prepare(sql('js_inc(x)')).get()).s);
  clearInterval(timer);
  await db.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const f = (v) => Math.round(v).toLocaleString('en-US').padStart(12);
  console.log(`JS UDF per row over ${rows} rows (best of 5)`);
  console.log(`  ${'path'.padEnd(44)} ${'calls/s'.padStart(12)}   vs sync`);
  console.log(`  ${'SQL built-in x + 1 (no UDF), sync'.padEnd(44)} ${f(builtin)}`);
  console.log(`  ${'sync: step on the JS thread (direct path)'.padEnd(44)} ${f(sync)}    1.00x`);
  console.log(`  ${'async: step on the pool, UDF via trampoline'.padEnd(44)} ${f(asyncRate)}    ${(asyncRate / sync).toPrecision(2)}x` +
    ` (sync ${(sync / asyncRate).toFixed(0)}x faster)`);
  console.log(`  event loop during the async runs: a 1 ms timer fired ${ticks} times`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
