/**
 * Tail (docs/DESIGN.md, "Performance targets"; issue 12): hedged requests against an origin with a slow
 * tail. nginx serves a directory store behind the delay proxy (30 ms to first byte, 90 MB/s per
 * connection) whose slowest 5% of responses wait 20× as long (600 ms) for their first byte. `lazysnap
 * serve` as users run it (the CLI, a fresh process, default options, no profile in the store, so
 * every chunk is a demand fetch) once with hedging (the default) and once with --no-hedge, round by
 * round. Targets: the p99 of a demand fault's wait with hedging ≤ 2× the median fetch, and ≤ ½ the
 * p99 without hedging.
 *
 *   node --import tsx bench/tail.bench.ts      (or `npm run bench` for every scenario + report)
 *
 * Workload: fc-client touches the first page of every chunk in a shuffled order on 2 threads with
 * --time-faults, so each fault is one chunk fetched on demand and timed from the guest's side. serve
 * runs with --metrics-port; its Prometheus text is scraped after the client is done and before serve
 * stops, for the hedges sent and won and the fetch-time histogram.
 */
process.env.LAZYSNAP_LOG_LEVEL ??= 'warn';

import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';

import { FileStore } from '../store/file-store.js';
import { chunkHash } from '../store/manifest.js';
import { loadIndex } from '../store/reader.js';
import { startClient, type ClientReport } from '../test/helpers/fc-client.js';
import { tempDir } from '../test/helpers/images.js';
import { snapshotTo } from '../test/helpers/serve.js';
import { environment, modeTable, roundCount, writeResult, type ResultRow } from './lib/results.js';
import { ensureDist, sessionSummary, startServeCli, stopServe } from './lib/serve-cli.js';
import { startSlowOrigin, type SlowOrigin } from './lib/slow-origin.js';
import { clientReport, timeout } from './lib/procs.js';
import { TARGETS } from './lib/targets.js';
import { writeRandomImage } from './lib/image.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 512 * MiB;
const CS = 512 * 1024;
const CHUNKS = IMAGE_BYTES / CS;
const FIRST_BYTE_MS = 30;
const BPS = 90e6;
const TAIL = { fraction: 0.05, factor: 20, seed: 12 };
const THREADS = 2;
const SEED = 42;
/** What the fetcher needs before it hedges at all (runtime/hedge.ts, LatencyWindow.quantile's min). */
const HEDGE_BASIS = 20;
const ROUNDS = roundCount(3);
const STEP_MS = 180_000;
const TARGET = TARGETS.tail;
const ID = 'tail';

const MODES = ['hedge', 'no-hedge'] as const;
type Mode = (typeof MODES)[number];

const tmp = tempDir('lazysnap-tail-');
process.once('exit', tmp.cleanup); // also when interrupted (slow-origin.ts exits on SIGINT/SIGTERM)
const image = path.join(tmp.dir, 'tail.img');
const storeDir = path.join(tmp.dir, 'store');
const socket = path.join(tmp.dir, 'run', 'uffd.sock');

const CLIENT_ARGS = [
  ...['--touch', 'sparse', '--chunk-size', String(CS), '--order', 'random', '--seed', String(SEED)],
  ...['--threads', String(THREADS), '--time-faults'],
];

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus text exposition → samples (comments skipped; label values hold no escapes here). */
function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[k!] = v!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

const sum = (xs: Sample[]): number => xs.reduce((a, s) => a + s.value, 0);

/** Slower than any untailed fetch (~40 ms) and faster than a tail response (600 ms): a histogram bound. */
const SLOW_S = 0.25;

/**
 * Faults serve took longer than SLOW_S to answer (lazysnap_fault_service_seconds: JS saw the fault →
 * its chunk installed), i.e. faults that waited out a tail response: how often hedging failed, which
 * the client's p99 alone hides once there are fewer than 1% of them.
 */
function slowFaults(samples: Sample[]): number {
  const count = sum(samples.filter((s) => s.name === 'lazysnap_fault_service_seconds_count'));
  const fast = samples.find(
    (s) => s.name === 'lazysnap_fault_service_seconds_bucket' && Number(s.labels.le) === SLOW_S,
  );
  assert.ok(fast, `lazysnap_fault_service_seconds has no ${SLOW_S} s bucket`);
  return count - fast.value;
}

/**
 * The median of lazysnap_fetch_seconds over the origin tiers, interpolated linearly within its bucket
 * as Prometheus' histogram_quantile does: coarse (the buckets around 30 ms are 25 and 50 ms), so
 * the target rows use the client's exact per-fault samples and this is a cross-check.
 */
