/**
 * What seeing a restore costs (issue 15; docs/OBSERVABILITY.md): the fault path with tracing off must be
 * the fault path before tracing existed. Both run side by side: this checkout's `lazysnap serve` and a
 * baseline checkout built from the last commit before stall accounting and tracing (BASELINE below, or
 * LAZYSNAP_TRACING_BASELINE=<commit>), each from its own dist/ and native addon, a fresh process per
 * run, default options. Extra rows: the same serve writing a trace file per session (--trace-dir), and
 * exporting OpenTelemetry spans (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT to a sink in this process that
 * answers 200 to every export).
 *
 *   node --import tsx bench/tracing.bench.ts      (or `npm run bench` for every scenario + report)
 *
 * Workload (the L1 random workload of bench/local-restore.bench.ts): a 1 GiB random image of 512 KiB
 * chunks in a local directory store, fc-client touching every page in a shuffled order on 2 threads,
 * every page verified; the client's elapsed time and its median fault. Modes alternate within a round.
 */
process.env.LAZYSNAP_LOG_LEVEL ??= 'warn';

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { startClient } from '../test/helpers/fc-client.js';
import { repoRoot } from '../test/helpers/fixtures.js';
import { tempDir } from '../test/helpers/images.js';
import { snapshotTo } from '../test/helpers/serve.js';
import { writeRandomImage } from './lib/image.js';
import { clientReport, timeout } from './lib/procs.js';
import { environment, median, modeTable, roundCount, writeResult, type ResultRow } from './lib/results.js';
import { ensureDist, startServeCli, sessionSummary, stopServe } from './lib/serve-cli.js';

/** The last commit before the fault thread's time stamps, stall accounting and tracing. */
const BASELINE = process.env.LAZYSNAP_TRACING_BASELINE ?? '26824ae';
const MiB = 1024 * 1024;
const IMAGE_BYTES = 1024 * MiB;
const CS = 512 * 1024;
const ROUNDS = roundCount(9);
const STEP_MS = 180_000;
const ID = 'tracing';
const MODES = ['baseline', 'off', 'trace-dir', 'otel'] as const;
type Mode = (typeof MODES)[number];
const WORKLOAD = ['--touch', 'all', '--order', 'random', '--seed', '42', '--threads', '2'];

const tmp = tempDir('lazysnap-tracing-');
process.once('exit', tmp.cleanup);
const image = path.join(tmp.dir, 'tracing.img');
const storeDir = path.join(tmp.dir, 'store');
const socket = path.join(tmp.dir, 'run', 'uffd.sock');
const traceDir = path.join(tmp.dir, 'traces');
const baseline = path.join(tmp.dir, 'baseline');

/** The baseline checkout, built: a detached worktree of BASELINE with this checkout's node_modules. */
function buildBaseline(): void {
  const git = (...a: string[]) => execFileSync('git', a, { cwd: repoRoot, stdio: 'inherit' });
  git('worktree', 'add', '--detach', baseline, BASELINE);
  process.once('exit', () => {
    try {
      execFileSync('git', ['worktree', 'remove', '--force', baseline], { cwd: repoRoot, stdio: 'ignore' });
    } catch {
      // already gone with the temp dir: prune happens on the next worktree command
    }
  });
  symlinkSync(path.join(repoRoot, 'node_modules'), path.join(baseline, 'node_modules'));
  execFileSync(process.execPath, ['scripts/build-native.mjs'], { cwd: baseline, stdio: 'inherit' });
  execFileSync(
    process.execPath,
    [path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'],
    {
      cwd: baseline,
      stdio: 'inherit',
    },
  );
  assert.ok(existsSync(path.join(baseline, 'dist', 'cli', 'bin.js')), 'the baseline built');
}

/** An OTLP/HTTP endpoint that takes every export: the cost measured is lazysnap's, not a collector's. */
async function startSink(): Promise<{ url: string; exports: () => number; close: () => Promise<void> }> {
  let n = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') n++;
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}/v1/traces`,
    exports: () => n,
    close: () => new Promise((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

async function run(mode: Mode, sinkUrl: string): Promise<Record<string, number>> {
  rmSync(socket, { force: true });
  const args = ['--store', storeDir, '--id', ID];
  if (mode === 'trace-dir') args.push('--trace-dir', traceDir);
  const env =
    mode === 'otel' ? { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: sinkUrl, OTEL_SERVICE_NAME: 'bench' } : undefined;
  const { serve } = await startServeCli(socket, args, STEP_MS, {
    ...(mode === 'baseline' ? { root: baseline } : {}),
    ...(env ? { env } : {}),
  });
  try {
    const c = startClient(['--socket', socket, '--image', image, ...WORKLOAD]);
    c.release();
    const report = await clientReport(c, STEP_MS);
    assert.equal(report.mismatches, 0, 'no wrong byte');
    const s = await sessionSummary(serve, STEP_MS);
    assert.equal(s.outcome, 'ended');
    return { workloadS: report.elapsedNs / 1e9, jsFaults: s.hitsByTier.origin0 ?? 0 };
  } finally {
    await stopServe(serve);
  }
}

const rounds: Record<string, unknown>[] = [];
const sink = await startSink();
try {
  ensureDist();
  buildBaseline();
  writeRandomImage(image, IMAGE_BYTES);
  await timeout(snapshotTo(storeDir, image, ID, CS), STEP_MS, 'snapshot');
  for (let round = 0; round <= ROUNDS; round++) {
    // Round 0 warms the page cache; each round starts from a different mode, so none always goes first.
    const order = MODES.map((_, i) => MODES[(i + round) % MODES.length]!);
    for (const mode of order) {
      const exportsBefore = sink.exports();
      const r = await run(mode, sink.url);
      if (mode === 'otel') r.exports = sink.exports() - exportsBefore;
      rounds.push({ round, warmup: round === 0, mode, ...r });
      console.error(
        `tracing ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`} ${mode}: ` +
          Object.entries(r)
            .map(([k, v]) => `${k} ${v.toFixed(3)}`)
            .join(', '),
      );
    }
  }
  assert.ok(
    readdirSync(traceDir).some((f) => f.endsWith('.trace.json')),
    '--trace-dir wrote traces',
  );
  assert.ok(
    rounds.filter((r) => r.mode === 'otel').every((r) => (r.exports as number) > 0),
    'the OTLP runs exported spans',
  );
} finally {
  await sink.close();
  tmp.cleanup();
}

