/**
 * Chaos soak (docs/RELIABILITY.md, "Chaos"; issue 11): many concurrent restores through ONE
 * `lazysnap serve` process, each drawing a failure to inject, and two numbers that must be 0: hung
 * peers and wrong bytes. The scenarios and how expectations stay unambiguous: test/helpers/chaos.ts.
 *
 *   npm run chaos                                  (defaults: 3 min, 32 clients)
 *   npm run chaos -- --duration 60s --clients 16 --scenarios origin-stall,peer-killed
 *
 * Writes bench/results/chaos.json (bench/README.md shows it: node --import tsx scripts/bench-report.ts).
 * Exits 1 on a hung peer, a wrong byte, an outcome its scenario does not allow, a failed-closed restore
 * whose reason serve did not log, an fd left open, or serve's peak RSS over its bound.
 */
import { parseArgs } from 'node:util';

import { parseDuration, parseSize } from '../core/units.js';
import {
  OUTCOMES,
  SCENARIOS,
  SCENARIO_NOTES,
  SLACK_BYTES,
  ACTIVE_SESSION_BYTES,
  LOADER_THREADS,
  LOADER_THREAD_BYTES,
  SUPERVISOR_BYTES,
  nonTcp,
  runChaos,
  type Scenario,
} from '../test/helpers/chaos.js';
import { tempDir } from '../test/helpers/images.js';
import { hasUffd, uffdSkipReason } from '../test/helpers/skip.js';
import { environment, writeResult, type ResultRow } from './lib/results.js';

const USAGE = `usage: npm run chaos -- [options]

Runs --clients restores at a time against one \`lazysnap serve\` for --duration, a new one starting
whenever one ends, each drawing a scenario that injects a failure (VMA splits, mlock, balloon, origin
5xx / lies / stalls / zstd bombs / endless bodies, peers SIGKILLed, memory cgroups), and classifies
every restore against what its scenario allows. Writes bench/results/chaos.json.

options:
  --duration DUR         how long new restores are started (default 3m)
  --clients N            restores at a time (default 32)
  --fail-timeout DUR     serve --fail-timeout; stalled chunks fail closed after it (default 3s)
  --attempt-timeout DUR  serve --attempt-timeout (default 1s)
  --fail-closed MODE     serve --fail-closed: auto, poison or kill (default auto)
  --memory-budget SIZE   serve --memory-budget (default 64MiB)
  --fetch-concurrency N  serve --fetch-concurrency (default 16)
  --image-size SIZE      the snapshot (default 128MiB; its last 16 chunks are the fail pools)
  --chunk-size SIZE      (default 256KiB)
  --cgroup-limit SIZE    memory-pressure: the peer's cgroup limit (default 4MiB)
  --scenarios LIST       comma-separated subset of: ${SCENARIOS.join(', ')}
  --seed N               seeds the choices of scenarios, chunks and kill times (default: random, printed)
  --help                 this text`;

function usage(msg: string): never {
  console.error(`chaos: ${msg}\n(npm run chaos -- --help for the options)`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      duration: { type: 'string', default: '3m' },
      clients: { type: 'string', default: '32' },
      'fail-timeout': { type: 'string', default: '3s' },
      'attempt-timeout': { type: 'string', default: '1s' },
      'fail-closed': { type: 'string', default: 'auto' },
      'memory-budget': { type: 'string', default: '64MiB' },
      'fetch-concurrency': { type: 'string', default: '16' },
      'image-size': { type: 'string', default: '128MiB' },
      'chunk-size': { type: 'string', default: '256KiB' },
      'cgroup-limit': { type: 'string', default: '4MiB' },
      scenarios: { type: 'string' },
      seed: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
} catch (e) {
  usage((e as Error).message);
}
const values = parsed;
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}

/** A flag's value through its parser, or a usage error naming the flag. */
function opt<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    usage((e as Error).message);
  }
}
function int(name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max)
    usage(`--${name}: an integer from ${min} to ${max}, not '${text}'`);
  return n;
}
const durationMs = opt(() => parseDuration(values.duration, '--duration'));
const clients = int('clients', values.clients, 1, 256);
const failTimeoutMs = opt(() => parseDuration(values['fail-timeout'], '--fail-timeout'));
const attemptTimeoutMs = opt(() => parseDuration(values['attempt-timeout'], '--attempt-timeout'));
const failClosed = values['fail-closed'];
if (failClosed !== 'auto' && failClosed !== 'poison' && failClosed !== 'kill')
  usage(`--fail-closed: auto, poison or kill, not '${failClosed}'`);
const memoryBudget = opt(() => parseSize(values['memory-budget'], '--memory-budget', { allowZero: true }));
const fetchConcurrency = int('fetch-concurrency', values['fetch-concurrency'], 1, 1024);
const imageBytes = opt(() => parseSize(values['image-size'], '--image-size'));
const chunkSize = opt(() => parseSize(values['chunk-size'], '--chunk-size'));
if (chunkSize % 4096 !== 0) usage('--chunk-size: a multiple of 4 KiB');
if (imageBytes % chunkSize !== 0 || imageBytes / chunkSize < 64)
  usage('--image-size: a whole number of at least 64 chunks');
