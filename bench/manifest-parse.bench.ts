/**
 * Manifest parse time for a 64 GiB snapshot (docs/DESIGN.md, "Contracts": ≤ 50 ms): 131,072 chunks of
 * 512 KiB, half of them zero, two regions. Reference: JSON.parse of the same text alone, the floor
 * any JSON manifest pays; lazysnap's parseManifest adds validation and base64 decoding.
 *
 *   node --import tsx bench/manifest-parse.bench.ts      (or `npm run bench`)
 */
import { randomBytes } from 'node:crypto';

import { FORMAT, encodeChunks, parseManifest, serializeManifest } from '../store/manifest.js';
import { environment, median, range, roundCount, writeResult } from './lib/results.js';

const GiB = 2 ** 30;
const TOTAL = 64 * GiB;
const CS = 512 * 1024;
const N = TOTAL / CS;
const ROUNDS = roundCount(31);

const hashes = randomBytes(N * 32);
const flags = new Uint8Array(N).fill(1);
for (let i = 0; i < N; i += 2) {
  flags[i] = 0;
  hashes.fill(0, i * 32, i * 32 + 32);
}
const text = serializeManifest({
  format: FORMAT,
  id: 'vm-64g',
  createdAt: new Date().toISOString(),
  source: { kind: 'memory-file', detail: '/srv/vm/mem' },
  pageSize: 4096,
  chunkSize: CS,
  totalSize: TOTAL,
  regions: [
    { offset: 0, size: 3 * GiB },
    { offset: 3 * GiB, size: TOTAL - 3 * GiB },
  ],
  parent: null,
  vmstate: null,
  chunks: encodeChunks(hashes, flags, ['zstd']),
});

const ref: number[] = [];
const ours: number[] = [];
for (let r = -3; r < ROUNDS; r++) {
  let t = performance.now();
  JSON.parse(text.toString('utf8'));
  const a = performance.now() - t;
  t = performance.now();
  const ix = parseManifest(text, 'vm-64g');
  const b = performance.now() - t;
  if (ix.count !== N) throw new Error('parse returned the wrong chunk count');
  if (r >= 0) {
    ref.push(a);
    ours.push(b);
  }
}
const m = median(ours);
writeResult({
  scenario: 'manifest-parse',
  title: 'Manifest parse, 64 GiB snapshot',
  howMeasured: `A lazysnap/1 manifest of a 64 GiB snapshot (${N} chunks of 512 KiB, half zero; ${(text.length / 1e6).toFixed(1)} MB of JSON) parsed ${ROUNDS} times after 3 warm-ups; reference is JSON.parse of the same text, lazysnap is parseManifest (JSON.parse, field validation, base64 decode of hashes and flags, per-chunk codec check). Milliseconds, medians.`,
  env: environment(),
  config: { totalSize: TOTAL, chunkSize: CS, chunks: N, bytes: text.length, rounds: ROUNDS },
  rows: [
    {
      case: 'parse a 64 GiB manifest',
      unit: 'ms',
      reference: median(ref),
      lazysnap: m,
      referenceRange: range(ref),
      lazysnapRange: range(ours),
      ratio: m / median(ref),
      target: '≤ 50 ms',
      met: m <= 50,
    },
  ],
  rounds: ref.map((a, i) => ({ jsonParseMs: a, parseManifestMs: ours[i] })),
  medians: { jsonParseMs: median(ref), parseManifestMs: m },
});
console.error(`manifest parse: ${m.toFixed(1)} ms (JSON.parse alone ${median(ref).toFixed(1)} ms)`);
