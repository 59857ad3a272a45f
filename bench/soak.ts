/**
 * Soak: many concurrent restores through ONE `lazysnap serve` process for a bounded time
 * (docs/RELIABILITY.md, "Load"). Every client is the Firecracker-exact fc-client verifying every
 * page; serve runs as the CLI, in its own process, with a memory budget smaller than the image
 * (resident chunks are evicted and fetched again all along) and a disk cache smaller than the image.
 *
 *   npm run soak                                   (defaults: 60 s, 32 concurrent, 64 MiB image)
 *   npm run soak -- --duration 10m --concurrency 48 --image-size 128MiB --origin dir
 *
 * Reports restores done, mismatched pages (must be 0), serve's RSS over time against its expected
 * ceiling (baseline + memory budget + fetch buffers + N x per-session overhead), the per-session
 * overhead (measured idle, and derived from the peak under load), and serve's fds before and after.
 * Writes bench/results/soak.json; exits 1 if a page mismatched, a restore failed, serve logged a
 * warning or error, or an fd was left open.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { parseDuration, parseSize } from '../core/units.js';
import { tempDir } from '../test/helpers/images.js';
import { nginxSkipReason, startNginx } from '../test/helpers/nginx.js';
import { runSoak, type SoakSample } from '../test/helpers/soak.js';
import { writeZeroRichImage } from './lib/image.js';
import { environment, writeResult } from './lib/results.js';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '60s' },
    concurrency: { type: 'string', default: '32' },
    'image-size': { type: 'string', default: '64MiB' },
    'chunk-size': { type: 'string', default: '512KiB' },
    'memory-budget': { type: 'string', default: '32MiB' },
    'cache-budget': { type: 'string', default: '32MiB' },
    'fetch-concurrency': { type: 'string', default: '16' },
    origin: { type: 'string', default: 'nginx' },
  },
  strict: true,
});
const durationMs = parseDuration(values.duration, '--duration');
const concurrency = Number(values.concurrency);
assert.ok(
  Number.isInteger(concurrency) && concurrency >= 1 && concurrency <= 1024,
  '--concurrency: an integer from 1 to 1024',
);
const fetchConcurrency = Number(values['fetch-concurrency']);
assert.ok(
  Number.isInteger(fetchConcurrency) && fetchConcurrency >= 1,
  '--fetch-concurrency: an integer >= 1',
);
const imageBytes = parseSize(values['image-size'], '--image-size');
const chunkSize = parseSize(values['chunk-size'], '--chunk-size');
const memoryBudget = parseSize(values['memory-budget'], '--memory-budget');
const cacheBudget = parseSize(values['cache-budget'], '--cache-budget');
assert.ok(['nginx', 'dir'].includes(values.origin), '--origin: nginx or dir');
const useNginx = values.origin === 'nginx' && !nginxSkipReason;
if (values.origin === 'nginx' && nginxSkipReason)
  console.error(`soak: ${nginxSkipReason}; serving from the directory store instead`);

const MiB = 1024 * 1024;
const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
const tmp = tempDir('lazysnap-soak-');
process.once('exit', tmp.cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

const image = writeZeroRichImage(path.join(tmp.dir, 'soak.img'), imageBytes, chunkSize, (i) => i % 4 === 3);
console.error(
  `soak: ${concurrency} concurrent restores of a ${mib(imageBytes)} image (${chunkSize / 1024} KiB chunks, every 4th zero) for ${durationMs / 1000} s ` +
    `through one serve (memory budget ${mib(memoryBudget)}, disk cache ${mib(cacheBudget)}, origin ${useNginx ? 'nginx' : 'directory store'})`,
);
let lastPrint = 0;
const r = await runSoak({
  dir: tmp.dir,
  image,
  chunkSize,
  durationMs,
  concurrency,
  memoryBudget,
  cacheBudget,
  fetchConcurrency,
  sampleMs: 500,
  ...(useNginx ? { origin: (store: string) => startNginx(store) } : {}),
  onSample: (s: SoakSample) => {
    if (s.ms - lastPrint < 5000) return;
    lastPrint = s.ms;
    console.error(
      `  ${(s.ms / 1000).toFixed(0).padStart(4)} s  restores ${String(s.restoresDone).padStart(6)}  serve RSS ${mib(s.rssBytes).padStart(10)}  fds ${s.fds}`,
    );
  },
});
tmp.cleanup();

// Plateau check: the highest RSS of the last third of the run against the highest of the first third.
const third = (k: number) =>
  r.samples
    .filter((s) => s.ms >= (k * r.elapsedMs) / 3 && s.ms < ((k + 1) * r.elapsedMs) / 3)
    .map((s) => s.rssBytes);
const firstThirdPeak = Math.max(...third(0));
const lastThirdPeak = Math.max(...third(2));
const derivedPerSession = Math.max(
  0,
  (r.rss.peakBytes - r.rss.baselineBytes - memoryBudget - 2 * fetchConcurrency * chunkSize) / concurrency,
);
const heap = (h: typeof r.jsHeap.end) =>
  h ? `${mib(h.totalBytes)} committed, ${mib(h.usedBytes)} used` : 'unknown';
const nonTcp = (k: typeof r.fds.before) => k.uffd + k.pidfd + k.unix + k.file + k.other;
const fdsBack = nonTcp(r.fds.after) === nonTcp(r.fds.before) && r.fds.after.tcp <= fetchConcurrency;

console.error(`
restores done           ${r.restores} (${(r.restores / (r.elapsedMs / 1000)).toFixed(1)}/s), failed ${r.failedRestores.length}
pages verified          ${r.pagesVerified}, mismatched ${r.mismatchedPages}
sessions summarized     ${r.sessionSummaries}; warn/error lines ${r.problems.length}
serve RSS               baseline ${mib(r.rss.baselineBytes)}, ${concurrency} idle sessions ${mib(r.rss.idleSessionsBytes)}, peak ${mib(r.rss.peakBytes)}, end ${mib(r.rss.finalBytes)}
                        first-third peak ${mib(firstThirdPeak)}, last-third peak ${mib(lastThirdPeak)}
serve V8 heap           idle ${heap(r.jsHeap.baseline)}, after the load ${heap(r.jsHeap.end)}
per-session overhead    idle ${(r.rss.perSessionBytes / 1024).toFixed(0)} KiB; derived from the peak under load ${(derivedPerSession / 1024).toFixed(0)} KiB
expected ceiling        baseline + memory budget + fetch buffers + N x idle overhead = ${mib(r.rss.boundBytes)}; with the derived overhead ${mib(r.rss.peakBytes)}
serve fds               before ${JSON.stringify(r.fds.before)}, after ${JSON.stringify(r.fds.after)} (settled ${r.fds.settledMs} ms after the last client)
serve exit              ${JSON.stringify(r.serveExit)}`);

const file = writeResult({
  scenario: 'soak',
  title: `Soak: ${concurrency} concurrent restores through one serve for ${durationMs / 1000} s`,
  howMeasured:
    `bench/soak.ts (npm run soak): a ${imageBytes / MiB} MiB image of ${chunkSize / 1024} KiB chunks (every 4th zero, the rest random) snapshotted with zstd ` +
    `into a directory store${useNginx ? ' served by nginx' : ''}; one \`lazysnap serve\` process (the CLI) with --memory-budget ${memoryBudget / MiB}MiB, ` +
    `--cache-dir with --cache-budget ${cacheBudget / MiB}MiB, --fetch-concurrency ${fetchConcurrency}, prefetch off. ${concurrency} slots each run ` +
    `fc-client (test/fixtures/fc-client.c: Firecracker's handshake, one thread reading and verifying every 4 KiB page in a random order) back to back ` +
    `until the time is up. serve's RSS (/proc VmRSS) is sampled every 500 ms. Per-session overhead, idle: RSS with ${concurrency} clients connected ` +
    `(handshake done, no fault yet) minus the baseline, over ${concurrency}; derived: (peak - baseline - memory budget - 2 x fetch concurrency x chunk size) / ${concurrency}. ` +
    `fds from /proc/<pid>/fd by kind, before the first client and once the last session has ended (origin TCP connections idle in the keep-alive pool may stay).`,
  env: environment(),
  config: {
    rounds: 1,
    durationMs,
    concurrency,
    imageBytes,
    chunkSize,
    memoryBudget,
    cacheBudget,
    fetchConcurrency,
    origin: useNginx ? 'nginx' : 'dir',
  },
  rows: [
    {
      case: 'restores completed (every page verified)',
      unit: 'restores',
      reference: null,
      lazysnap: r.restores,
      ratio: null,
      target: null,
      met: null,
    },
    {
      case: 'mismatched pages',
      unit: 'pages',
      reference: 0,
      lazysnap: r.mismatchedPages,
      ratio: null,
      target: '= 0',
      met: r.mismatchedPages === 0,
    },
    {
      case: 'failed restores',
      unit: 'restores',
      reference: 0,
      lazysnap: r.failedRestores.length,
      ratio: null,
      target: '= 0',
      met: r.failedRestores.length === 0,
    },
    {
      case: 'serve peak RSS vs baseline + memory budget + fetch buffers + N x idle session overhead',
      unit: 'MiB',
      reference: r.rss.boundBytes / MiB,
      lazysnap: r.rss.peakBytes / MiB,
      ratio: r.rss.peakBytes / r.rss.boundBytes,
      target: null,
      met: null,
    },
    {
      case: 'serve RSS plateau: last-third peak vs first-third peak',
      unit: 'MiB',
      reference: firstThirdPeak / MiB,
      lazysnap: lastThirdPeak / MiB,
      ratio: lastThirdPeak / firstThirdPeak,
      target: '≤ 1.10×',
      met: lastThirdPeak <= firstThirdPeak * 1.1,
    },
    {
      case: 'per-session overhead, idle (reference) vs derived from the peak under load',
      unit: 'KiB',
      reference: r.rss.perSessionBytes / 1024,
      lazysnap: derivedPerSession / 1024,
      ratio: null,
      target: null,
      met: null,
    },
    {
      case: 'serve fds (excluding idle origin connections), before vs after',
      unit: 'fds',
      reference: nonTcp(r.fds.before),
      lazysnap: nonTcp(r.fds.after),
      ratio: null,
      target: '= before',
      met: fdsBack,
    },
  ],
  rounds: r.samples.map((s) => ({ ...s })),
  medians: {
    jsHeapEndCommittedMiB: (r.jsHeap.end?.totalBytes ?? NaN) / MiB,
    jsHeapBaselineCommittedMiB: (r.jsHeap.baseline?.totalBytes ?? NaN) / MiB,
    restores: r.restores,
    peakRssMiB: r.rss.peakBytes / MiB,
    perSessionIdleKiB: r.rss.perSessionBytes / 1024,
    perSessionDerivedKiB: derivedPerSession / 1024,
  },
});
console.error(`soak results written to ${file}`);
if (
  r.mismatchedPages > 0 ||
  r.failedRestores.length > 0 ||
  r.problems.length > 0 ||
  !fdsBack ||
  r.serveExit.code !== 0
) {
  console.error(
    'soak FAILED',
    JSON.stringify({ failed: r.failedRestores.slice(0, 3), problems: r.problems.slice(0, 3) }),
  );
  process.exitCode = 1;
}