const { med, row } = modeTable<Mode>(rounds);

/** The off / baseline ratio within each round: its median and range, as text. */
function pairedText(): string {
  const by = new Map<unknown, Partial<Record<Mode, number>>>();
  for (const r of rounds.filter((x) => !x.warmup)) {
    const m = by.get(r.round) ?? {};
    m[r.mode as Mode] = r.workloadS as number;
    by.set(r.round, m);
  }
  const q = [...by.values()].map((m) => m.off! / m.baseline!).sort((a, b) => a - b);
  return `${median(q).toFixed(3)} (${q[0]!.toFixed(3)}–${q.at(-1)!.toFixed(3)})`;
}
const rows: ResultRow[] = [
  row(
    `fault path, tracing off (the default) vs the build before tracing (${BASELINE}): workload time, every page of 1 GiB in random order on 2 threads, local store`,
    's',
    ['baseline', 'workloadS'],
    ['off', 'workloadS'],
    // "Unchanged": within this machine's round-to-round noise (the per-round ratio spans ±5%).
    1.05,
  ),
  row(
    'with --trace-dir (every fault and fetch recorded, a file per session) vs tracing off (extra row)',
    's',
    ['off', 'workloadS'],
    ['trace-dir', 'workloadS'],
    null,
  ),
  row(
    'with OpenTelemetry spans exported over OTLP/HTTP (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) vs tracing off (extra row)',
    's',
    ['off', 'workloadS'],
    ['otel', 'workloadS'],
    null,
  ),
];

const file = writeResult({
  scenario: 'tracing',
  title: 'What tracing costs the fault path',
  howMeasured:
    `Baseline: commit ${BASELINE}, the last before the fault thread's time stamps, stall accounting and tracing, built in a ` +
    `detached worktree (its own dist/ and native addon). Both: \`lazysnap serve --store DIR --id ID --socket PATH\` from ` +
    `dist/, default options, a fresh process per run, a ${IMAGE_BYTES / MiB} MiB random image of ${CS / 1024} KiB chunks ` +
    `in a local directory store. Workload: fc-client \`${WORKLOAD.join(' ')}\`, every page verified; the client's elapsed ` +
    `time. Round to round the machine is noisy: the ratio tracing off / baseline taken within each round has a median of ` +
    `${pairedText()}. Extra rows: --trace-dir (a trace file per session), and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ` +
    `pointing at a sink in the benchmark process that answers 200 to every export (each OTLP run checked to have ` +
    `exported). ${ROUNDS} rounds after a warm-up round, the modes rotating so that none always runs first; medians ` +
    `(min–max beneath).`,
  env: environment(),
  config: { baseline: BASELINE, imageBytes: IMAGE_BYTES, chunkSize: CS, workload: WORKLOAD, rounds: ROUNDS },
  rows,
  rounds,
  medians: Object.fromEntries(MODES.map((m) => [`${m}.workloadS`, med(m, 'workloadS')])),
});
console.log(`tracing: results in ${file}`);
for (const r of rows)
  console.log(
    `  ${r.case}: ${r.reference?.toFixed(3)} → ${r.lazysnap?.toFixed(3)} ${r.unit} (${r.ratio?.toFixed(3)}×)${r.target ? ` target ${r.target}: ${r.met ? 'met' : 'NOT met'}` : ''}`,
  );
