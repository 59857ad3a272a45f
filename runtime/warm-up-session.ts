/**
 * The start-up warm-up's whole session (runtime/warm-up.ts): a RestoreSession constructed the way
 * SessionHost constructs one, over one chunk of serve's own memory. A thread of libuv's pool then reads
 * its first byte: a real fault, which crosses to JS as a peer's first fault does and takes the demand
 * path (delivery, the fetcher's demand queue, a loader thread's install for the session). The session
 * is then populated (nothing left to do, unless the fault was not served) and ended. Its first calls are
 * the ones a peer's first session would otherwise pay for (the session, its trace, delivery,
 * fail-closed, state, logging, the first need).
 *
 * It shares nothing with the snapshot's sessions: a one-chunk index of a synthetic chunk, a private
 * table, memory tier, fetcher (an origin in memory) and metrics registry, and a logger that writes
 * nowhere; no trace file, no recording, no replay. If OpenTelemetry is on, its span has an unsampled
 * parent, so the default (parent-based) sampler never records it. The "peer's pidfd" is a descriptor of
 * /dev/null: a failure that would SIGKILL the peer cannot signal any process (the signal fails).
 */
import { openSync, writeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import { ROOT_CONTEXT, TraceFlags, trace } from '@opentelemetry/api';

import { discardingLogger } from '../core/logger.js';
import { ChunkTable, addon, closeFd, touchAsync } from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import { encodeChunks, type SnapshotIndex } from '../store/manifest.js';
import type { ChunkLoader } from './chunk-loader.js';
import { ChunkFetcher } from './fetcher.js';
import { assertUserfaultfd, parseHandshake } from './handshake.js';
import { MemoryTier } from './memory-tier.js';
import { RuntimeMetrics } from './metrics.js';
import { RestoreSession } from './restore-session.js';
import type { SessionContext } from './session-types.js';

export interface WarmUpSessionOptions {
  /** The snapshot's context: the warm-up copies its settings (chunk size, page size, key, prefetch). */
  ctx: SessionContext;
  loader: ChunkLoader;
  /** A userfaultfd registered over [base, base + chunk size); the session owns it from the call on. */
  uffd: number;
  base: bigint;
  /** The synthetic chunk: its id and its stored object (zstd, sealed when the snapshot is encrypted). */
  hash: Buffer;
  stored: Buffer;
  /**
   * Whether the snapshot's first store is a local directory: then the chunk is fetched the way its
   * objects are, read from a file by a loader thread (here a memfd holding it), not handed over in memory.
   */
  localFile: boolean;
  signal: AbortSignal;
  /** The thread that faulted on `base` has not come back: the memory must stay mapped. */
  onStuckFault: () => void;
}

/** An origin in memory that holds one object (whatever key it is asked for), optionally at a path. */
export function memoryOrigin(stored: Buffer, path?: string): StoreBackend {
  return {
    ...(path !== undefined ? { localPath: () => path } : {}),
    url: 'memory:warm-up',
    writable: false,
    get: () => Promise.resolve(Buffer.from(stored)),
    put: () => Promise.reject(new Error('read-only')),
    has: () => Promise.resolve(true),
    delete: () => Promise.reject(new Error('read-only')),
    list: async function* () {},
    close: () => Promise.resolve(),
  };
}

/** A parent for the warm-up's span that parent-based samplers do not sample (valid ids, flags 0). */
const UNSAMPLED = trace.setSpanContext(ROOT_CONTEXT, {
  traceId: '00000000000000000000000000000001',
  spanId: '0000000000000001',
  traceFlags: TraceFlags.NONE,
});

/** How long the warm-up waits for its own fault to be served before it populates instead. */
const FAULT_WAIT_MS = 2000;

/** Resolves with whether its own fault crossed into JS and was served by a fetch (the demand path). */
export async function warmUpSession(o: WarmUpSessionOptions): Promise<{ demandFault: boolean }> {
  const { ctx } = o;
  const m = ctx.index.manifest;
  const size = m.chunkSize;
  const table = new ChunkTable(size, size);
  const index: SnapshotIndex = {
    manifest: {
      ...m,
      totalSize: size,
      regions: [{ offset: 0, size }],
      parent: null,
      chunks: encodeChunks(o.hash, Uint8Array.of(1), ['zstd']),
    },
    count: 1,
    hashes: o.hash,
    flags: Uint8Array.of(1),
    ...(ctx.index.crypto ? { crypto: ctx.index.crypto } : {}),
  };
  // Configured as the process's loggers, so that serializing a line is warm too; the lines go nowhere.
  const log = discardingLogger(ctx.log);
  let fileFd = -1;
  if (o.localFile) {
    fileFd = addon().memfdCreate('lazysnap-warm-up-chunk');
    writeSync(fileFd, o.stored);
  }
  const wctx: SessionContext = {
    index,
    table,
    memory: new MemoryTier(table, size),
    fetcher: new ChunkFetcher({
      origins: [memoryOrigin(o.stored, fileFd >= 0 ? `/proc/self/fd/${fileFd}` : undefined)],
      table,
      loader: o.loader,
      encrypted: ctx.index.crypto !== undefined,
    }),
    metrics: new RuntimeMetrics(),
    log,
    failTimeoutMs: ctx.failTimeoutMs,
    // Never poison: the faulting thread is one of this process's (libuv's pool), and a poisoned page is
    // a SIGBUS there. Failing closed is then a SIGKILL of the "peer", a descriptor of /dev/null.
    canPoison: false,
    prefetch: { ...ctx.prefetch, mode: 'off', fill: false, profile: undefined, saveRecording: () => {} },
    trace: {
      snapshotId: ctx.trace.snapshotId,
      origins: { origin0: 'memory:warm-up' },
      parentFor: () => UNSAMPLED,
    },
  };
  let uffd = o.uffd;
  let pidfd = -1;
  let stateFd = -1;
  let session: RestoreSession | undefined;
  let touched: Promise<unknown> | undefined;
  let demandFault: boolean;
  try {
    const handshake = parseHandshake(
      Buffer.from(
        JSON.stringify([{ base_host_virt_addr: Number(o.base), size, offset: 0, page_size: m.pageSize }]),
      ),
      1,
      { totalSize: size, pageSize: m.pageSize },
    );
    assertUserfaultfd(uffd);
    pidfd = openSync('/dev/null', 'r');
    // A supervised worker's sessions get a state memfd from the supervisor: so does this one.
    stateFd = addon().memfdCreate('lazysnap-warm-up');
    session = new RestoreSession({
      ctx: wctx,
      handshake,
      uffd,
      pidfd,
      pid: process.pid,
      restoreId: 'warm-up',
      state: { fd: stateFd },
      onEnd: () => {},
    });
    uffd = -1; // the session owns the uffd and the pidfd now
    pidfd = -1;
    touched = touchAsync(o.base).catch(() => {});
    await Promise.race([touched, sleep(FAULT_WAIT_MS, undefined, { ref: false })]);
    await session.populate(o.signal);
  } finally {
    // Ending the session closes its uffd, which wakes a fault still waiting (it then reads a zero page).
    demandFault = (session?.end('ended').stall.faults ?? 0) > 0;
    for (const fd of [uffd, pidfd, stateFd, fileFd]) if (fd >= 0) closeFd(fd);
    table.unshare();
    // The faulting thread must be back before the caller unmaps the memory, or it would crash there.
    if (touched) {
      const back = await Promise.race([
        touched.then(() => true),
        sleep(FAULT_WAIT_MS, false, { ref: false }),
      ]);
      if (!back) o.onStuckFault();
    }
  }
  return { demandFault };
}
