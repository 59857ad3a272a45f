/**
 * `lazysnap demo`: a lazy restore of a process's memory, in one process, on the embedded default
 * (no store, no services). The main thread runs the restore runtime over a userfaultfd; a worker
 * thread reads the memory, faulting chunks in on demand; a simulated origin answers with a latency.
 * Zero chunks and chunks already resident are served by the native fault thread without JS.
 */
import { UffdUnavailableError } from '../../core/errors.js';
import { startModuleWorker } from '../../core/worker.js';
import {
  ChunkTable,
  FaultSession,
  constants,
  createUffd,
  closeFd,
  mmapAnonymous,
  munmap,
  uffdApi,
  uffdRegister,
  type SessionStats,
} from '../../native/index.js';
import { chunkBytes, isZeroChunk } from './image.js';
import type { DemoWorkerData, DemoWorkerResult } from './worker.js';

export interface DemoOptions {
  /** Bytes of memory to restore. @default 256 MiB */
  size: number;
  /** @default 512 KiB */
  chunkSize: number;
  /** Fraction of the chunks the workload reads. @default 0.1 */
  workingSet: number;
  /** Simulated origin latency per chunk fetch. @default 2 */
  latencyMs: number;
  /** Also restore eagerly (everything fetched before the workload) for comparison. */
  compare: boolean;
  seed: number;
  signal?: AbortSignal;
}

export interface RestoreRun {
  mode: 'lazy' | 'eager';
  userModeOnly: boolean;
  totalNs: number;
  firstByteNs: number;
  chunksFetched: number;
  bytesFetched: number;
  zeroChunks: number;
  pagesRead: number;
  verified: boolean;
  stats: SessionStats;
}

function openUffd(): { fd: number; userModeOnly: boolean } {
  try {
    return { fd: createUffd(), userModeOnly: false };
  } catch (e) {
    if (!(e instanceof UffdUnavailableError)) throw e;
    // Process restore only needs faults taken in user mode, which the kernel allows without
    // privilege (vm.unprivileged_userfaultfd = 0 still permits UFFD_USER_MODE_ONLY).
    return { fd: createUffd({ userModeOnly: true }), userModeOnly: true };
  }
}

export async function restoreOnce(opts: DemoOptions, mode: 'lazy' | 'eager', touch: number[]): Promise<RestoreRun> {
  opts.signal?.throwIfAborted();
  const { size, chunkSize, seed } = opts;
  const c = constants();
  const { fd, userModeOnly } = openUffd();
  let address: bigint | undefined;
  let session: FaultSession | undefined;
  try {
    uffdApi(fd, c.UFFD_FEATURE_EVENT_REMOVE);
    address = mmapAnonymous(size);
    uffdRegister(fd, address, size);
    const table = new ChunkTable(size, chunkSize);
    const zero = Uint8Array.from({ length: table.chunks }, (_, i) => (isZeroChunk(i, seed) ? 1 : 0));
    table.markZero(zero);
    let fetched = 0;
    const installed = new Set<number>();
    let onInstalled = () => {};
    const fetchAndInstall = (chunks: Iterable<number>) => {
      for (const i of chunks) {
        setTimeout(() => {
          if (session?.closed) return;
          table.put(i, chunkBytes(i, table.chunkLength(i), seed));
          fetched++;
          session!.install(i);
        }, opts.latencyMs);
      }
    };
    session = new FaultSession(fd, { table, pageSize: 4096, regions: [{ base: address, size, offset: 0 }] }, (e) => {
      fetchAndInstall(e.need);
      for (const i of e.installed) installed.add(i);
      if (e.installed.length) onInstalled();
      for (const err of e.errors) console.error(`lazysnap demo: ${err.message}`);
    });
    const t0 = process.hrtime.bigint();
    if (mode === 'eager') {
      const all = [...Array(table.chunks).keys()].filter((i) => !zero[i]);
      await new Promise<void>((res) => {
        onInstalled = () => installed.size >= all.length && res();
        fetchAndInstall(all);
      });
    }
    const data: DemoWorkerData = { address, size, chunkSize, seed, touch };
    const result = await new Promise<DemoWorkerResult>((res, rej) => {
      const w = startModuleWorker(new URL('./worker.js', import.meta.url), { workerData: data });
      const abort = () => void w.terminate().then(() => rej(opts.signal!.reason));
      opts.signal?.addEventListener('abort', abort, { once: true });
      w.once('message', (m: DemoWorkerResult) => res(m));
      w.once('error', rej);
      w.once('exit', () => opts.signal?.removeEventListener('abort', abort));
    });
    const totalNs = Number(process.hrtime.bigint() - t0);
    // The fault thread counts a fault after its ioctl has woken the reader, so the worker can finish
    // before the last count lands; closing joins the thread, after which the counters are final.
    session.close();
    return {
      mode,
      userModeOnly,
      totalNs,
      firstByteNs: mode === 'eager' ? totalNs - result.totalNs + result.firstByteNs : result.firstByteNs,
      chunksFetched: fetched,
      bytesFetched: fetched * chunkSize,
      zeroChunks: zero.reduce((a, b) => a + b, 0),
      pagesRead: result.pagesRead,
      verified: result.mismatchedChunks.length === 0,
      stats: session.stats(),
    };
  } finally {
    if (session) session.close();
    else closeFd(fd);
    if (address !== undefined) munmap(address, size);
  }
}

/** The working set: a deterministic, scattered sample of chunk indices. */
export function workingSet(chunks: number, fraction: number, seed: number): number[] {
  const n = Math.max(1, Math.round(chunks * fraction));
  const idx = [...Array(chunks).keys()];
  let x = seed >>> 0 || 1;
  for (let i = chunks - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const j = (x >>> 0) % (i + 1);
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx.slice(0, n);
}
