'use strict';
// Shared by the node tests: a temp directory per test file, and the binding.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const binding = require('../../bindings/node');

function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safeconc-node-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// SELECT over 1..n through a recursive CTE (no table needed).
function series(n, expr) {
  return `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${n}) ` +
    `SELECT ${expr} FROM c`;
}

async function udfStats(db) {
  const row = await db.prepare("SELECT safeconc_stats() AS s").get();
  return JSON.parse(row.s).udf;
}

module.exports = { binding, tempDir, series, udfStats };
