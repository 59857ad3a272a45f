/**
 * The demo's source: a real process that builds a data set in memory (a WebAssembly memory, so it
 * lives in one page-aligned mapping), reports where it is and a digest of every chunk, then waits
 * until its stdin closes while `lazysnap demo` snapshots it.
 *
 * argv: SIZE CHUNK_SIZE SEED. stdout: one JSON line (SourceReady).
 */
import { createHash } from 'node:crypto';

import type {} from '../../core/webassembly.js';
import { addressOf } from '../../native/index.js';
import { buildDataset } from './dataset.js';

export interface SourceReady {
  pid: number;
  /** The data set's first byte, e.g. "0x7f1234560000". */
  address: string;
  size: number;
  records: number;
  buildMs: number;
  /** sha256 of each chunk, hex: what the restored process must see. */
  digests: string[];
}

const [size, chunkSize, seed] = process.argv.slice(2).map(Number) as [number, number, number];
const memory = new WebAssembly.Memory({ initial: size / 65536 });
const bytes = new Uint8Array(memory.buffer);
const t0 = performance.now();
const records = buildDataset(bytes, seed);
const buildMs = performance.now() - t0;
const digests: string[] = [];
for (let off = 0; off < size; off += chunkSize)
  digests.push(
    createHash('sha256')
      .update(bytes.subarray(off, Math.min(size, off + chunkSize)))
      .digest('hex'),
  );
const ready: SourceReady = {
  pid: process.pid,
  address: `0x${addressOf(bytes).toString(16)}`,
  size,
  records,
  buildMs,
  digests,
};
process.stdout.write(`${JSON.stringify(ready)}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
