/**
 * L1, L2 and P6 (DESIGN.md, "Performance targets"): `lazysnap serve` as a user runs it (the CLI in
 * a fresh process, default options, a real directory store, nothing resident before the client
 * connects) against a single-threaded C handler doing the same per-chunk work from the same store
 * (bench/ref/ref-store-handler.c: read the object, zstd-decode it, one UFFDIO_COPY; no hashing).
 *
 *   node --import tsx bench/local-restore.bench.ts   (or `npm run bench` for every scenario + report)
 *
 * - L1 random / sequential: serve (no --cache-dir) vs the reference, ≤ 1.25×.
 * - L2 cold fill: serve --cache-dir <empty> vs serve without, ≤ 1.05× (cache writes off the
 *   critical path).
 * - L2 warm: a new serve --cache-dir <filled by an earlier serve> vs the reference --raw over the
 *   same cache files, ≤ 1.15×; and vs L1, < 1.00×.
 * - P6: the client's handshake (sendmsg) to its first read of restored memory served, both sides.
 *
 * Every store object and cache file is read once before the rounds, so both sides find them in the
 * page cache and the comparison is CPU work, not disk. The machine is shared and noisy: cases
 * alternate within each round (rotated by one each round) and the report takes medians.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { FileStore } from '../store/file-store.js';
import { cacheEntryKey, chunkKey } from '../store/keys.js';
import { chunkCodec, chunkHash, type SnapshotIndex } from '../store/manifest.js';
import { loadIndex } from '../store/reader.js';
import { startClient, type ClientReport } from '../test/helpers/fc-client.js';
import { buildC } from '../test/helpers/fixtures.js';
import { tempDir } from '../test/helpers/images.js';
import { snapshotTo } from '../test/helpers/serve.js';
import { writeMixedZeroRichImage } from './lib/image.js';
import { clientReport, startHandler, timeout } from './lib/procs.js';
import { environment, median, range, roundCount, writeResult, type ResultRow } from './lib/results.js';
import { ensureDist, sessionSummary, startServeCli, stopServe, type SummaryLine } from './lib/serve-cli.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 1024 * MiB;
const CS = 512 * 1024;
const PAGES = IMAGE_BYTES / 4096;
const ROUNDS = roundCount(5);
const STEP_MS = 180_000;
const TARGET = { l1: 1.25, fill: 1.05, warmRaw: 1.15, warmL1: 1.0, p6SlackMs: 1 };
const ID = 'local-restore';

const WORKLOADS = {
  random: ['--touch', 'all', '--order', 'random', '--seed', '42', '--threads', '2'],
  seq: ['--touch', 'all', '--order', 'seq', '--threads', '1'],
} as const;
type Workload = keyof typeof WORKLOADS;

/** One case of a round: which handler, over what, for which workload. */
interface Case {
  id: string;
  /** reference-arena: the C handler with lazysnap's memory layout (--arena), to split layout from runtime. */
  handler: 'reference' | 'reference-raw' | 'reference-arena' | 'serve';
  /** empty: a fresh directory (cold fill); warm: the one filled before the rounds; prime: fill it. */
  cache?: 'empty' | 'warm' | 'prime';
  workload: Workload;
}
const CASES: Case[] = [
  { id: 'reference-random', handler: 'reference', workload: 'random' },
  { id: 'serve-random', handler: 'serve', workload: 'random' },
  { id: 'serve-fill', handler: 'serve', cache: 'empty', workload: 'random' },
  { id: 'serve-warm', handler: 'serve', cache: 'warm', workload: 'random' },
  { id: 'reference-raw', handler: 'reference-raw', workload: 'random' },
  { id: 'reference-arena', handler: 'reference-arena', workload: 'random' },
  { id: 'reference-seq', handler: 'reference', workload: 'seq' },
  { id: 'serve-seq', handler: 'serve', workload: 'seq' },
];

