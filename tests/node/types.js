'use strict';
// ctest node_types: bindings/node/index.d.ts type-checks bindings/node/types-test/sample.ts
// with tsc --strict. tsc comes from SAFECONC_TSC, bindings/node's devDependencies (`npm
// install` there), PATH, or else the test setup installs typescript and @types/node from npm
// into <build>/ts (as node_sqlite22 does with Node 22; nothing is downloaded at build time).
// If none can be had, the test is skipped (exit 77) with a message saying how to enable it.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const pkg = path.join(__dirname, '..', '..', 'bindings', 'node');
const candidates = [process.env.SAFECONC_TSC, path.join(pkg, 'node_modules', '.bin', 'tsc')];
for (const d of (process.env.PATH || '').split(path.delimiter)) if (d) candidates.push(path.join(d, 'tsc'));
const build = path.resolve(process.env.SAFECONC_BUILD_DIR || path.join(__dirname, '..', '..', 'build'));
const prefix = path.join(build, 'ts');
candidates.push(path.join(prefix, 'node_modules', '.bin', 'tsc'));
let tsc = candidates.find((p) => p && fs.existsSync(p));
if (!tsc) {
  fs.mkdirSync(prefix, { recursive: true });
  const r = spawnSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--no-package-lock',
    '--prefix', prefix, 'typescript@5', '@types/node@20'], { encoding: 'utf8', timeout: 240000 });
  const installed = path.join(prefix, 'node_modules', '.bin', 'tsc');
  if (!r.error && r.status === 0 && fs.existsSync(installed)) tsc = installed;
}
if (!tsc) {
  console.log('SKIP: tsc not found; run `npm install` in bindings/node (typescript and @types/node ' +
    'are its devDependencies) or set SAFECONC_TSC to enable the type check');
  process.exit(77);
}
const args = ['-p', path.join(pkg, 'types-test', 'tsconfig.json')];
// @types/node beside the tsc found (its node_modules), when there is one.
const typeRoots = path.join(fs.realpathSync(tsc), '..', '..', '..', '@types');
if (fs.existsSync(path.join(typeRoots, 'node'))) args.push('--typeRoots', typeRoots);
const r = spawnSync(tsc, args, { encoding: 'utf8' });
process.stdout.write(r.stdout || '');
process.stderr.write(r.stderr || '');
if (r.status !== 0) {
  console.error(`FAIL: ${tsc} ${args.join(' ')} exited with ${r.status}`);
  process.exit(1);
}
console.log(`ok: index.d.ts type-checks the sample (${tsc})`);
