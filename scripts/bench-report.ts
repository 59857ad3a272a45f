/**
 * Regenerates bench/README.md from bench/results/*.json (written by bench/*.bench.ts) and the
 * hand-written bench/ANALYSIS.md, if present. Run by `npm run bench` after the scenarios; run it
 * alone with `node --import tsx scripts/bench-report.ts` to re-render without measuring.
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { resultsDir, type Environment, type ResultRow, type ScenarioResult } from '../bench/lib/results.js';
import { TARGETS } from '../bench/lib/targets.js';
import { repoRoot } from '../test/helpers/fixtures.js';

const ORDER = [
  'fault-latency',
  'populate',
  'local-restore',
  'cold-start',
  'snapshot',
  'concurrent',
  'tail',
  'recovery',
  'tracing',
  'manifest-parse',
  'crypto',
  'host-memory',
  'soak',
  'chaos',
];
const out = path.join(repoRoot, 'bench', 'README.md');
const analysisFile = path.join(repoRoot, 'bench', 'ANALYSIS.md');

const files = existsSync(resultsDir) ? readdirSync(resultsDir).filter((f) => f.endsWith('.json')) : [];
const results = files
  .map((f) => JSON.parse(readFileSync(path.join(resultsDir, f), 'utf8')) as ScenarioResult)
  .sort((a, b) => rank(a.scenario) - rank(b.scenario) || a.scenario.localeCompare(b.scenario));

function rank(s: string): number {
  const i = ORDER.indexOf(s);
  return i < 0 ? ORDER.length : i;
}

/** Units that count things: shown without decimals when whole. */
const COUNTS = new Set(['restores', 'peers', 'pages', 'fds', 'requests', 'faults']);

function num(v: number, unit: string): string {
  if (COUNTS.has(unit) && Number.isInteger(v)) return String(v);
  // Sub-millisecond figures (P6's reference) would all read 0.x with one decimal.
  return v.toFixed(unit === 'GB/s' || (unit === 'ms' && Math.abs(v) < 1) ? 2 : 1);
}

function cell(v: number | null, r: [number, number] | undefined, unit: string): string {
  if (v === null) return '—';
  const spread = r ? `<br><sub>${num(r[0], unit)}–${num(r[1], unit)}</sub>` : '';
  return `${num(v, unit)} ${unit}${spread}`;
}

function ratio(row: ResultRow): string {
  if (row.ratio === null) return '—';
  return row.unit === 'GB/s' ? `${(row.ratio * 100).toFixed(1)}%` : `${row.ratio.toFixed(2)}×`;
}

function met(m: boolean | null): string {
  return m === null ? '—' : m ? '✅ yes' : '❌ no';
}

function commit(env: Environment): string {
  return `${env.commit}${env.dirty ? ' (working tree dirty)' : env.dirty === null ? ' (tree state unknown)' : ''}`;
}

function envBlock(env: Environment): string[] {
  return [
    '| | |',
    '|---|---|',
    `| date | ${env.date} |`,
    `| kernel | ${env.kernel} |`,
    `| CPU | ${env.cpuModel} × ${env.nproc} (nproc) |`,
    `| Node | ${env.node} |`,
    `| commit | ${commit(env)} |`,
  ];
}

/**
 * A results file measured against other targets than the benchmark checks now (a target changed and
 * the scenario was not rerun): its table's target column is history, and the reader must be told.
 */
function staleTargets(r: ScenarioResult): string[] {
  const now = (TARGETS as Record<string, Record<string, number>>)[r.scenario];
  if (now === undefined || JSON.stringify(r.config.targets) === JSON.stringify(now)) return [];
  const show = (t: unknown) =>
    t && typeof t === 'object'
      ? Object.entries(t)
          .map(([k, v]) => `${k} ${String(v)}`)
          .join(', ')
      : 'none recorded';
  return [
    `> **Stale:** these results were measured against older targets (${show(r.config.targets)}); ` +
      `${r.scenario}'s targets are now ${show(now)}. Rerun the scenario to check them.`,
    '',
  ];
}

function scenario(r: ScenarioResult): string[] {
  const lines = [
    `## ${r.title}`,
    '',
    `Measured ${r.env.date} at ${commit(r.env)}; ${String(r.config.rounds)} rounds per case. Raw rounds: ` +
      `[results/${r.scenario}.json](results/${r.scenario}.json).`,
    '',
    ...staleTargets(r),
    '| case | reference | lazysnap | ratio | target | met? |',
    '|---|---|---|---|---|---|',
  ];
  for (const row of r.rows) {
    lines.push(
      `| ${row.case} | ${cell(row.reference, row.referenceRange, row.unit)} | ${cell(row.lazysnap, row.lazysnapRange, row.unit)} ` +
        `| ${ratio(row)} | ${row.target ?? '—'} | ${met(row.met)} |`,
    );
  }
  if (r.scenario === 'chaos') lines.push(...chaosTables(r));
  lines.push('', `**How measured.** ${r.howMeasured}`, '');
  return lines;
}

