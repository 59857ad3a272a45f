/**
 * Hedged requests (Dean and Barroso, "The Tail at Scale"): a demand fetch that has not been answered by
 * the time its origin usually has answered (the p95 of its recent requests) sends a second request, to
 * the next origin when there is one, else to the same one; the first body to arrive wins and the other
 * request is aborted. A fault then waits for the median twice rather than for the slowest 5%: object
 * stores have a long tail (a slow disk, a cold partition), and one straggler in a working set of a
 * hundred chunks is the rule, not the exception. It costs about 5% more requests, and only for faults.
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** How long an origin's recent requests took (whole bodies): a ring of the last `size`. */
export class LatencyWindow {
  readonly #ms: number[] = [];
  readonly #size: number;
  #next = 0;

  constructor(size = 200) {
    this.#size = size;
  }

  record(ms: number): void {
    if (this.#ms.length < this.#size) this.#ms.push(ms);
    else this.#ms[this.#next] = ms;
    this.#next = (this.#next + 1) % this.#size;
  }

  /** The nearest-rank q-quantile (0..1), undefined before `min` requests were seen (no basis to hedge on). */
  quantile(q: number, min = 20): number | undefined {
    if (this.#ms.length < min) return undefined;
    const sorted = [...this.#ms].sort((a, b) => a - b);
    return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
  }

  /**
   * When a demand request should be hedged: the p95, but never later than twice the median. The cap is
   * what keeps hedging working once the tail itself is 5% or more of the window: the p95 is then a tail
   * time, a hedge sent that late cannot win, the slow answer is recorded again, and hedging would stay
   * stuck doing nothing (a seeded model got stuck in 40 of 300 runs without the cap, 0 with it).
   */
  hedgeAfterMs(min = 20): number | undefined {
    const p95 = this.quantile(0.95, min);
    const p50 = this.quantile(0.5, min);
    return p95 === undefined || p50 === undefined ? undefined : Math.min(p95, 2 * p50);
  }
}

export type HedgeOutcome = 'none' | 'won' | 'lost';

/**
 * `request(i)` starts request i (0: the first, 1: the hedge) with its own signal. Resolves with the first
 * that succeeds and which one it was; aborts the other. With `hedgeAfterMs` undefined it is one plain
 * request. Both failing rejects with the first request's error.
 */
export async function hedged<T>(
  request: (signal: AbortSignal, i: number) => Promise<T>,
  hedgeAfterMs: number | undefined,
): Promise<{ value: T; hedge: HedgeOutcome }> {
  const first = new AbortController();
  const p0 = request(first.signal, 0);
  if (hedgeAfterMs === undefined) return { value: await p0, hedge: 'none' };
  const timer = new AbortController();
  const early = await Promise.race([
    p0.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    ),
    sleep(hedgeAfterMs, undefined, { signal: timer.signal }).then(
      () => undefined,
      () => undefined,
    ),
  ]);
  timer.abort();
  if (early) {
    if ('error' in early) throw early.error;
    return { value: early.value, hedge: 'none' };
  }
  const second = new AbortController();
  const p1 = request(second.signal, 1);
  try {
    const winner = await Promise.any([p0.then((v) => [v, 0] as const), p1.then((v) => [v, 1] as const)]);
    (winner[1] === 0 ? second : first).abort();
    return { value: winner[0], hedge: winner[1] === 1 ? 'won' : 'lost' };
  } catch {
    // Both failed: the first request's story is the one to tell.
    return { value: await p0, hedge: 'lost' };
  }
}
