'use strict';
// `npm test`: runs tests/node/*.test.js of the source tree with node's test runner, against
// the build in ../../build unless SAFECONC_NODE_ADDON / SAFECONC_SO say otherwise. Named
// one by one: Node 21+ takes --test arguments as globs, Node 18/20 do not.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const dir = path.join(__dirname, '..', '..', '..', 'tests', 'node');
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.test.js')).map((f) => path.join(dir, f));
const r = spawnSync(process.execPath, ['--test', ...files], { stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