/** The chaos soak's restores by outcome per scenario, and the reasons serve logged when failing closed. */
function chaosTables(r: ScenarioResult): string[] {
  const outcomes = ['ok', 'failed closed', 'killed by test', 'oom-killed', 'hung', 'unexpected'];
  const lines = [
    '',
    'Restores by outcome, per scenario (`hung` and `unexpected` must be 0; so must wrong pages):',
    '',
    `| scenario | injected, and what it must come to | ${outcomes.join(' | ')} | wrong pages |`,
    `|---|---|${outcomes.map(() => '---|').join('')}---|`,
  ];
  for (const row of r.rounds)
    lines.push(
      `| ${String(row.scenario)} | ${String(row.note)} | ${outcomes.map((o) => String(Number(row[o] ?? 0))).join(' | ')} | ${String(Number(row.wrongPages ?? 0))} |`,
    );
  const skipped = Object.entries((r.config.skipped ?? {}) as Record<string, string>);
  for (const [s, why] of skipped) lines.push('', `${s} was not run: ${why}.`);
  const reasons = Object.entries((r.extra?.failedClosedReasons ?? {}) as Record<string, number>).sort(
    (a, b) => b[1] - a[1],
  );
  if (reasons.length > 0) {
    lines.push('', 'Failed closed: the line serve logged for the chunk (numbers and keys elided):', '');
    lines.push('| restores | serve’s error line: message and first failed attempt |', '|---|---|');
    for (const [why, n] of reasons) lines.push(`| ${n} | \`${why.replace(/\|/g, '\\|')}\` |`);
  }
  const injected = Object.entries((r.extra?.injected ?? {}) as Record<string, number>);
  if (injected.length > 0)
    lines.push(
      '',
      `Faults the origins served, by kind: ${injected.map(([k, v]) => `${k} ${v}`).join(', ')}.`,
    );
  return lines;
}

