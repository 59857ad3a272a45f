import { totalmem } from 'node:os';

import { InvalidArgumentError } from '../../core/errors.js';
import { formatBytes, parseSize } from '../../core/units.js';
import type { Io } from '../common.js';
import { runDemo, type DemoOptions, type DemoReport } from '../demo/run.js';
import type { RestoreOutcome } from '../demo/restore-proc.js';
import { parseOptions } from '../option-spec.js';
import { demoSpec } from '../specs/demo.js';

const MAX_CHUNKS = 1 << 22;

export const spec = demoSpec;

/** Milliseconds as text (cli/common.ts's `ms` takes nanoseconds). */
const millis = (v: number) => `${v.toFixed(v < 10 ? 1 : 0)} ms`;

function table(report: DemoReport): string {
  const { runs, snapshot: s } = report;
  const pct = (r: RestoreOutcome) =>
    `${formatBytes(r.stats.bytesFetched)} (${((100 * r.stats.bytesFetched) / report.source.size).toFixed(1)}%)`;
  const rows: [string, (r: RestoreOutcome) => string][] = [
    ['runtime ready', (r) => millis(r.attachMs)],
    ...(runs.some((r) => r.mode === 'eager')
      ? ([['everything fetched', (r) => (r.mode === 'eager' ? millis(r.attachMs + r.populateMs) : '-')]] as [
          string,
          (r: RestoreOutcome) => string,
        ][])
      : []),
    ['first byte read', (r) => millis(r.firstByteMs)],
    ['workload done', (r) => millis(r.workloadDoneMs)],
    ['faults', (r) => String(r.stats.faults)],
    ['  on zero chunks', (r) => String(r.stats.zeroFaults)],
    ['chunks fetched', (r) => `${r.stats.fetchedChunks} of ${s.chunks - s.zeroChunks}`],
    ['bytes fetched', pct],
    [
      'verified',
      (r) =>
        r.mismatchedTouched.length === 0 && r.mismatchedAll.length === 0
          ? 'every chunk'
          : `MISMATCH in ${r.mismatchedAll.length} chunks`,
    ],
  ];
  const w = [
    22,
    ...runs.map((r) =>
      Math.max(`${r.mode} (pid ${r.pid})`.length + 3, ...rows.map(([, f]) => f(r).length + 3)),
    ),
  ];
  const line = (cells: string[]) => `  ${cells.map((c, i) => c.padEnd(w[i]!)).join('')}`.trimEnd();
  return [
    line(['', ...runs.map((r) => `${r.mode} (pid ${r.pid})`)]),
    ...rows.map(([name, f]) => line([name, ...runs.map(f)])),
  ].join('\n');
}

function describe(report: DemoReport): string {
  const { source: src, snapshot: s, runs } = report;
  const out = [
    `lazysnap demo: process ${src.pid} built ${src.records.toLocaleString('en')} records in ${formatBytes(src.size)} of memory (${millis(src.buildMs)})`,
    `  snapshot  ${s.id} in ${s.store}: ${s.chunks} chunks of ${formatBytes(s.totalSize / s.chunks)}, ${s.zeroChunks} zero (not stored), ${s.uploadedChunks} uploaded (${formatBytes(s.uploadedBytes)}), ${millis(s.elapsedMs)}`,
    `  workload  reads ${report.touched} of ${report.chunks} chunks in a fresh process, page by page${runs.some((r) => r.userModeOnly) ? '\n  (unprivileged: user-mode-only userfaultfd; kernel-side access to unrestored pages gets EFAULT)' : ''}`,
    '',
    table(report),
  ];
  if (runs.length === 2) {
    const [lazy, eager] = runs as [RestoreOutcome, RestoreOutcome];
    out.push(
      '',
      `  lazy restore finished the workload ${(eager.workloadDoneMs / lazy.workloadDoneMs).toFixed(1)}x sooner, fetching ${(eager.stats.bytesFetched / Math.max(1, lazy.stats.bytesFetched)).toFixed(1)}x fewer bytes`,
    );
  }
  return `${out.join('\n')}\n`;
}

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const values = parseOptions(demoSpec, argv);
  const opts: DemoOptions = {
    size: parseSize(values.size, '--size'),
    chunkSize: parseSize(values['chunk-size'], '--chunk-size'),
    workingSet: Number(values['working-set']),
    store: values.store,
    id: values.id ?? `demo-${new Date().toISOString().replace(/[:.]/g, '-')}`,
    compare: values.compare,
    seed: 0x5eed,
    ...(signal ? { signal } : {}),
  };
  if (!(opts.workingSet > 0 && opts.workingSet <= 1))
    throw new InvalidArgumentError('--working-set', 'a fraction in (0, 1]', values['working-set']);
  if (opts.size % 65536 || opts.size === 0)
    throw new InvalidArgumentError(
      '--size',
      'a non-zero multiple of 64KiB (the data set lives in a WebAssembly memory)',
      values.size,
    );
  if (opts.chunkSize < 4096 || (opts.chunkSize & (opts.chunkSize - 1)) !== 0)
    throw new InvalidArgumentError('--chunk-size', 'a power of two >= 4KiB', values['chunk-size']);
  // The source fills all of --size and the working set shuffles every chunk index: bound both
  // before allocating (a fuzzed `--size 4096TiB` ended in "Invalid array length").
  if (opts.size > totalmem())
    throw new InvalidArgumentError(
      '--size',
      `at most this machine's memory (${formatBytes(totalmem())})`,
      values.size,
    );
  if (Math.ceil(opts.size / opts.chunkSize) > MAX_CHUNKS)
    throw new InvalidArgumentError('--size', `at most ${MAX_CHUNKS} chunks of --chunk-size`, values.size);
  if (!values.json && io.isTTY) {
    let last = '';
    opts.onProgress = (stage, p) => {
      const msg = p ? `${stage} ${Math.floor((100 * p.bytesDone) / p.totalSize)}%` : stage;
      if (msg !== last) io.err(`\r\x1b[K${(last = msg)}`);
    };
  }
  const report = await runDemo(opts);
  if (opts.onProgress) io.err('\r\x1b[K');
  io.out(values.json ? `${JSON.stringify(report)}\n` : describe(report));
  return report.runs.every((r) => r.mismatchedAll.length === 0 && r.mismatchedTouched.length === 0) ? 0 : 1;
}
