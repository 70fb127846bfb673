'use strict';
// Shared by the node tests: a temp directory per test file, the binding, small SQL helpers.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const bindingPath = require.resolve('../../bindings/node');
const Database = require(bindingPath);

function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safeconc-node-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// A fresh database file in dir for each call.
function opener(dir, prefix = 't') {
  let n = 0;
  return (options) => new Database(path.join(dir, `${prefix}${++n}.db`), options);
}

// SELECT over 1..n through a recursive CTE (no table needed).
function series(n, expr) {
  return `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${n}) ` +
    `SELECT ${expr} FROM c`;
}

function udfStats(db) {
  return JSON.parse(db.prepare('SELECT safeconc_stats() AS s').get().s).udf;
}

// Runs a script in a child node; returns { status, signal, stdout, stderr, ms }.
function runNode(script, options = {}) {
  const { spawnSync } = require('node:child_process');
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30000, ...options });
  return { ...r, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

module.exports = { Database, bindingPath, tempDir, opener, series, udfStats, runNode };