function histogramMedianMs(samples: Sample[]): number {
  const buckets = new Map<number, number>();
  for (const s of samples)
    if (s.name === 'lazysnap_fetch_seconds_bucket' && s.labels.tier?.startsWith('origin')) {
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      buckets.set(le, (buckets.get(le) ?? 0) + s.value);
    }
  const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  assert.ok(total > 0, 'lazysnap_fetch_seconds has no origin observations');
  let [lower, below] = [0, 0];
  for (const [le, cum] of sorted) {
    if (cum >= total / 2) {
      if (le === Infinity) return lower * 1000;
      return (lower + ((le - lower) * (total / 2 - below)) / (cum - below)) * 1000;
    }
    [lower, below] = [le, cum];
  }
  return NaN;
}

/** One cold `lazysnap serve` (the CLI, default options but for --no-hedge) and one client. */
async function runMode(mode: Mode, origin: SlowOrigin): Promise<Record<string, number>> {
  rmSync(socket, { force: true });
  const args = ['--store', origin.url, '--id', ID, '--metrics-port', '0'];
  if (mode === 'no-hedge') args.push('--no-hedge');
  const before = await origin.stats();
  const { serve } = await startServeCli(socket, args, STEP_MS);
  let report: ClientReport;
  let metrics: Sample[];
  try {
    const port = serve.logs.find((l) => l.msg === 'serving')?.metricsPort;
    assert.ok(typeof port === 'number' && port > 0, "serve's 'serving' line names no metrics port");
    const c = startClient(['--socket', socket, '--image', image, ...CLIENT_ARGS]);
    c.release();
    report = await clientReport(c, STEP_MS);
    assert.equal(report.pagesVerified, CHUNKS, 'the client must verify the page it touched in every chunk');
    assert.equal(report.faultNs?.count, CHUNKS, 'one timed fault per chunk');
    const summary = await sessionSummary(serve, STEP_MS);
    assert.equal(summary.outcome, 'ended', 'the session must end cleanly');
    assert.deepEqual(summary.failedChunks, [], 'no chunk may fail');
    assert.equal(summary.fetchedChunks, CHUNKS, 'every chunk fetched once');
    // Scraped before the stop: the counters go with the process.
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(res.status, 200, 'metrics scrape');
    metrics = parseMetrics(await res.text());
  } finally {
    await stopServe(serve);
  }
  const after = await origin.stats();
  const hedges = (outcome: string) =>
    sum(metrics.filter((s) => s.name === 'lazysnap_hedged_requests_total' && s.labels.outcome === outcome));
  const fetches = (priority: string) =>
    sum(
      metrics.filter(
        (s) =>
          s.name === 'lazysnap_fetches_total' &&
          s.labels.tier?.startsWith('origin') &&
          (priority === 'demand') === (s.labels.priority === 'demand'),
      ),
    );
  const hist = (n: string) => sum(metrics.filter((s) => s.name === n && s.labels.tier?.startsWith('origin')));
  const f = report.faultNs;
  return {
    p50Ms: f.p50 / 1e6,
    p99Ms: f.p99 / 1e6,
    meanMs: f.mean / 1e6,
    maxMs: f.max / 1e6,
    workloadS: report.elapsedNs / 1e9,
    fetchMedianMs: histogramMedianMs(metrics),
    fetchMeanMs: (hist('lazysnap_fetch_seconds_sum') / hist('lazysnap_fetch_seconds_count')) * 1000,
    slowFaults: slowFaults(metrics),
    demandFetches: fetches('demand'),
    otherFetches: fetches('other'),
    hedgesWon: hedges('won'),
    hedgesLost: hedges('lost'),
    hedgesSent: hedges('won') + hedges('lost'),
    proxyRequests: after.requests - before.requests,
    proxyTailResponses: after.tailResponses - before.tailResponses,
  };
}