const tmp = tempDir('lazysnap-local-');
process.once('exit', tmp.cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));
const image = path.join(tmp.dir, 'local.img');
const storeDir = path.join(tmp.dir, 'store');
const warmCache = path.join(tmp.dir, 'cache-warm');
const storeIndex = path.join(tmp.dir, 'store.index');
const cacheIndex = path.join(tmp.dir, 'cache.index');
const socket = path.join(tmp.dir, 'run', 'uffd.sock');

/**
 * ref-store-handler's index (its header comment): one line per chunk, Z or the object's path
 * relative to the directory it is given: chunks/ab/<hash>.zstd in the store, ab/<hash> in
 * lazysnap's disk cache (runtime/disk-cache.ts).
 */
function writeRefIndex(file: string, ix: SnapshotIndex, layout: 'store' | 'cache'): void {
  const lines = [`ref-index 1 ${ix.manifest.chunkSize} ${ix.manifest.totalSize} ${ix.count}`];
  for (let i = 0; i < ix.count; i++) {
    const h = chunkHash(ix, i);
    lines.push(h === null ? 'Z' : layout === 'store' ? chunkKey(h, chunkCodec(ix, i)!) : cacheEntryKey(h));
  }
  writeFileSync(file, `${lines.join('\n')}\n`);
}

/** Reads every file under dir once, so both sides find it in the page cache. Returns bytes read. */
function warmPageCache(dir: string): number {
  let bytes = 0;
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true }))
    if (e.isFile()) bytes += readFileSync(path.join(e.parentPath, e.name)).length;
  return bytes;
}

function countFiles(dir: string): number {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).length;
}

async function runClient(workload: Workload): Promise<ClientReport> {
  const c = startClient(['--socket', socket, '--image', image, ...WORKLOADS[workload]]);
  c.release();
  const report = await clientReport(c, STEP_MS);
  assert.equal(report.pagesVerified, PAGES, 'the client must verify every page');
  return report;
}

async function referenceRound(c: Case): Promise<Record<string, unknown>> {
  const raw = c.handler === 'reference-raw';
  const flags = raw ? ['--raw'] : c.handler === 'reference-arena' ? ['--arena'] : [];
  const bin = buildC(
    'bench/ref/ref-store-handler.c',
    'ref-store-handler',
    ['-lzstd'],
    ['bench/ref/ref-uffd.h'],
  );
  const argv = [
    bin,
    '--socket',
    socket,
    '--dir',
    raw ? warmCache : storeDir,
    '--index',
    raw ? cacheIndex : storeIndex,
  ];
  rmSync(socket, { force: true });
  const t0 = performance.now();
  const h = startHandler([...argv, ...flags]);
  try {
    await timeout(h.line(/^listening$/), STEP_MS, 'ref-store-handler start');
    const startMs = performance.now() - t0;
    const r = await runClient(c.workload);
    const e = await timeout(h.exit, STEP_MS, 'ref-store-handler exit');
    const last = e.lines.filter((l) => l.startsWith('{')).pop();
    if (e.code !== 0 || last === undefined)
      throw new Error(`ref-store-handler exited ${e.code}: ${e.stderr.trim()}`);
    const stats = JSON.parse(last) as { chunksRead: number; zeroChunks: number };
    assert.equal(stats.chunksRead, nonZero, 'the reference must read every non-zero chunk once');
    return { ms: r.elapsedNs / 1e6, firstTouchMs: r.firstTouchNs! / 1e6, startMs, handler: stats };
  } finally {
    if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill('SIGKILL');
  }
}

