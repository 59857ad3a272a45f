import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import { InvalidArgumentError, SourceError } from '../../core/errors.js';
import { formatBytes, parseSize } from '../../core/units.js';
import { openMemoryFile, type MemorySource } from '../../snapshotter/source.js';
import { createSnapshot } from '../../snapshotter/snapshot.js';
import { assertCodec } from '../../store/chunk.js';
import { UsageError, intOption, required, storeFrom, type Io } from '../common.js';
import { progressReporter, type ProgressMode } from '../progress.js';

export const usage = `usage: lazysnap snapshot --mem-file FILE --store URL --id ID [options]
       lazysnap snapshot --pid PID --store URL --id ID [options]

Chunks memory into content-addressed, compressed objects: zero chunks are not stored, chunks the
store already holds are not uploaded again, and the manifest is written last.

sources (one):
  --mem-file FILE      a Firecracker memory file or raw image; with --parent, a Firecracker diff
                       snapshot (sparse: holes are pages unchanged since the parent)
  --pid PID            a live process: its private writable mappings, held stopped while copied

options:
  --store URL          directory, file://, or s3://bucket/prefix (required)
  --id ID              snapshot id: 1-128 of [A-Za-z0-9._-] (required)
  --vmstate FILE       Firecracker vmstate file, stored as vmstate/ID
  --parent ID          the snapshot a diff was taken relative to
  --chunk-size SIZE    power of two, multiple of the page size (default 512KiB)
  --compress CODEC     zstd or none (default zstd)
  --level N            zstd level 1-19 (default 1)
  --regions SIZES      region sizes laid end to end, e.g. 3GiB,1GiB (default: one region)
  --page-size SIZE     4KiB or 2MiB (hugepage-backed guests; chunk size must be a multiple of 2MiB)
  --concurrency N      chunks in flight (default 8; memory ~ 2 x N x chunk size)
  --progress MODE      auto (bar on a terminal), json, or quiet (default auto)
  --s3-endpoint URL    S3-compatible endpoint (also AWS_ENDPOINT_URL_S3)
  --json               print the summary as JSON
`;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'mem-file': { type: 'string' },
      pid: { type: 'string' },
      store: { type: 'string' },
      id: { type: 'string' },
      vmstate: { type: 'string' },
      parent: { type: 'string' },
      'chunk-size': { type: 'string', default: '512KiB' },
      compress: { type: 'string', default: 'zstd' },
      level: { type: 'string' },
      regions: { type: 'string' },
      'page-size': { type: 'string', default: '4KiB' },
      concurrency: { type: 'string' },
      progress: { type: 'string', default: 'auto' },
      's3-endpoint': { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const id = required(values, 'id');
  if ((values['mem-file'] === undefined) === (values.pid === undefined)) throw new UsageError('give exactly one source: --mem-file FILE or --pid PID');
  const codec = values.compress;
  assertCodec(codec, '--compress');
  const pageSize = parseSize('--page-size', values['page-size']);
  if (pageSize !== 4096 && pageSize !== 2097152) throw new InvalidArgumentError('--page-size', '4KiB or 2MiB', values['page-size']);
  const chunkSize = parseSize('--chunk-size', values['chunk-size']);
  const level = intOption('level', values.level, 1, 19);
  const concurrency = intOption('concurrency', values.concurrency, 1, 256);
  const mode = values.progress as ProgressMode;
  if (!['auto', 'tty', 'json', 'quiet'].includes(mode)) throw new InvalidArgumentError('--progress', 'auto, tty, json or quiet', mode);
  const regions = values.regions?.split(',').map((r) => parseSize('--regions', r));
  // Read before the store and the source are opened: a missing vmstate file left both open (fuzzing).
  let vmstate: Buffer | undefined;
  if (values.vmstate) {
    vmstate = await readFile(values.vmstate).catch((e: unknown) => {
      throw new SourceError(`cannot read vmstate file ${values.vmstate}: ${(e as Error).message}`, e);
    });
  }
  const store = await storeFrom(values);
  let source: MemorySource;
  try {
    if (values.pid !== undefined) {
      const pid = intOption('pid', values.pid, 1, 2 ** 22)!;
      const { openProcess } = await import('../../snapshotter/process-source.js');
      source = await openProcess(pid, { ...(signal ? { signal } : {}) });
    } else {
      source = await openMemoryFile(values['mem-file']!, { pageSize, diff: values.parent !== undefined, ...(regions ? { regions } : {}) });
    }
  } catch (e) {
    await store.close();
    throw e;
  }
  const bar = progressReporter(mode, io, id);
  try {
    const summary = await createSnapshot({
      source,
      store,
      id,
      chunkSize,
      codec,
      ...(level !== undefined ? { level } : {}),
      ...(concurrency !== undefined ? { concurrency } : {}),
      ...(values.parent !== undefined ? { parent: values.parent } : {}),
      ...(vmstate ? { vmstate } : {}),
      ...(signal ? { signal } : {}),
      onProgress: (p) => bar.update(p.bytesDone, p.totalSize),
    });
    bar.finish();
    if (values.json) io.out(`${JSON.stringify(summary)}\n`);
    else {
      io.out(
        `snapshot ${summary.id}: ${formatBytes(summary.totalSize)} in ${summary.chunks} chunks\n` +
          `  zero        ${summary.zeroChunks} chunks (not stored)\n` +
          `  unique      ${summary.uniqueChunks} chunks${summary.inheritedChunks ? `, ${summary.inheritedChunks} inherited from ${values.parent}` : ''}\n` +
          `  uploaded    ${summary.uploadedChunks} chunks, ${formatBytes(summary.uploadedBytes)} (dedup+compression ${summary.dedupRatio.toFixed(2)}x)\n` +
          `  throughput  ${summary.mbPerSecond.toFixed(0)} MB/s (${(summary.elapsedMs / 1000).toFixed(2)} s)\n`,
      );
    }
    return 0;
  } finally {
    await source.close();
    await store.close();
  }
}
