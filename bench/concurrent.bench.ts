/**
 * P5, concurrent restores (docs/DESIGN.md, "Performance targets"): 16 restores of one snapshot at once on
 * one serve fetch every chunk from the origin once (fetch amplification 1.0).
 *
 *   node --import tsx bench/concurrent.bench.ts      (or `npm run bench` for every scenario + report)
 *
 * Origin: nginx serving a directory store behind the delay proxy (its own process). Each round is
 * cold: a fresh RestoreServer without disk cache, first serving one restore alone (the reference),
 * then a fresh one serving 16 fc-clients started together. Amplification = origin fetches counted by
 * the server (lazysnap_fetches_total{tier=origin*}) / distinct non-zero chunks of the snapshot; the
 * proxy's own request count (manifest included) is recorded beside it as an independent check.
 */
process.env.LAZYSNAP_LOG_LEVEL ??= 'warn';

import assert from 'node:assert/strict';
import path from 'node:path';

import type { RestoreServer } from '../runtime/restore-server.js';
import { FileStore } from '../store/file-store.js';
import { chunkKeys, loadIndex } from '../store/reader.js';
import { startClient, type RunningClient } from '../test/helpers/fc-client.js';
import { tempDir } from '../test/helpers/images.js';
import { serve, snapshotTo, summaries } from '../test/helpers/serve.js';
import { environment, median, range, roundCount, writeResult, type ResultRow } from './lib/results.js';
import { startSlowOrigin, type SlowOrigin } from './lib/slow-origin.js';
import { timeout } from './lib/procs.js';
import { writeZeroRichImage } from './lib/image.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 64 * MiB;
const CS = 512 * 1024;
const CLIENTS = 16;
const FIRST_BYTE_MS = 30;
const BPS = 90e6;
const ROUNDS = roundCount(5);
const STEP_MS = 120_000;
const ID = 'p5-concurrent';

const tmp = tempDir('lazysnap-p5-');
process.once('exit', tmp.cleanup); // also when interrupted (slow-origin.ts exits on SIGINT/SIGTERM)
const image = path.join(tmp.dir, 'p5.img');
const storeDir = path.join(tmp.dir, 'store');

/**
 * Client k of n: half touch every page in order (they all want the same chunk at the same moment),
 * half in a shuffled order of their own (a mix of first fetches and chunks already resident).
 */
function clientArgs(socket: string, k: number): string[] {
  const order = k % 2 === 0 ? ['--order', 'seq'] : ['--order', 'random', '--seed', String(k)];
  return ['--socket', socket, '--image', image, '--touch', 'all', '--threads', '1', ...order];
}

async function originFetches(server: RestoreServer): Promise<number> {
  return (await server.metrics.fetches.get()).values
    .filter((v) => String(v.labels.tier).startsWith('origin'))
    .reduce((a, v) => a + v.value, 0);
}

/** One cold server, `n` clients started together; wall time from the first spawn to the last exit. */
async function restores(origin: SlowOrigin, n: number): Promise<Record<string, number>> {
  const before = await origin.stats();
  const server = await timeout(
    serve(tmp.dir, { stores: [origin.url], id: ID, prefetch: 'off' }),
    STEP_MS,
    'server start',
  );
  const clients: RunningClient[] = [];
  try {
    const t0 = performance.now();
    for (let k = 0; k < n; k++) clients.push(startClient(clientArgs(server.socketPath, k)));
    for (const c of clients) c.release();
    const results = await timeout(Promise.all(clients.map((c) => c.result)), STEP_MS, `${n} clients`);
    const wallMs = performance.now() - t0;
    for (const [k, r] of results.entries()) {
      assert.ok(
        r.report?.ok && r.code === 0,
        `client ${k} failed (code ${r.code}, signal ${r.signal}): ${r.stderr}`,
      );
      assert.equal(r.report.pagesVerified, IMAGE_BYTES / 4096, `client ${k} must verify every page`);
    }
    const s = await summaries(server, n, STEP_MS);
    assert.ok(
      s.every((x) => x.outcome === 'ended' && x.failedChunks.length === 0),
      'a session did not end cleanly',
    );
    const after = await origin.stats();
    return {
      wallMs,
      fetches: await originFetches(server),
      proxyRequests: after.requests - before.requests,
      sessionFetchedChunks: s.reduce((a, x) => a + x.fetchedChunks, 0),
      clientMedianMs: median(results.map((r) => r.report!.elapsedNs / 1e6)),
    };
  } finally {
    for (const c of clients) c.child.kill('SIGKILL'); // no-ops once they have exited
    await timeout(server.close(0), STEP_MS, 'server close');
  }
}