async function serveRound(c: Case): Promise<Record<string, unknown>> {
  rmSync(socket, { force: true }); // the reference leaves its socket behind
  const cacheDir =
    c.cache === 'empty' ? path.join(tmp.dir, 'cache-fill') : c.cache === undefined ? undefined : warmCache;
  if (c.cache === 'empty' || c.cache === 'prime') rmSync(cacheDir!, { recursive: true, force: true });
  // Default options: only the store, the snapshot, the socket and (L2) the cache directory.
  const args = ['--store', storeDir, '--id', ID, ...(cacheDir ? ['--cache-dir', cacheDir] : [])];
  const { serve, startMs } = await startServeCli(socket, args, STEP_MS);
  let s: SummaryLine;
  let r: ClientReport;
  try {
    r = await runClient(c.workload);
    s = await sessionSummary(serve, STEP_MS);
  } finally {
    await stopServe(serve);
  }
  assert.equal(s.outcome, 'ended', 'the session must end cleanly');
  assert.deepEqual(s.failedChunks, [], 'no chunk may fail');
  assert.equal(s.prefetchedChunks, 0, 'nothing to prefetch: the store holds no profile');
  const disk = s.hitsByTier.disk ?? 0;
  const fetched = s.fetchedChunks;
  if (c.cache === 'warm')
    assert.equal(disk, nonZero, 'warm: every non-zero chunk must come from the disk cache');
  else assert.equal(fetched, nonZero, 'every non-zero chunk must be fetched from the store once');
  // A fill must be complete (serve's SIGTERM waits for its cache writes): what L2 warm relies on.
  if (c.cache === 'empty' || c.cache === 'prime')
    assert.equal(countFiles(cacheDir!), nonZero, 'the filled cache must hold every non-zero chunk');
  if (c.cache === 'empty') rmSync(cacheDir!, { recursive: true, force: true }); // before writeback competes
  return {
    ms: r.elapsedNs / 1e6,
    firstTouchMs: r.firstTouchNs! / 1e6,
    startMs,
    summary: {
      faults: s.faults,
      zeroFaults: s.zeroFaults,
      // Faults that went from the fault thread straight to a loader (none with --cache-dir).
      directFaults: s.directFaults,
      fetchedChunks: fetched,
      hitsByTier: s.hitsByTier,
      timeToFirstFaultServedMs: s.timeToFirstFaultServedMs,
      // Where the faults that crossed into JS waited (queue, read, decode, verify, install): the why of a ratio.
      stall: s.stall,
    },
  };
}

