'use strict';
// Finds the native addon and libsafeconc, in this order:
//   1. SAFECONC_NODE_ADDON / SAFECONC_SO (the tests and benchmarks of a build directory);
//   2. native/ beside this package: an installed tarball (`npm pack` copies both there);
//   3. build/ of the source tree this package sits in (bindings/node -> ../../build).
// libsafeconc is looked for next to the addon unless SAFECONC_SO names it.
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const candidates = [
  process.env.SAFECONC_NODE_ADDON,
  path.join(root, 'native', 'safeconc_node.node'),
  path.join(root, '..', '..', 'build', 'safeconc_node.node'),
].filter(Boolean);

const addonPath = candidates.find((p) => fs.existsSync(p));
if (!addonPath) {
  throw new Error(
    'safeconc: the native addon was not found; looked at\n  ' + candidates.join('\n  ') +
      '\nBuild it with `make` in the libsafeconc source tree, or install the package tarball ' +
      '(`npm pack` in bindings/node after `make`).',
  );
}
const soPath = process.env.SAFECONC_SO || path.join(path.dirname(addonPath), 'libsafeconc.so');
const native = require(addonPath);

module.exports = { native, addonPath, soPath };
