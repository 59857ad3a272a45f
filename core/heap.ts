/**
 * Settling a V8 heap before a process (or thread) starts to serve.
 *
 * Start-up allocates a lot (manifest, stores, the warm-up's session and loads) and then stops: the old
 * generation is left near its limit, and V8 starts its next major collection at the next allocations
 * of any size, which are the first restore's. That collection marks concurrently on V8's own threads,
 * which took both CPUs of a 2-vCPU host for 2–8 ms right after the first session opened, while the
 * fault thread, the event loop and a loader waited for one (bench/ANALYSIS.md, "P6"). Collecting once,
 * synchronously, before serving sets the next limit from what start-up left alive, so that the first
 * restores allocate into a heap with room.
 *
 * Only for processes and threads lazysnap owns (the supervised worker, the supervisor, the loader
 * threads): an application embedding RestoreServer keeps its own heap's schedule.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** The isolate's full-collection function, once found: null when this V8 offers none. */
let collect: (() => void) | null | undefined;

function collector(): (() => void) | null {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === 'function') return exposed;
  // Without --expose-gc on the command line: V8 installs `gc` in contexts created while the flag is set,
  // and the function collects the whole isolate's heap, not just that context's. The flag is cleared again
  // at once, so no context made later (a worker thread's) sees a `gc` it did not ask for.
  try {
    setFlagsFromString('--expose-gc');
    const fn: unknown = runInNewContext('gc');
    return typeof fn === 'function' ? (fn as () => void) : null;
  } catch {
    return null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}

/**
 * A full, synchronous collection of this thread's heap, now. Returns how long it took (ms), or undefined
 * when this V8 offers no way to ask for one (nothing happened: V8 collects on its own schedule).
 */
export function settleHeap(): number | undefined {
  if (collect === undefined) collect = collector();
  if (collect === null) return undefined;
  const t0 = performance.now();
  collect();
  return performance.now() - t0;
}
