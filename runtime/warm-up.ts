/**
 * Warming the fault path before the socket listens (docs/DESIGN.md, "P6: time to the first page"). The
 * first call of every function on the way from a peer's handshake to its first page served costs more
 * than the page itself (parsing, compiling, a first allocation in the addon): measured here, 3 to 8 ms of
 * a cold process's first fault. So `serve` runs that way once, on its own: it parses a handshake, then
 * maps one chunk of anonymous memory, registers it with a userfaultfd of its own and has a FaultSession
 * install the snapshot's first data chunk into it, fetched and verified like any other. No thread ever
 * faults on that memory (installing needs no waiter), so the event loop cannot deadlock on it. The chunk
 * is evicted afterwards: the warm-up leaves no trace a peer's figures would show.
 *
 * Best effort: without the right to create a userfaultfd (a serve that only receives them) or when the
 * fetch fails, the warm-up stops quietly; the first peer then pays the cold path.
 */
import { once } from 'node:events';

import type { Logger } from '../core/logger.js';
import {
  FaultSession,
  closeFd,
  constants,
  createUffd,
  mmapAnonymous,
  munmap,
  uffdApi,
  uffdRegister,
  type SessionEvent,
} from '../native/index.js';
import { chunkCodec, chunkHash } from '../store/manifest.js';
import { chunkLength } from '../store/reader.js';
import { parseHandshake } from './handshake.js';
import type { SessionContext } from './session-types.js';

/** Runs the warm-up; resolves with how long it took (ms), or undefined when it could not run. */
export async function warmUpFaultPath(ctx: SessionContext, log: Logger): Promise<number | undefined> {
  const t0 = performance.now();
  const { index, table, fetcher } = ctx;
  const m = index.manifest;
  let c = 0;
  while (c < index.count && chunkHash(index, c) === null) c++;
  if (c === index.count) return undefined;
  const length = chunkLength(index, c);
  const size = Math.ceil(length / m.pageSize) * m.pageSize;
  const payload = Buffer.from(
    JSON.stringify([{ base_host_virt_addr: 1 << 30, size: m.totalSize, offset: 0, page_size: m.pageSize }]),
  );
  let uffd = -1;
  let base: bigint | undefined;
  let session: FaultSession | undefined;
  try {
    parseHandshake(payload, 1, { totalSize: m.totalSize, pageSize: m.pageSize });
    uffd = createUffd();
    uffdApi(uffd, constants().UFFD_FEATURE_EVENT_REMOVE);
    base = mmapAnonymous(size, { hugetlb: m.pageSize !== 4096 });
    uffdRegister(uffd, base, size);
    const ref = { chunk: c, hash: chunkHash(index, c)!, codec: chunkCodec(index, c)!, length };
    await fetcher.fetch(ref, 'prefetch');
    const events = new EventTarget();
    session = new FaultSession(
      uffd,
      { table, pageSize: m.pageSize as 4096, regions: [{ base, size, offset: c * m.chunkSize }] },
      (e: SessionEvent) => events.dispatchEvent(new CustomEvent('e', { detail: e })),
    );
    uffd = -1; // the session owns it now
    session.install(c);
    const signal = AbortSignal.timeout(5000);
    for (;;) {
      const [ev] = (await once(events, 'e', { signal })) as [CustomEvent<SessionEvent>];
      if (ev.detail.installed.includes(c) || ev.detail.failures.length > 0) break;
    }
    return performance.now() - t0;
  } catch (e) {
    if (log.isLevelEnabled('debug')) log.debug({ err: (e as Error).message }, 'fault path warm-up skipped');
    return undefined;
  } finally {
    ctx.memory.drop(c);
    session?.close();
    if (uffd >= 0) closeFd(uffd);
    if (base !== undefined) munmap(base, size);
  }
}
