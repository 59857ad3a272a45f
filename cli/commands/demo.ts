import { totalmem } from 'node:os';
import { parseArgs } from 'node:util';

import { InvalidArgumentError } from '../../core/errors.js';
import { formatBytes, parseSize } from '../../core/units.js';
import { ms, type Io } from '../common.js';
import { restoreOnce, workingSet, type DemoOptions, type RestoreRun } from '../demo/restore.js';

const MAX_CHUNKS = 1 << 22;

export const usage = `usage: lazysnap demo [options]

Restores memory lazily through userfaultfd: a worker thread reads a working set of the memory while
the main thread serves its faults from a simulated origin. Zero chunks are mapped without a fetch.
Every byte read is verified.

options:
  --size SIZE          memory to restore (default 256MiB)
  --chunk-size SIZE    chunk size, a power of two >= 4KiB (default 512KiB)
  --working-set F      fraction of chunks the workload reads, 0 < F <= 1 (default 0.1)
  --latency-ms N       simulated origin latency per chunk (default 2)
  --compare            also run an eager restore (everything fetched first) side by side
  --json               print the report as JSON
`;

function describeRun(r: RestoreRun, size: number): string[] {
  return [
    `${r.mode} restore${r.userModeOnly ? ' (user-mode-only uffd: unprivileged)' : ''}: ${r.verified ? 'every byte verified' : 'MISMATCH'}`,
    `  time to first byte  ${ms(r.firstByteNs)}`,
    `  workload done in    ${ms(r.totalNs)}`,
    `  pages read          ${r.pagesRead}`,
    `  faults              ${r.stats.faults} (zero chunks ${r.stats.zeroFaults}, sent to JS ${r.stats.forwardedFaults})`,
    `  fetched             ${formatBytes(r.bytesFetched)} of ${formatBytes(size)} (${((100 * r.bytesFetched) / size).toFixed(1)}%)`,
  ];
}

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '256MiB' },
      'chunk-size': { type: 'string', default: '512KiB' },
      'working-set': { type: 'string', default: '0.1' },
      'latency-ms': { type: 'string', default: '2' },
      compare: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const opts: DemoOptions = {
    size: parseSize('--size', values.size),
    chunkSize: parseSize('--chunk-size', values['chunk-size']),
    workingSet: Number(values['working-set']),
    latencyMs: Number(values['latency-ms']),
    compare: values.compare,
    seed: 0x5eed,
    ...(signal ? { signal } : {}),
  };
  if (!(opts.workingSet > 0 && opts.workingSet <= 1)) throw new InvalidArgumentError('--working-set', 'a fraction in (0, 1]', values['working-set']);
  if (!(Number.isFinite(opts.latencyMs) && opts.latencyMs >= 0)) throw new InvalidArgumentError('--latency-ms', 'a number >= 0', values['latency-ms']);
  if (opts.size % 4096) throw new InvalidArgumentError('--size', 'a multiple of 4KiB', values.size);
  // workingSet() shuffles an array of every chunk index and the restore maps all of --size: bound
  // both before allocating (a fuzzed `--size 4096TiB` ended in "Invalid array length").
  if (opts.size > totalmem()) throw new InvalidArgumentError('--size', `at most this machine's memory (${formatBytes(totalmem())})`, values.size);
  const chunks = Math.ceil(opts.size / opts.chunkSize);
  if (chunks > MAX_CHUNKS) throw new InvalidArgumentError('--size', `at most ${MAX_CHUNKS} chunks of --chunk-size`, values.size);
  const touch = workingSet(chunks, opts.workingSet, opts.seed);
  const runs = [await restoreOnce(opts, 'lazy', touch)];
  if (opts.compare) runs.push(await restoreOnce(opts, 'eager', touch));
  if (values.json) io.out(`${JSON.stringify({ size: opts.size, chunkSize: opts.chunkSize, chunks, touched: touch.length, runs })}\n`);
  else {
    io.out(`lazysnap demo: ${formatBytes(opts.size)} in ${chunks} chunks of ${formatBytes(opts.chunkSize)}, workload reads ${touch.length} chunks\n`);
    for (const r of runs) io.out(`${describeRun(r, opts.size).join('\n')}\n`);
    if (runs.length === 2) io.out(`lazy vs eager: ${(runs[1]!.totalNs / runs[0]!.totalNs).toFixed(1)}x faster to finish the workload\n`);
  }
  return runs.every((r) => r.verified) ? 0 : 1;
}