if (failTimeoutMs < 2 * attemptTimeoutMs + 500)
  usage(
    '--fail-timeout: at least twice --attempt-timeout plus 500 ms (a slow answer and a retry must fit in it)',
  );
const cgroupLimitBytes = opt(() => parseSize(values['cgroup-limit'], '--cgroup-limit'));
const scenarios = (values.scenarios?.split(',') ?? [...SCENARIOS]).map((s) => s.trim()) as Scenario[];
for (const s of scenarios)
  if (!SCENARIOS.includes(s)) usage(`--scenarios: unknown scenario '${s}' (known: ${SCENARIOS.join(', ')})`);
const seed =
  values.seed === undefined ? Math.floor(Math.random() * 1e9) : int('seed', values.seed, 0, 2 ** 31 - 1);
if (!hasUffd) {
  console.error(`chaos: cannot run here: ${uffdSkipReason}`);
  process.exit(1);
}

const MiB = 1024 * 1024;
const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
const tmp = tempDir('lazysnap-chaos-');
process.once('exit', tmp.cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

console.error(
  `chaos: ${clients} concurrent restores for ${durationMs / 1000} s through one serve (memory budget ${mib(memoryBudget)}, ` +
    `fail timeout ${failTimeoutMs} ms, --fail-closed ${failClosed}), seed ${seed}; scenarios: ${scenarios.join(', ')}`,
);
let lastPrint = 0;
const r = await runChaos({
  dir: tmp.dir,
  durationMs,
  clients,
  imageBytes,
  chunkSize,
  memoryBudget,
  failTimeoutMs,
  attemptTimeoutMs,
  failClosed,
  fetchConcurrency,
  cgroupLimitBytes,
  scenarios,
  seed,
  onSample: (s) => {
    if (s.ms - lastPrint < 5000) return;
    lastPrint = s.ms;
    console.error(
      `  ${(s.ms / 1000).toFixed(0).padStart(4)} s  restores ${String(s.restoresDone).padStart(6)}  running ${String(s.running).padStart(3)}  serve RSS ${mib(s.rssBytes).padStart(10)}  fds ${s.fds}`,
    );
  },
});
tmp.cleanup();

const used = SCENARIOS.filter((s) => r.config.scenarios.includes(s));
const pad = (s: string, n: number) => s.padEnd(n);
const table = [
  `${pad('scenario', 16)}${OUTCOMES.map((o) => o.padStart(15)).join('')}`,
  ...used.map((s) => `${pad(s, 16)}${OUTCOMES.map((o) => String(r.byScenario[s][o]).padStart(15)).join('')}`),
].join('\n');
const fdsBack = r.fds.settledMs !== null && nonTcp(r.fds.after) === nonTcp(r.fds.before);
const rssOk = r.rss.hwmBytes <= r.rss.boundBytes;
const unlogged = r.failedClosed.total - r.failedClosed.reasonLogged;
console.error(`
${table}

restores                ${r.restores.length} in ${(r.elapsedMs / 1000).toFixed(0)} s; pages read ${r.pagesRead}
hung peers              ${r.hung}
wrong pages             ${r.wrongPages}
unexpected outcomes     ${r.unexpected.length}${r.unexpected
  .slice(0, 5)
  .map((u) => `\n  #${u.n} ${u.scenario} (pid ${u.pid}): ${u.detail}`)
  .join('')}
failed closed           ${r.failedClosed.total}, reason logged for ${r.failedClosed.reasonLogged}${Object.entries(
  r.failedClosed.reasons,
)
  .map(([k, v]) => `\n  ${String(v).padStart(5)} x ${k}`)
  .join('')}
faults injected         ${JSON.stringify(r.injected)}; armed, never fetched ${r.armedLeft}
skipped                 ${JSON.stringify(r.skipped)}
serve log               ${r.serve.sessionsStarted} sessions, ${r.serve.summaries} summaries, ${r.serve.warnLines} warn, ${r.serve.errorLines} error lines (${r.serve.unexplainedErrors.length} unexplained)
serve RSS               baseline ${mib(r.rss.baselineBytes)}, peak sampled ${mib(r.rss.peakSampledBytes)}, VmHWM ${mib(r.rss.hwmBytes)}, end ${mib(r.rss.finalBytes)}
                        bound (baseline + budget ${mib(memoryBudget)} + fetch buffers ${mib(2 * fetchConcurrency * chunkSize)} + ${clients} x ${mib(ACTIVE_SESSION_BYTES)} per session + ${LOADER_THREADS} loader threads x ${mib(LOADER_THREAD_BYTES)} + supervisor ${mib(SUPERVISOR_BYTES)} + ${mib(SLACK_BYTES)} slack) ${mib(r.rss.boundBytes)}
serve fds               before ${JSON.stringify(r.fds.before)}, after ${JSON.stringify(r.fds.after)} (settled ${r.fds.settledMs} ms after the last peer)
serve exit              ${JSON.stringify(r.serve.exit)}`);

const row = (
  c: string,
  unit: string,
  lazysnap: number,
  reference: number | null,
  target: string | null,
  met: boolean | null,
): ResultRow => ({
  case: c,
  unit,
  reference,
  lazysnap,
  ratio: reference ? lazysnap / reference : null,
  target,
  met,
});
const file = writeResult({
  scenario: 'chaos',
  title: `Chaos: ${clients} concurrent restores through one serve for ${Math.round(durationMs / 1000)} s, a failure injected into each`,
  howMeasured:
    `bench/chaos.ts (npm run chaos -- --duration ${values.duration} --clients ${clients} --seed ${seed}): a ${imageBytes / MiB} MiB image of ${chunkSize / 1024} KiB chunks ` +
    `(every 4th zero), snapshotted with zstd into a directory store served by two HTTP origins that inject faults (test/helpers/fault-origin.ts); one ` +
    `\`lazysnap serve\` process (the CLI) with --memory-budget ${memoryBudget / MiB}MiB, --fail-timeout ${failTimeoutMs}ms, --attempt-timeout ${attemptTimeoutMs}ms, ` +
    `--retries 2, --fail-closed ${failClosed}, --fetch-concurrency ${fetchConcurrency}, prefetch off, no disk cache. Each restore is a test/fixtures/uffd-peer ` +
    `drawing one scenario uniformly (test/helpers/chaos.ts) and reading its chunks page by page; every page is classified (image bytes, zeros, other bytes, ` +
    `SIGBUS) against the scenario's expectation. Hung: a peer alive ${r.config.hangBoundMs} ms after it started. serve's RSS is sampled every ` +
    `${r.config.sampleMs} ms and its VmHWM read at the end; fds from /proc/<pid>/fd by kind (idle origin connections excluded).`,
  env: environment(),
  config: { rounds: 1, ...r.config, skipped: r.skipped },
  rows: [
    row('restores', 'restores', r.restores.length, null, null, null),
    row('hung peers', 'peers', r.hung, 0, '= 0', r.hung === 0),
    row(
      'wrong pages (any page not the image bytes, nor zero where removed)',
      'pages',
      r.wrongPages,
      0,
      '= 0',
      r.wrongPages === 0,
    ),
    row(
      'outcomes the scenario does not allow',
      'restores',
      r.unexpected.length,
      0,
      '= 0',
      r.unexpected.length === 0,
    ),
    row(
      'failed closed with the reason in serve’s log, of all failed closed',
      'restores',
      r.failedClosed.reasonLogged,
      r.failedClosed.total,
      '= all',
      unlogged === 0,
    ),
    row(
      'serve VmHWM vs bound (baseline + memory budget + fetch buffers + per-session + slack)',
      'MiB',
      r.rss.hwmBytes / MiB,
      r.rss.boundBytes / MiB,
      '≤ bound',
      rssOk,
    ),
    row(
      'serve RSS peak (sampled) above baseline, vs the memory budget',
      'MiB',
      (r.rss.peakSampledBytes - r.rss.baselineBytes) / MiB,
      memoryBudget / MiB,
      null,
      null,
    ),
    row(
      'serve fds (excluding idle origin connections), before vs after',
      'fds',
      nonTcp(r.fds.after),
      nonTcp(r.fds.before),
      '= before',
      fdsBack,
    ),
  ],
  // One entry per scenario: its outcomes (bench-report.ts renders them as a table).
  rounds: used.map((s) => ({
    scenario: s,
    note: SCENARIO_NOTES[s],
    ...r.byScenario[s],
    wrongPages: r.restores.filter((x) => x.scenario === s).reduce((n, x) => n + x.wrongPages, 0),
  })),
  medians: {
    restores: r.restores.length,
    hung: r.hung,
    wrongPages: r.wrongPages,
    pagesRead: r.pagesRead,
    unexpected: r.unexpected.length,
    failedClosed: r.failedClosed.total,
    failedClosedReasonLogged: r.failedClosed.reasonLogged,
    baselineMiB: r.rss.baselineBytes / MiB,
    peakSampledMiB: r.rss.peakSampledBytes / MiB,
    hwmMiB: r.rss.hwmBytes / MiB,
    boundMiB: r.rss.boundBytes / MiB,
    memoryBudgetMiB: memoryBudget / MiB,
    fdsBefore: nonTcp(r.fds.before),
    fdsAfter: nonTcp(r.fds.after),
    ...Object.fromEntries(Object.entries(r.injected).map(([k, v]) => [`injected.${k}`, v])),
  },
  extra: {
    failedClosedReasons: r.failedClosed.reasons,
    injected: r.injected,
    unexpectedRestores: r.unexpected.slice(0, 20),
    hungRestores: r.restores.filter((x) => x.outcome === 'hung').slice(0, 20),
    unexplainedErrorLines: r.serve.unexplainedErrors.slice(0, 20),
  },
});
console.error(`chaos results written to ${file}`);
if (
  r.hung > 0 ||
  r.wrongPages > 0 ||
  r.unexpected.length > 0 ||
  unlogged > 0 ||
  !fdsBack ||
  !rssOk ||
  r.serve.exit.code !== 0
) {
  console.error('chaos FAILED');
  process.exitCode = 1;
}
