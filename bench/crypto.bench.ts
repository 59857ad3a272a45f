/**
 * The cost of chunk encryption (store/chunk-crypto.ts), side by side with the plain path it wraps:
 *
 * - snapshot side: reference = BLAKE3 + zstd encode of each chunk (what an unencrypted snapshot does
 *   per chunk); lazysnap = keyed BLAKE3 id + zstd encode + AES-256-GCM seal.
 * - restore side: reference = decodeChunk (zstd decode + BLAKE3 check); lazysnap = decodeChunk with
 *   the cipher (GCM open + zstd decode + keyed BLAKE3 check).
 *
 * Both modes: convergent (a per-chunk HKDF for the chunk's key and nonce) and random (one key per
 * snapshot, a random nonce per object). GB/s of plaintext, one thread, chunks in memory (no I/O), so
 * the figures are the CPU cost alone. The chunks are 512 KiB of alternating pages: random bytes, and
 * low-entropy text-like pages, so zstd has work to do on both sides (about 2:1 here). Rounds
 * alternate the cases. Informational: no target.
 *
 *   node --import tsx bench/crypto.bench.ts
 */
import { randomBytes } from 'node:crypto';

import { decodeChunk, encodeChunk, hashChunk } from '../store/chunk.js';
import { ChunkCrypto, type EncryptionMode } from '../store/chunk-crypto.js';
import { environment, median, range, roundCount, writeResult, type ResultRow } from './lib/results.js';

const CS = 512 * 1024;
const N = 256; // 128 MiB of plaintext per pass
const ROUNDS = roundCount(7);
const GB = (N * CS) / 1e9;

function makeChunk(seed: number): Buffer {
  const b = randomBytes(CS);
  const text = Buffer.from(`lazysnap page ${seed} `.repeat(4096 / 16));
  for (let p = 1; p < CS / 4096; p += 2) text.copy(b, p * 4096, 0, 4096);
  return b;
}

const plain = Array.from({ length: N }, (_, i) => makeChunk(i));
const key = randomBytes(32);
const ciphers: Record<EncryptionMode, ChunkCrypto> = {
  convergent: ChunkCrypto.create(key, 'convergent', 'bench'),
  random: ChunkCrypto.create(key, 'random', 'bench'),
};

// What each side of the restore reads: the plain and the sealed objects, with their ids.
const plainStored = plain.map((p) => ({ id: hashChunk(p), body: encodeChunk('zstd', p) }));
const sealed = Object.fromEntries(
  (['convergent', 'random'] as const).map((m) => [
    m,
    plain.map((p) => ((id) => ({ id, body: ciphers[m].seal(id, encodeChunk('zstd', p)) }))(ciphers[m].id(p))),
  ]),
) as Record<EncryptionMode, { id: string; body: Buffer }[]>;
const stored = plainStored.reduce((n, o) => n + o.body.length, 0);

function timed(f: () => void): number {
  const t = performance.now();
  f();
  return GB / ((performance.now() - t) / 1000);
}

const cases: Record<string, () => number> = {
  encodePlain: () => timed(() => plain.forEach((p) => (hashChunk(p), encodeChunk('zstd', p)))),
  encodeConvergent: () =>
    timed(() =>
      plain.forEach((p) => ciphers.convergent.seal(ciphers.convergent.id(p), encodeChunk('zstd', p))),
    ),
  encodeRandom: () =>
    timed(() => plain.forEach((p) => ciphers.random.seal(ciphers.random.id(p), encodeChunk('zstd', p)))),
  decodePlain: () => timed(() => plainStored.forEach((o) => decodeChunk('k', 'zstd', o.body, o.id, CS))),
  decodeConvergent: () =>
    timed(() =>
      sealed.convergent.forEach((o) => decodeChunk('k', 'zstd', o.body, o.id, CS, ciphers.convergent)),
    ),
  decodeRandom: () =>
    timed(() => sealed.random.forEach((o) => decodeChunk('k', 'zstd', o.body, o.id, CS, ciphers.random))),
};

const runs: Record<string, number[]> = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
const rounds: Record<string, number>[] = [];
const names = Object.keys(cases);
for (let r = -1; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? names : [...names].reverse();
  const round: Record<string, number> = {};
  for (const k of order) round[k] = cases[k]!();
  if (r >= 0) {
    for (const k of names) runs[k]!.push(round[k]!);
    rounds.push(round);
  }
}

const med = Object.fromEntries(names.map((k) => [k, median(runs[k]!)])) as Record<string, number>;
function row(name: string, ref: string, ours: string): ResultRow {
  return {
    case: name,
    unit: 'GB/s',
    reference: med[ref]!,
    lazysnap: med[ours]!,
    referenceRange: range(runs[ref]!),
    lazysnapRange: range(runs[ours]!),
    ratio: med[ours]! / med[ref]!,
    target: null,
    met: null,
  };
}
const rows = [
  row(
    'snapshot side, convergent: keyed id + zstd + seal vs BLAKE3 + zstd',
    'encodePlain',
    'encodeConvergent',
  ),
  row('snapshot side, random: keyed id + zstd + seal vs BLAKE3 + zstd', 'encodePlain', 'encodeRandom'),
  row(
    'restore side, convergent: open + unzstd + keyed id vs unzstd + BLAKE3',
    'decodePlain',
    'decodeConvergent',
  ),
  row('restore side, random: open + unzstd + keyed id vs unzstd + BLAKE3', 'decodePlain', 'decodeRandom'),
];
writeResult({
  scenario: 'crypto',
  title: 'Chunk encryption cost (AES-256-GCM) against the plain zstd path',
  howMeasured: `${N} chunks of 512 KiB in memory (alternating random and text-like pages; zstd level 1 stores them at ${((stored / (N * CS)) * 100).toFixed(0)}%), each pass over all of them on one thread, ${ROUNDS} rounds after one warm-up, cases alternating order. Reference: the unencrypted per-chunk work (snapshot: BLAKE3 + zstd encode; restore: decodeChunk = zstd decode + BLAKE3 check). lazysnap: the same with encryption (snapshot: keyed BLAKE3 + zstd + AES-256-GCM seal; restore: GCM open + zstd decode + keyed BLAKE3 check). GB/s of plaintext, medians; ratio = encrypted / plain.`,
  env: environment(),
  config: { chunkSize: CS, chunks: N, rounds: ROUNDS, storedFraction: stored / (N * CS) },
  rows,
  rounds,
  medians: med,
});
for (const r of rows)
  console.error(
    `${r.case}: ${r.lazysnap!.toFixed(2)} GB/s vs ${r.reference!.toFixed(2)} GB/s (${(r.ratio! * 100).toFixed(0)}%)`,
  );