const rounds: Record<string, unknown>[] = [];
let nonZero = 0;
let storedBytes = 0;
let ix: SnapshotIndex;
try {
  ensureDist();
  mkdirSync(path.dirname(socket), { recursive: true, mode: 0o700 });
  // ~50% zero chunks picked by a seeded xorshift (called once per chunk, in order); chunk 0 is
  // never zero, so the sequential workload's first touch (P6) needs a read and a decode.
  let x = 0x2545f491;
  writeMixedZeroRichImage(image, IMAGE_BYTES, CS, (i) => {
    const zero = ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) % 2 === 0);
    return i !== 0 && zero;
  });
  await timeout(snapshotTo(storeDir, image, ID, CS), STEP_MS, 'snapshot');
  ix = await loadIndex(new FileStore(storeDir), ID);
  assert.deepEqual(ix.manifest.chunks.codecs, ['zstd'], 'the snapshot should be zstd');
  nonZero = ix.flags.filter((f) => f !== 0).length;
  for (let i = 0; i < ix.count; i++) {
    const h = chunkHash(ix, i);
    if (h !== null) storedBytes += statSync(path.join(storeDir, chunkKey(h, chunkCodec(ix, i)!))).size;
  }
  writeRefIndex(storeIndex, ix, 'store');
  writeRefIndex(cacheIndex, ix, 'cache');
  console.error(
    `local-restore: ${ix.count} chunks, ${nonZero} non-zero, stored ${(storedBytes / MiB).toFixed(0)} MiB ` +
      `(${((100 * storedBytes) / (nonZero * CS)).toFixed(0)}% of their bytes)`,
  );
  // The warm cache: filled once by a serve of its own (untimed), then read by every warm round.
  await serveRound({ id: 'prime-warm-cache', handler: 'serve', cache: 'prime', workload: 'seq' });
  const warmed = warmPageCache(storeDir) + warmPageCache(warmCache);
  console.error(
    `local-restore: ${(warmed / MiB).toFixed(0)} MiB of store and cache files read into the page cache`,
  );

  // Round 0 is a warm-up, recorded but left out of the medians.
  for (let round = 0; round <= ROUNDS; round++) {
    for (const c of CASES.map((_, j) => CASES[(j + round) % CASES.length]!)) {
      const r = c.handler === 'serve' ? await serveRound(c) : await referenceRound(c);
      rounds.push({ round, warmup: round === 0, case: c.id, ...r });
      console.error(
        `local-restore ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`} ${c.id}: ${(r.ms as number).toFixed(1)} ms, ` +
          `first touch ${(r.firstTouchMs as number).toFixed(2)} ms, start ${(r.startMs as number).toFixed(0)} ms`,
      );
    }
  }
} finally {
  tmp.cleanup();
}

const xs = (id: string, k = 'ms') =>
  rounds.filter((r) => r.case === id && !r.warmup).map((r) => r[k] as number);
const med = (id: string, k = 'ms') => median(xs(id, k));
const ms = (ref: string, lazy: string, k = 'ms') => ({
  unit: 'ms',
  reference: med(ref, k),
  lazysnap: med(lazy, k),
  referenceRange: range(xs(ref, k)),
  lazysnapRange: range(xs(lazy, k)),
  ratio: med(lazy, k) / med(ref, k),
});
const within = (row: ReturnType<typeof ms>, max: number) => row.ratio <= max;
const l1r = ms('reference-random', 'serve-random');
const l1s = ms('reference-seq', 'serve-seq');
const fill = ms('serve-random', 'serve-fill');
const warmRaw = ms('reference-raw', 'serve-warm');
const warmL1 = ms('serve-random', 'serve-warm');
const p6 = ms('reference-seq', 'serve-seq', 'firstTouchMs');
const p6r = ms('reference-random', 'serve-random', 'firstTouchMs');
const start = ms('reference-random', 'serve-random', 'startMs');
const layout = ms('reference-random', 'reference-arena');
const runtime = ms('reference-arena', 'serve-random');
const rows: ResultRow[] = [
  {
    case: 'L1 random: every page, shuffled, 2 threads; serve (no cache) vs C store handler',
    ...l1r,
    target: `≤ ${TARGET.l1}×`,
    met: within(l1r, TARGET.l1),
  },
  {
    case: 'L1 sequential: every page in order, 1 thread; serve (no cache) vs C store handler',
    ...l1s,
    target: `≤ ${TARGET.l1}×`,
    met: within(l1s, TARGET.l1),
  },
  {
    case: 'L2 cold fill: serve --cache-dir (empty) vs serve without a cache (random workload)',
    ...fill,
    target: `≤ ${TARGET.fill}×`,
    met: within(fill, TARGET.fill),
  },
  {
    case: 'L2 warm: new serve --cache-dir (filled earlier) vs C handler --raw on the same cache files (random workload)',
    ...warmRaw,
    target: `≤ ${TARGET.warmRaw}×`,
    met: within(warmRaw, TARGET.warmRaw),
  },
  {
    case: 'L2 warm vs L1: serve with a warm cache vs serve without a cache (random workload)',
    ...warmL1,
    target: '< 1.00× (faster)',
    met: warmL1.ratio < TARGET.warmL1,
  },
  {
    case: 'P6 handshake (sendmsg) → first page served, sequential workload (chunk 0: read + decode)',
    ...p6,
    target: `≤ reference + ${TARGET.p6SlackMs} ms (1 ms + one local read)`,
    met: p6.lazysnap <= p6.reference + TARGET.p6SlackMs,
  },
  {
    case: 'P6 handshake → first page served, random workload, 2 threads (extra row)',
    ...p6r,
    target: null,
    met: null,
  },
  {
    case: "L1 random, the layout's share: C store handler with lazysnap's arena (a fresh slot per chunk, --arena) vs C store handler (extra row)",
    ...layout,
    target: null,
    met: null,
  },
  {
    case: "L1 random, the runtime's share: serve (no cache) vs C store handler with lazysnap's arena (extra row)",
    ...runtime,
    target: null,
    met: null,
  },
  {
    case: 'start-up: spawn → listening (serve: node, manifest, socket; extra row, untimed by the rows above)',
    ...start,
    target: null,
    met: null,
  },
];

const file = writeResult({
  scenario: 'local-restore',
  title: 'L1, L2, P6: restore from a local directory store through `lazysnap serve`',
  howMeasured:
    `A ${IMAGE_BYTES / MiB} MiB image of ${CS / 1024} KiB chunks, ~50% zero chunks (zero bytes, seeded choice; chunk 0 never zero); ` +
    `the ${nonZero} others cycle page by page through random bytes, random bytes over 16 symbols and text, so that zstd ` +
    `level 1 stores them at ${((100 * storedBytes) / (nonZero * CS)).toFixed(0)}% and decodes Huffman-coded literals ` +
    `throughout. Snapshotted once with the project's snapshot API (zstd) into a directory store. lazysnap: the CLI ` +
    `\`node dist/cli/bin.js serve --store DIR --id ID --socket PATH\` (dist rebuilt by the benchmark first), a fresh ` +
    `process per round, default options; L2 adds \`--cache-dir\`: an empty directory (cold fill, removed afterwards), or ` +
    `one filled once before the rounds by a serve of its own (warm; checked to hold every non-zero chunk). Reference: ` +
    `bench/ref/ref-store-handler.c, single-threaded C like Firecracker's on_demand handler: per fault it resolves the ` +
    `chunk: UFFDIO_ZEROPAGE over a zero chunk, else open + read of the stored object, ZSTD_decompressDCtx, one ` +
    `UFFDIO_COPY (--raw: the uncompressed cache file read straight into the buffer; --arena, extra rows: each chunk ` +
    `decoded into its own slot of an arena mapped as lazysnap's chunk table maps its own, 4 KiB pages populated ` +
    `before the write, and copied from there, so that the C handler pays what lazysnap's memory layout costs on this ` +
    `host and the rest of the difference is the runtime's); no hashing, which lazysnap does ` +
    `(BLAKE3) within the margin. Every store object and cache file is read once before the rounds, so both sides read ` +
    `from the page cache. Client: fc-client (test/fixtures/fc-client.c, Firecracker's handshake), every 4 KiB page read ` +
    `and then verified: random = \`--touch all --order random --seed 42 --threads 2\`, sequential = \`--touch all --order ` +
    `seq --threads 1\`; time = the client's timed phase (elapsedNs), from its threads' release right after the ` +
    `handshake to the last read. No CPU pinning (serve is multi-threaded as users run it). Each round checks that the ` +
    `client verified every page, that serve's session ended with every non-zero chunk fetched once (warm: every one a ` +
    `disk-cache hit) and nothing failed, and that the reference read every non-zero chunk once. P6: the client's ` +
    `firstTouchNs, from just before its handshake sendmsg to the completion of its first read of restored memory ` +
    `(sequential: page 0, a non-zero chunk; the origin is local, so "one origin round trip" is one read of a stored ` +
    `object, which the reference's figure includes). ${ROUNDS} rounds after a warm-up round, the ${CASES.length} cases ` +
    `rotated by one each round; medians (min–max beneath), ratio = lazysnap / reference.`,
  env: environment(),
  config: {
    imageBytes: IMAGE_BYTES,
    chunkSize: CS,
    nonZeroChunks: nonZero,
    storedBytes,
    rounds: ROUNDS,
    workloads: WORKLOADS,
    targets: TARGET,
  },
  rows,
  rounds,
  medians: Object.fromEntries(
    CASES.flatMap((c) => [
      [`${c.id}.ms`, med(c.id)],
      [`${c.id}.firstTouchMs`, med(c.id, 'firstTouchMs')],
    ]),
  ),
});
console.error(`local-restore results written to ${file}`);
