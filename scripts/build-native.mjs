#!/usr/bin/env node
// Builds the N-API addon with node-gyp against the headers of the Node that runs this script.
// Why not plain `node-gyp rebuild`: without --nodedir node-gyp downloads headers, and this
// project's machines reach no host but the package registries. The headers ship with every Node
// install at <prefix>/include/node, where <prefix> is two levels above the node binary (true for
// /usr/bin/node, /usr/local/bin/node and nvm's ~/.nvm/versions/node/vX/bin/node alike).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nodedir = process.env.LAZYSNAP_NODEDIR ?? path.resolve(path.dirname(process.execPath), '..');
const header = path.join(nodedir, 'include', 'node', 'node_api.h');

if (process.platform !== 'linux') {
  console.error(`lazysnap: userfaultfd is Linux-only; cannot build the native addon on ${process.platform}`);
  process.exit(1);
}
if (!existsSync(header)) {
  console.error(
    `lazysnap: Node headers not found at ${header}.\n` +
      `  They normally ship with Node (<prefix>/include/node). Install them (Debian: the nodejs package ` +
      `from NodeSource includes them; libnode-dev otherwise) or set LAZYSNAP_NODEDIR to the prefix that has include/node.`,
  );
  process.exit(1);
}

const require = createRequire(import.meta.url);
let gyp;
try {
  gyp = require.resolve('node-gyp/bin/node-gyp.js');
} catch {
  console.error('lazysnap: node-gyp is not installed (it is a dependency: run npm ci)');
  process.exit(1);
}

const args = [
  gyp,
  'rebuild',
  `--nodedir=${nodedir}`,
  '--directory',
  path.join(root, 'native'),
  '--jobs',
  'max',
];
if (process.env.LAZYSNAP_DEBUG_NATIVE) args.push('--debug');
const r = spawnSync(process.execPath, args, {
  stdio: 'inherit',
  env: { ...process.env, npm_config_nodedir: nodedir },
});
if (r.error) {
  console.error(`lazysnap: could not run node-gyp: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