const latest = [...results].sort((a, b) => b.env.date.localeCompare(a.env.date))[0];
const p3 = TARGETS['cold-start'];
const tail = TARGETS.tail;
const doc = [
  '# lazysnap benchmarks',
  '',
  '<!-- Generated by scripts/bench-report.ts from bench/results/*.json and bench/ANALYSIS.md. Do not edit. -->',
  '',
  'Side-by-side measurements against a reference run in the same process tree and the same run, for the targets',
  'of [docs/DESIGN.md](../docs/DESIGN.md#performance-targets) ("Performance targets" and "Contracts"):',
  '',
  '- **P1** ([fault-latency.bench.ts](fault-latency.bench.ts)): fault service for a resident chunk, p50 ≤ 1.25× the reference at the same pinning.',
  "- **P2** ([populate.bench.ts](populate.bench.ts)): full populate from a local store, ≥ 80% of the reference's GB/s at the same chunk size.",
  '- **L1, L2, P6** ([local-restore.bench.ts](local-restore.bench.ts)): `lazysnap serve` as users run it (the CLI, a fresh process, default options, a zstd directory store, nothing resident beforehand) against a C handler doing the same per-chunk work: L1 ≤ 1.25× (random on 2 threads, sequential on 1); L2 disk cache: filling it ≤ 1.05× L1, warm ≤ 1.15× the C handler on the same raw files and faster than L1; P6 handshake → first page served ≤ 1 ms + one (here local) origin round trip.',
  `- **P3** ([cold-start.bench.ts](cold-start.bench.ts)): cold start of a 1 GiB image with a ~9% working set from an S3-like origin (nginx behind a 30 ms / 90 MB/s per connection delay proxy), \`lazysnap serve\` as users run it (the CLI, a fresh process, default options), replaying a profile recorded on a different run: replay ≥ ${p3.lazy}× faster than fault-only on the clustered workload, ≥ ${p3.eager}× faster than eager download, ≤ ${p3.floor}× the emulation's own floor (the working set alone through the same proxy). The identical run recorded and replayed is shown too, labelled best case, without a target.`,
  '- **P4** ([snapshot.bench.ts](snapshot.bench.ts)): chunk + hash + zero-detect of a 1 GiB zero-rich image ≥ 1.5 GB/s, plus whole snapshots to the directory store and s3rver.',
  '- **P5** ([concurrent.bench.ts](concurrent.bench.ts)): 16 restores of one snapshot at once on one serve fetch every chunk from the origin once (fetch amplification 1.00).',
  `- **Tail** ([tail.bench.ts](tail.bench.ts)): hedged requests against an origin whose slowest 5% of responses take 20× the 30 ms first byte, \`lazysnap serve\` with default options and with \`--no-hedge\`, every fault a demand fetch: with hedging, the p99 of a demand fault's wait ≤ ${tail.overMedian}× the median fetch and ≤ ${tail.overUnhedged}× the p99 without hedging (issue 12).`,
  "- **Recovery** ([recovery.bench.ts](recovery.bench.ts)): what a crash of serve's worker and an upgrade (`serve --take-over`) cost 8 restores from the S3-like origin: the time nobody served, against serve's cold start; the slowest fault; an upgrade's slowest fault ≤ the handover + one origin round trip; and the fault path supervised (the default) vs `--no-supervisor` (issue 13).",
  '- **Tracing** ([tracing.bench.ts](tracing.bench.ts)): the fault path with tracing off (the default) against a build of the commit before stall accounting and tracing, side by side, as `lazysnap serve` with default options from a local store; extra rows for `--trace-dir` and for OpenTelemetry spans exported over OTLP (issue 15).',
  "- **Manifest** ([manifest-parse.bench.ts](manifest-parse.bench.ts)): a 64 GiB snapshot's manifest parses in ≤ 50 ms.",
  '- **Soak** ([soak.ts](soak.ts), `npm run soak`): 32 concurrent restores through one serve for 60 s: zero mismatched pages, RSS that plateaus, no fd leak (issue 8; run on its own, not by `npm run bench`).',
  '- **Chaos** ([chaos.ts](chaos.ts), `npm run chaos`): 32 concurrent restores through one serve, a failure injected into each (VMA splits, mlock, balloon, origin 5xx / lies / stalls / zstd bombs / endless bodies, peers SIGKILLed, memory cgroups): zero hung peers, zero wrong bytes, every failed-closed restore with its reason logged, RSS within its bound, no fd leak (issue 11; run on its own, not by `npm run bench`).',
  '- **Crypto** ([crypto.bench.ts](crypto.bench.ts)): what client-side chunk encryption (AES-256-GCM) costs, as throughput against plain zstd encode/decode of the same chunks (no target: informational).',
  "- **Host memory** ([host-memory.bench.ts](host-memory.bench.ts)): what this host charges for a UFFDIO_COPY source written just before, a fresh arena slot per chunk (as lazysnap's chunk table) against one reused buffer (as the C references), in C ([ref/copy-source.c](ref/copy-source.c)); the L1 and P2 ratios depend on it (no target: informational).",
  '',
  'P1 and P2 compare against a pure-C reference handler ([ref/ref-handler.c](ref/ref-handler.c)). Both drive the Firecracker-exact client (test/fixtures/fc-client.c) against each handler in turn, alternating',
  'reference and lazysnap round by round because the machine is shared and noisy, and report medians over rounds',
  '(min–max beneath each median). lazysnap runs as [lib/lazysnap-handler.ts](lib/lazysnap-handler.ts), a standalone',
  'Node program on the native FaultSession, with every chunk resident before the client connects. L1, L2 and P6 measure',
  'the path users take instead: `lazysnap serve` (the CLI, [lib/serve-cli.ts](lib/serve-cli.ts)) reading a real store, against',
  '[ref/ref-store-handler.c](ref/ref-store-handler.c), which reads, zstd-decodes and copies each chunk on its first fault.',
  'P3, P5, Tail and Recovery compare lazysnap with itself (the baseline each row names is in the',
  'reference column) against nginx behind a userspace delay proxy ([lib/slow-origin.ts](lib/slow-origin.ts)), since this kernel has no netem.',
  '',
  'Run everything and regenerate this file with `npm run bench` (Linux with userfaultfd access, gcc, libzstd-dev for the C',
  'reference handlers, taskset, nginx, at least 2 CPUs and ~4 GiB of free memory; about 25 minutes here). `LAZYSNAP_BENCH_ROUNDS=N` changes the rounds per case for a',
  'quick look; the count used is printed with each table.',
  '',
  '## Environment',
  '',
  ...(latest ? envBlock(latest.env) : ['No results yet: run `npm run bench`.']),
  '',
  ...results.flatMap(scenario),
  ...(existsSync(analysisFile) ? [readFileSync(analysisFile, 'utf8').trim(), ''] : []),
];
writeFileSync(out, `${doc.join('\n')}\n`);
console.error(`wrote ${path.relative(repoRoot, out)} from ${results.length} result file(s)`);
