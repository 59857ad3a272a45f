/**
 * Warming the fault path before the socket listens (docs/DESIGN.md, "P6: time to the first page"). The
 * first call of every function on the way from a peer's handshake to its first page served costs more
 * than the page itself (V8 compiles a function on its first call; a first allocation in the addon):
 * measured, a cold process's first session took 4 ms from the handshake to its first need and 3.7 ms
 * more for the first chunk, against 1.7 and 1.2 ms for a second session. So `serve` runs that way once,
 * on its own, touching nothing a peer will see: it parses a handshake; fetches a synthetic chunk (zeros,
 * sealed with the snapshot's key when it is encrypted) from an origin in memory through a fetcher of its
 * own, into a private one-chunk table, on the real loader threads; then maps one chunk of anonymous
 * memory, registers it with a userfaultfd of its own and runs a whole RestoreSession over it
 * (runtime/warm-up-session.ts), which fetches, verifies and installs the chunk the way a session does.
 * No thread ever faults on that memory (installing needs no waiter), so the event loop cannot deadlock
 * on it, and no origin is asked anything.
 *
 * Best effort: without the right to create a userfaultfd (a serve that only receives them) the native
 * half is skipped; a failure anywhere stops the warm-up quietly, and the first peer pays the cold path.
 */
import type { Logger } from '../core/logger.js';
import {
  ChunkTable,
  closeFd,
  constants,
  createUffd,
  mmapAnonymous,
  munmap,
  uffdApi,
  uffdRegister,
} from '../native/index.js';
import { encodeChunk, hashChunk } from '../store/chunk.js';
import type { ChunkLoader } from './chunk-loader.js';
import { ChunkFetcher } from './fetcher.js';
import { parseHandshake } from './handshake.js';
import type { SessionContext } from './session-types.js';
import { memoryOrigin, warmUpSession } from './warm-up-session.js';

export interface WarmUpContext {
  loader: ChunkLoader;
  /** The snapshot's session context: what the warm-up copies settings from (it changes nothing there). */
  ctx: SessionContext;
  /** Whether the first store is a local directory (its objects are read by the loader threads). */
  localOrigin: boolean;
}

/** What the warm-up did: how long it took, and whether it got as far as a whole session. */
export interface WarmUp {
  ms: number;
  /** False where this process cannot create a userfaultfd: only the fetch and loader half ran. */
  session: boolean;
  /** The session's own fault (a read by a thread of this process) crossed into JS and was fetched. */
  demandFault: boolean;
}

/** Runs the warm-up; resolves with what it did, or undefined when it failed (the first peer pays). */
export async function warmUpFaultPath(w: WarmUpContext, log: Logger): Promise<WarmUp | undefined> {
  const t0 = performance.now();
  const m = w.ctx.index.manifest;
  const crypto = w.ctx.index.crypto;
  const length = m.chunkSize;
  const table = new ChunkTable(length, length);
  let uffd = -1;
  let base: bigint | undefined;
  let unmapSafe = true;
  try {
    parseHandshake(
      Buffer.from(
        JSON.stringify([
          { base_host_virt_addr: 1 << 30, size: m.totalSize, offset: 0, page_size: m.pageSize },
        ]),
      ),
      1,
      { totalSize: m.totalSize, pageSize: m.pageSize },
    );
    const plain = Buffer.alloc(length);
    const hash = crypto ? crypto.id(plain) : hashChunk(plain);
    const encoded = encodeChunk('zstd', plain);
    const stored = crypto ? crypto.seal(hash, encoded) : encoded;
    const fetcher = new ChunkFetcher({
      origins: [memoryOrigin(stored)],
      table,
      loader: w.loader,
      encrypted: crypto !== undefined,
    });
    await fetcher.fetch({ chunk: 0, hash, codec: 'zstd', length }, 'demand', { patienceMs: 5000 });
    try {
      uffd = createUffd();
    } catch {
      // No userfaultfd of our own here: the JS and loader half is warm.
      return { ms: performance.now() - t0, session: false, demandFault: false };
    }
    uffdApi(uffd, constants().UFFD_FEATURE_EVENT_REMOVE);
    base = mmapAnonymous(length, { hugetlb: m.pageSize !== 4096 });
    uffdRegister(uffd, base, length);
    const owned = uffd;
    uffd = -1; // the session owns it now
    const { demandFault } = await warmUpSession({
      ctx: w.ctx,
      loader: w.loader,
      uffd: owned,
      base,
      hash: Buffer.from(hash, 'hex'),
      stored,
      localFile: w.localOrigin,
      signal: AbortSignal.timeout(5000),
      onStuckFault: () => (unmapSafe = false),
    });
    return { ms: performance.now() - t0, session: true, demandFault };
  } catch (e) {
    if (log.isLevelEnabled('debug')) log.debug({ err: (e as Error).message }, 'fault path warm-up skipped');
    return undefined;
  } finally {
    if (uffd >= 0) closeFd(uffd);
    // Left mapped (a chunk of memory) if a thread faulting on it never came back: unmapped, it would crash.
    if (base !== undefined && unmapSafe) munmap(base, length);
    table.unshare();
  }
}
