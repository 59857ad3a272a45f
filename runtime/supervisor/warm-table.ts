/**
 * Warming a successor's chunk table before it takes sessions over (an upgrade, runtime/supervisor/
 * handover.ts). A new worker starts with an empty table: without this, every chunk the old one held that
 * some peer has not installed yet is fetched again at the moment of the switch, all at once, and faults
 * queue behind that burst (measured: the slowest fault of 8 restores went from ~100 to ~240 ms). So the
 * running serve names its resident chunks, most recently used first, and the successor's worker fetches
 * them at prefetch priority while the old one still serves; then it takes over.
 *
 * Best effort and bounded: chunks that fail are left to the demand path, and the handover goes ahead
 * when `timeoutMs` runs out.
 */
import { chunkCodec, chunkHash } from '../../store/manifest.js';
import { chunkLength } from '../../store/reader.js';
import type { SessionContext } from '../session-types.js';

export interface Warmed {
  asked: number;
  fetched: number;
  ms: number;
}

export async function warmTable(
  ctx: SessionContext,
  chunks: readonly number[],
  timeoutMs: number,
): Promise<Warmed> {
  const t0 = performance.now();
  const { index, memory, fetcher } = ctx;
  let fetched = 0;
  const wanted = chunks.filter((c) => Number.isInteger(c) && c >= 0 && c < index.count);
  const all = Promise.allSettled(
    wanted.map((c) => {
      const hash = chunkHash(index, c);
      if (hash === null || memory.has(c)) return Promise.resolve();
      return fetcher
        .fetch({ chunk: c, hash, codec: chunkCodec(index, c)!, length: chunkLength(index, c) }, 'prefetch')
        .then(() => void fetched++);
    }),
  );
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([all, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
  clearTimeout(timer);
  return { asked: wanted.length, fetched, ms: performance.now() - t0 };
}
