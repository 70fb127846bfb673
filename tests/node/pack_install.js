'use strict';
// ctest node_pack_install: the package as a user gets it. `npm pack` on a copy of
// bindings/node (its prepack copies the built addon and libsafeconc into native/), then
// `npm install ./safeconc-sqlite-x.tgz` into a scratch project (offline: the package has no
// dependencies) and a script there that opens a database, runs a UDF sync and async, and
// checks the safeconc VFS serves it, with no SAFECONC_* variable set.
// Skipped (exit 77) only when npm is not installed.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const build = path.resolve(process.env.SAFECONC_BUILD_DIR || path.join(__dirname, '..', '..', 'build'));
const src = path.join(__dirname, '..', '..', 'bindings', 'node');
const env = { ...process.env };
for (const k of Object.keys(env)) if (k.startsWith('SAFECONC_') || k.startsWith('npm_')) delete env[k];

function run(cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, timeout: 120000, ...opts });
  if (r.error && r.error.code === 'ENOENT') return null;
  if (r.status !== 0) {
    console.error(`FAIL: ${cmd} ${args.join(' ')} (in ${opts.cwd}) exited ${r.status}\n${r.stdout}\n${r.stderr}`);
    process.exit(1);
  }
  return r;
}

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'safeconc-pack-'));
try {
  const stage = path.join(scratch, 'stage');
  fs.mkdirSync(stage);
  for (const f of ['package.json', 'index.js', 'index.d.ts', 'README.md', 'lib', 'scripts']) {
    fs.cpSync(path.join(src, f), path.join(stage, f), { recursive: true });
  }
  const packed = run('npm', ['pack', '--silent'], { cwd: stage, env: { ...env, SAFECONC_BUILD_DIR: build } });
  if (packed === null) {
    console.log('SKIP: npm is not installed (apt-get install -y npm)');
    process.exit(77);
  }
  const tgz = path.join(stage, packed.stdout.trim().split('\n').pop());
  const app = path.join(scratch, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}\n');
  run('npm', ['install', '--offline', '--no-audit', '--no-fund', tgz], { cwd: app });
  const listed = run('tar', ['tzf', tgz], { cwd: app }).stdout;
  for (const f of ['package/native/safeconc_node.node', 'package/native/libsafeconc.so', 'package/index.d.ts']) {
    if (!listed.includes(f)) {
      console.error(`FAIL: ${f} is not in the tarball:\n${listed}`);
      process.exit(1);
    }
  }
  fs.writeFileSync(path.join(app, 'main.js'), `
    const Database = require('safeconc-sqlite');
    const db = new Database('app.db');
    db.function('twice', (x) => 2 * x);
    const sync = db.prepare('SELECT twice(21) AS v').get();
    const vfs = db.pragma('safeconc_timeout', { simple: true });
    db.prepare('SELECT twice(?) AS v').getAsync(4).then((r) => {
      console.log(JSON.stringify({ sync, async: r, vfs }));
      db.close();
    });
  `);
  const r = run(process.execPath, ['main.js'], { cwd: app });
  const want = '{"sync":{"v":42},"async":{"v":8},"vfs":"5000"}';
  if (r.stdout.trim() !== want) {
    console.error(`FAIL: the installed package printed\n${r.stdout}${r.stderr}\nexpected ${want}`);
    process.exit(1);
  }
  console.log(`ok: ${path.basename(tgz)} installs into a scratch project and works there`);
} finally {
  fs.rmSync(scratch, { recursive: true, force: true });
}