const rounds: Record<string, unknown>[] = [];
let origin: SlowOrigin | undefined;
let distinct = 0;
try {
  writeZeroRichImage(image, IMAGE_BYTES, CS, (i) => i % 2 === 1); // every other chunk zero
  await timeout(snapshotTo(storeDir, image, ID, CS), STEP_MS, 'snapshot');
  distinct = chunkKeys(await loadIndex(new FileStore(storeDir), ID)).size;
  origin = await startSlowOrigin(storeDir, { firstByteMs: FIRST_BYTE_MS, bytesPerSecond: BPS });
  console.error(`P5: ${IMAGE_BYTES / CS} chunks, ${distinct} distinct non-zero`);
  // Round 0 is a warm-up (page cache, JIT, nginx), recorded but left out of the medians.
  for (let round = 0; round <= ROUNDS; round++) {
    for (const n of [1, CLIENTS]) {
      const r = await restores(origin, n);
      rounds.push({ round, warmup: round === 0, clients: n, amplification: r.fetches! / distinct, ...r });
      console.error(
        `P5 ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`} ${n} client(s): ${r.wallMs!.toFixed(0)} ms wall, ` +
          `${r.fetches} origin fetches (${r.proxyRequests} proxy requests) for ${distinct} chunks`,
      );
    }
  }
} finally {
  await origin?.stop();
  tmp.cleanup();
}

const measured = rounds.filter((r) => !r.warmup);
const xs = (n: number, k: string) => measured.filter((r) => r.clients === n).map((r) => r[k] as number);
const fetches = xs(CLIENTS, 'fetches');
const requests = xs(CLIENTS, 'proxyRequests');
const wall = { one: median(xs(1, 'wallMs')), many: median(xs(CLIENTS, 'wallMs')) };
const amp = median(fetches) / distinct;
const rows: ResultRow[] = [
  {
    case: `fetch amplification, ${CLIENTS} restores at once (reference = distinct non-zero chunks, lazysnap = origin fetches)`,
    unit: 'chunks',
    reference: distinct,
    lazysnap: median(fetches),
    lazysnapRange: range(fetches),
    ratio: amp,
    target: '= 1.00×',
    met: fetches.every((f) => f === distinct),
  },
  {
    case: `requests reaching the proxy, ${CLIENTS} restores (extra row: manifest included, counted outside lazysnap)`,
    unit: 'requests',
    reference: distinct + 1,
    lazysnap: median(requests),
    lazysnapRange: range(requests),
    ratio: median(requests) / (distinct + 1),
    target: null,
    met: null,
  },
  {
    case: `wall time, 1 restore alone vs ${CLIENTS} at once (spawn to last exit; extra row)`,
    unit: 'ms',
    reference: wall.one,
    lazysnap: wall.many,
    referenceRange: range(xs(1, 'wallMs')),
    lazysnapRange: range(xs(CLIENTS, 'wallMs')),
    ratio: wall.many / wall.one,
    target: null,
    met: null,
  },
];

const file = writeResult({
  scenario: 'concurrent',
  title: 'P5: 16 concurrent restores of one snapshot',
  howMeasured:
    `A ${IMAGE_BYTES / MiB} MiB image of ${CS / 1024} KiB chunks, every other chunk zero bytes and the rest random (${distinct} distinct ` +
    `non-zero chunks), snapshotted with zstd into a directory store served by nginx behind bench/lib/delay-proxy.ts ` +
    `(${FIRST_BYTE_MS} ms to first byte, ${BPS / 1e6} MB/s per connection; the proxy in its own Node process). Each round starts a ` +
    `fresh RestoreServer (prefetch off, no disk cache, default fetch concurrency) for one fc-client alone, then another fresh one for ` +
    `${CLIENTS} fc-clients spawned together, all \`--touch all --threads 1\` (every 4 KiB page read and verified): the even-numbered in ` +
    `order (all wanting the same chunk at once), the odd-numbered in a shuffled order seeded with their number. Every client's report ` +
    `must be ok with every page verified and every session must end cleanly. Origin fetches are the server's ` +
    `lazysnap_fetches_total{tier=origin*}; the ratio is fetches / distinct chunks (target exactly 1.00 in every round); the proxy's ` +
    `request count (one more: the manifest) checks it from outside. Wall time runs from the first spawn to the last client's exit. ` +
    `${ROUNDS} rounds after a warm-up round; medians (min–max beneath).`,
  env: environment(),
  config: {
    imageBytes: IMAGE_BYTES,
    chunkSize: CS,
    clients: CLIENTS,
    firstByteMs: FIRST_BYTE_MS,
    bytesPerSecond: BPS,
    rounds: ROUNDS,
    distinctChunks: distinct,
  },
  rows,
  rounds,
  medians: { amplification: amp, 'wall.1.ms': wall.one, [`wall.${CLIENTS}.ms`]: wall.many },
});
console.error(`P5 results written to ${file}`);
