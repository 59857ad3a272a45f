#!/usr/bin/env node
import { main } from './main.js';

const ac = new AbortController();
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.once(sig, () => ac.abort(new Error(`interrupted by ${sig}`)));
process.exitCode = await main(
  process.argv.slice(2),
  { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s), isTTY: process.stderr.isTTY },
  ac.signal,
);
