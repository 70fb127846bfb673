'use strict';
// `npm pack` (prepack): copies the built addon and libsafeconc into native/, where the
// installed package finds them (lib/native.js). They come from SAFECONC_BUILD_DIR, else the
// source tree's build/ (`make` builds both). The tarball is for Linux on this architecture,
// and needs the system's libsqlite3 (Debian: libsqlite3-0) where it is installed.
const fs = require('node:fs');
const path = require('node:path');

const pkg = path.join(__dirname, '..');
const build = process.env.SAFECONC_BUILD_DIR || path.join(pkg, '..', '..', 'build');
const out = path.join(pkg, 'native');
fs.mkdirSync(out, { recursive: true });
for (const f of ['safeconc_node.node', 'libsafeconc.so']) {
  const from = path.join(build, f);
  if (!fs.existsSync(from)) {
    console.error(`stage-native: ${from} is missing; run \`make\` in the libsafeconc tree first ` +
      '(or set SAFECONC_BUILD_DIR to its build directory)');
    process.exit(1);
  }
  fs.copyFileSync(from, path.join(out, f));
}
console.error(`stage-native: copied the addon and libsafeconc from ${build} into native/`);