const rounds: Record<string, unknown>[] = [];
let origin: SlowOrigin | undefined;
try {
  ensureDist();
  // Random throughout: no zero chunk, so every fault fetches (zstd stores the chunks as raw blocks).
  writeRandomImage(image, IMAGE_BYTES);
  await timeout(snapshotTo(storeDir, image, ID, CS), STEP_MS, 'snapshot');
  const ix = await loadIndex(new FileStore(storeDir), ID);
  assert.equal(ix.count, CHUNKS);
  assert.ok(
    [...Array(ix.count).keys()].every((i) => chunkHash(ix, i) !== null),
    'every chunk must be non-zero, so that every fault is a fetch',
  );
  // No profile: serve's default prefetch (auto) then replays nothing and every chunk is a demand.
  assert.ok(!existsSync(path.join(storeDir, 'profiles')), 'the store must hold no profile');
  origin = await startSlowOrigin(storeDir, { firstByteMs: FIRST_BYTE_MS, bytesPerSecond: BPS, tail: TAIL });
  // Round 0 is a warm-up (page cache, nginx), recorded but left out of the medians. Two modes in a
  // fixed order: they alternate, neither ever runs twice in a row.
  for (let round = 0; round <= ROUNDS; round++) {
    for (const mode of MODES) {
      const r = await runMode(mode, origin);
      rounds.push({ round, warmup: round === 0, mode, ...r });
      console.error(
        `tail ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`} ${mode}: fault p50 ${r.p50Ms!.toFixed(1)} ms, ` +
          `p99 ${r.p99Ms!.toFixed(1)} ms, max ${r.maxMs!.toFixed(1)} ms, ${r.slowFaults} > ${SLOW_S * 1000} ms; fetch median ~${r.fetchMedianMs!.toFixed(1)} ms; ` +
          `hedges ${r.hedgesSent} sent, ${r.hedgesWon} won; ${r.proxyTailResponses} of ${r.proxyRequests} ` +
          `responses in the tail; workload ${r.workloadS!.toFixed(1)} s`,
      );
    }
  }
} finally {
  await origin?.stop();
  tmp.cleanup();
}

const { med, row } = modeTable<Mode>(rounds);
const rows: ResultRow[] = [
  row(
    'hedging: p99 of a demand fault’s wait vs the median fetch (reference = the p50 of the same faults; ratio = p99 / p50)',
    'ms',
    ['hedge', 'p50Ms'],
    ['hedge', 'p99Ms'],
    TARGET.overMedian,
  ),
  row(
    'p99 of a demand fault’s wait, --no-hedge vs hedging (ratio = hedging / --no-hedge)',
    'ms',
    ['no-hedge', 'p99Ms'],
    ['hedge', 'p99Ms'],
    TARGET.overUnhedged,
  ),
  row(
    'p50 of a demand fault’s wait, --no-hedge vs hedging (extra row)',
    'ms',
    ['no-hedge', 'p50Ms'],
    ['hedge', 'p50Ms'],
    null,
  ),
  row(
    'median fetch, serve’s lazysnap_fetch_seconds interpolated in its 25–50 ms bucket, --no-hedge vs hedging (extra row)',
    'ms',
    ['no-hedge', 'fetchMedianMs'],
    ['hedge', 'fetchMedianMs'],
    null,
  ),
  row(
    'slowest fault, --no-hedge vs hedging (extra row)',
    'ms',
    ['no-hedge', 'maxMs'],
    ['hedge', 'maxMs'],
    null,
  ),
  row(
    `faults serve took > ${SLOW_S * 1000} ms to answer (lazysnap_fault_service_seconds), --no-hedge vs hedging (extra row)`,
    'faults',
    ['no-hedge', 'slowFaults'],
    ['hedge', 'slowFaults'],
    null,
  ),
  row(
    'workload time (the client’s elapsedNs), --no-hedge vs hedging (extra row)',
    's',
    ['no-hedge', 'workloadS'],
    ['hedge', 'workloadS'],
    null,
  ),
  row(
    'hedging: hedged requests sent vs demand fetches (extra row; ratio = the share hedged)',
    'requests',
    ['hedge', 'demandFetches'],
    ['hedge', 'hedgesSent'],
    null,
  ),
  row(
    'hedging: hedges won (answered first) vs sent (extra row; ratio = the share won)',
    'requests',
    ['hedge', 'hedgesSent'],
    ['hedge', 'hedgesWon'],
    null,
  ),
  row(
    'responses the proxy held in the tail, --no-hedge vs hedging (extra row; counted outside lazysnap)',
    'requests',
    ['no-hedge', 'proxyTailResponses'],
    ['hedge', 'proxyTailResponses'],
    null,
    false,
  ),
];

const file = writeResult({
  scenario: 'tail',
  title: 'Tail: hedged requests against a slow tail',
  howMeasured:
    `A ${IMAGE_BYTES / MiB} MiB random image (no zero chunk, so every fault fetches) of ${CS / 1024} KiB chunks (${CHUNKS}), ` +
    `snapshotted once with zstd into a directory store. Origin: nginx serving that directory behind bench/lib/delay-proxy.ts ` +
    `(${FIRST_BYTE_MS} ms to first byte, ${BPS / 1e6} MB/s per connection), the proxy in its own Node process, with a tail: a seeded ` +
    `${TAIL.fraction * 100}% of responses (drawn per response, seed ${TAIL.seed}, so a second request for the same chunk is as likely to be ` +
    `fast as any) wait ${TAIL.factor}× as long, ${FIRST_BYTE_MS * TAIL.factor} ms, for their first byte. One proxy serves the whole ` +
    `benchmark, so the seed fixes the sequence of draws across it, not each run's share (the last row counts each run's). lazysnap is \`lazysnap serve ` +
    `--store <proxy URL> --id ID --socket PATH --metrics-port 0\`, the CLI from dist/ in a fresh process per run with DEFAULT ` +
    `options, no disk cache and no profile in the store (so prefetch auto replays nothing): hedging on (the default: a demand ` +
    `request its origin has not answered (its response headers) within the p95 of its last 200 answers, or whose body is not all ` +
    `there within the p95 of its last 200 bodies, gets a second request, and a late hedge one more; the first body wins) ` +
    `and, as the baseline, the same with --no-hedge. Workload: fc-client (test/fixtures/fc-client.c) \`${CLIENT_ARGS.join(' ')}\`, ` +
    `the first page of each of the ${CHUNKS} chunks in a shuffled order on ${THREADS} threads, each first touch timed with ` +
    `CLOCK_MONOTONIC: ${CHUNKS} faults, each one chunk fetched, on demand but for the few that serve's sequential read-ahead ` +
    `takes when two shuffled touches land close together (median ${med('hedge', 'otherFetches')} per run here; not hedged, as ` +
    `read-ahead is not a demand); p50 and p99 are over those faults. The fetcher hedges ` +
    `only once an origin has ${HEDGE_BASIS} answers (its p95 needs a basis), so the first ~${HEDGE_BASIS} faults of each run are never ` +
    `hedged; ${CHUNKS} faults leave ≥ ${Math.floor((1 - HEDGE_BASIS / CHUNKS) * 100)}% of them eligible, and the p99 of ${CHUNKS} faults ` +
    `(fc-client: the ceil(0.99 n)th smallest) is the ${CHUNKS - Math.ceil(CHUNKS * 0.99) + 1}th-slowest, which the one tail response ` +
    `expected among those first ${HEDGE_BASIS} cannot set alone. Tail answers among the first ones also raise the p95 itself (over ` +
    `${HEDGE_BASIS} answers it is their slowest), and a tail answer that beats its late hedge is recorded again, so a run whose ` +
    `first answers hold tails may hedge only at ~${FIRST_BYTE_MS * TAIL.factor} ms until enough fast answers dilute them: the row ` +
    `of faults over ${SLOW_S * 1000} ms shows such runs. The median fetch of the first target is the p50 of the same run's faults (every fault is one demand fetch; serve's ` +
    `lazysnap_fetch_seconds histogram, scraped from --metrics-port before serve stops, is too coarse at 25–50 ms buckets to ` +
    `be the yardstick and is shown interpolated as a cross-check). The faults that waited out a tail response are counted from ` +
    `serve's lazysnap_fault_service_seconds (above its ${SLOW_S * 1000} ms bucket; a fault served by a won hedge takes ~2 fetches, ` +
    `~80 ms): the p99 hides them while they are under 1% of the faults. Hedges sent and won are serve's ` +
    `lazysnap_hedged_requests_total{outcome} (sent = won + lost); the proxy's own count of tail responses is kept beside them. ` +
    `Each run checks every touched page, a clean session end, no failed chunk, and ${CHUNKS} chunks fetched. ${ROUNDS} rounds after ` +
    `a warm-up round, hedging and --no-hedge alternating (neither runs twice in a row); medians (min–max beneath).`,
  env: environment(),
  config: {
    imageBytes: IMAGE_BYTES,
    chunkSize: CS,
    chunks: CHUNKS,
    firstByteMs: FIRST_BYTE_MS,
    bytesPerSecond: BPS,
    tail: TAIL,
    client: CLIENT_ARGS,
    hedgeBasis: HEDGE_BASIS,
    rounds: ROUNDS,
    targets: TARGET,
  },
  rows,
  rounds,
  medians: Object.fromEntries(
    MODES.flatMap((m) =>
      ['p50Ms', 'p99Ms', 'fetchMedianMs', 'slowFaults', 'hedgesSent', 'hedgesWon'].map(
        (k): [string, number] => [`${m}.${k}`, med(m, k)],
      ),
    ),
  ),
});
console.error(`tail results written to ${file}`);
