'use strict';
// ctest node_types: bindings/node/index.d.ts type-checks bindings/node/types-test/sample.ts
// with tsc --strict. tsc comes from bindings/node's devDependencies (`npm install` there),
// SAFECONC_TSC, or PATH; nothing is downloaded here. Without one the test is skipped
// (exit 77) with a message saying how to enable it.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const pkg = path.join(__dirname, '..', '..', 'bindings', 'node');
const candidates = [process.env.SAFECONC_TSC, path.join(pkg, 'node_modules', '.bin', 'tsc')];
for (const d of (process.env.PATH || '').split(path.delimiter)) if (d) candidates.push(path.join(d, 'tsc'));
const tsc = candidates.find((p) => p && fs.existsSync(p));
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
