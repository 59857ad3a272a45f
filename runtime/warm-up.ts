/**
 * Warming the fault path before the socket listens (docs/DESIGN.md, "P6: time to the first page"). The
 * first call of every function on the way from a peer's handshake to its first page served costs more
 * than the page itself (parsing, compiling, a first allocation in the addon): measured here, 3 to 8 ms of
 * a cold process's first fault. So `serve` runs that way once, on its own, touching nothing a peer will
 * see: it parses a handshake; fetches a synthetic chunk (zeros, sealed with the snapshot's key when it is
 * encrypted) from an origin in memory through a fetcher of its own, into a private one-chunk table, on
 * the real loader threads; then maps one chunk of anonymous memory, registers it with a userfaultfd of
 * its own and has a FaultSession install the chunk there. No thread ever faults on that memory
 * (installing needs no waiter), so the event loop cannot deadlock on it, and no origin is asked anything.
 *
 * Best effort: without the right to create a userfaultfd (a serve that only receives them) the native
 * half is skipped; a failure anywhere stops the warm-up quietly, and the first peer pays the cold path.
 */
import { once } from 'node:events';

import type { Logger } from '../core/logger.js';
import {
  ChunkTable,
  FaultSession,
  closeFd,
  constants,
  createUffd,
  mmapAnonymous,
  munmap,
  uffdApi,
  uffdRegister,
  type PageSize,
  type SessionEvent,
} from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import { encodeChunk, hashChunk } from '../store/chunk.js';
import type { ChunkCrypto } from '../store/chunk-crypto.js';
import type { ChunkLoader } from './chunk-loader.js';
import { ChunkFetcher } from './fetcher.js';
import { parseHandshake } from './handshake.js';

export interface WarmUpContext {
  loader: ChunkLoader;
  crypto: ChunkCrypto | undefined;
  chunkSize: number;
  pageSize: PageSize;
  totalSize: number;
}

/** Runs the warm-up; resolves with how long it took (ms), or undefined when it could not run. */
export async function warmUpFaultPath(w: WarmUpContext, log: Logger): Promise<number | undefined> {
  const t0 = performance.now();
  const table = new ChunkTable(w.chunkSize, w.chunkSize);
  const length = w.chunkSize;
  let uffd = -1;
  let base: bigint | undefined;
  let session: FaultSession | undefined;
  try {
    parseHandshake(
      Buffer.from(
        JSON.stringify([
          { base_host_virt_addr: 1 << 30, size: w.totalSize, offset: 0, page_size: w.pageSize },
        ]),
      ),
      1,
      { totalSize: w.totalSize, pageSize: w.pageSize },
    );
    const plain = Buffer.alloc(length);
    const hash = w.crypto ? w.crypto.id(plain) : hashChunk(plain);
    const encoded = encodeChunk('zstd', plain);
    const stored = w.crypto ? w.crypto.seal(hash, encoded) : encoded;
    const memory: StoreBackend = {
      url: 'memory:warm-up',
      writable: false,
      get: () => Promise.resolve(Buffer.from(stored)),
      put: () => Promise.reject(new Error('read-only')),
      has: () => Promise.resolve(true),
      delete: () => Promise.reject(new Error('read-only')),
      list: async function* () {},
      close: () => Promise.resolve(),
    };
    const fetcher = new ChunkFetcher({
      origins: [memory],
      table,
      loader: w.loader,
      encrypted: w.crypto !== undefined,
    });
    await fetcher.fetch({ chunk: 0, hash, codec: 'zstd', length }, 'demand', { patienceMs: 5000 });
    try {
      uffd = createUffd();
    } catch {
      return performance.now() - t0; // no userfaultfd of our own here: the JS and loader half is warm
    }
    uffdApi(uffd, constants().UFFD_FEATURE_EVENT_REMOVE);
    base = mmapAnonymous(length, { hugetlb: w.pageSize !== 4096 });
    uffdRegister(uffd, base, length);
    const events = new EventTarget();
    session = new FaultSession(
      uffd,
      { table, pageSize: w.pageSize, regions: [{ base, size: length, offset: 0 }] },
      (e: SessionEvent) => events.dispatchEvent(new CustomEvent('e', { detail: e })),
    );
    uffd = -1; // the session owns it now
    session.install(0);
    const signal = AbortSignal.timeout(5000);
    for (;;) {
      const [ev] = (await once(events, 'e', { signal })) as [CustomEvent<SessionEvent>];
      if (ev.detail.installed.includes(0) || ev.detail.failures.length > 0) break;
    }
    return performance.now() - t0;
  } catch (e) {
    if (log.isLevelEnabled('debug')) log.debug({ err: (e as Error).message }, 'fault path warm-up skipped');
    return undefined;
  } finally {
    session?.close();
    if (uffd >= 0) closeFd(uffd);
    if (base !== undefined) munmap(base, length);
    table.unshare();
  }
}
