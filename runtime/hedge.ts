/**
 * Hedged requests (Dean and Barroso, "The Tail at Scale"): a demand fetch that has not been answered by
 * the time its origin usually has answered sends a second request, to the next origin when there is one,
 * else to the same one; the first body to arrive wins and the other request is aborted. A fault then
 * waits for the median twice rather than for the slowest 5%: object stores have a long tail (a slow disk,
 * a cold partition), and one straggler in a working set of a hundred chunks is the rule, not the
 * exception. It costs about 5% more requests, and only for faults.
 *
 * "Answered" is first the response: an origin's tail is in the time to its first byte (a queue, a cold
 * partition, a disk seek), and a request that has not started its answer by the p95 of the origin's
 * recent answers is hedged then, not after the p95 of whole bodies, which adds a transfer time to every
 * hedged fault's wait. A request whose answer came in time is still hedged if its body has not arrived
 * by the p95 of whole bodies (a stream that stalled). A backend that does not report its answers
 * (ReadOptions.onAnswer) is hedged on whole bodies alone. A hedge whose body is late in turn is hedged
 * once more (MAX_HEDGES).
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** How long an origin's recent requests took (to their answer, or whole bodies): a ring of the last `size`. */
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
 * When a request is hedged (ms after it was sent): if the origin has not answered it by `answerMs`, or
 * has not sent the whole body by `bodyMs`. `answerMs` undefined: on the body alone.
 */
export interface HedgeAfter {
  answerMs?: number;
  bodyMs: number;
}

/**
 * How many hedges one request may get: a hedge that is itself late (it meets the tail as often as any
 * request, one in 20) gets one more, so that a fault meeting two tails waits ~3 fetches, not the tail.
 */
export const MAX_HEDGES = 2;

/**
 * `request(i, onAnswer)` starts request i (0: the first, 1 and on: hedges) with its own signal, and calls
 * `onAnswer` when its origin answered (before the body). Each request past its deadline (`after`, from
 * when it was sent; a hedge's is twice its body's) while none has succeeded sends one more, up to
 * `maxHedges`. Resolves with the first that succeeds, which one it was ('won': a hedge) and how many
 * hedges were sent; aborts the others. With `after` undefined it is one plain request. All failing
 * rejects with the first request's error.
 */
export async function hedged<T>(
  request: (signal: AbortSignal, i: number, onAnswer: () => void) => Promise<T>,
  after: HedgeAfter | undefined,
  maxHedges = MAX_HEDGES,
): Promise<{ value: T; hedge: HedgeOutcome; hedges: number }> {
  const aborts: AbortController[] = [];
  const sent: Promise<readonly [T, number]>[] = [];
  /** Starts request i; resolves 'late' once it is past its deadline without its body. */
  const start = (i: number, timer: AbortSignal): Promise<'late'> => {
    const abort = new AbortController();
    const at = performance.now();
    let answered = (): void => {};
    const answer = new Promise<void>((r) => (answered = r));
    const p = request(abort.signal, i, () => answered());
    aborts.push(abort);
    sent.push(p.then((v) => [v, i] as const));
    if (after === undefined) return new Promise(() => {});
    const late = (ms: number) =>
      sleep(Math.max(0, at + ms - performance.now()), undefined, { signal: timer }).then(
        () => 'late' as const,
        () => 'never' as const,
      );
    // Past the answer's deadline unanswered (when it comes before the body's), or past the body's.
    const bodyLate = async (ms: number) =>
      (await late(ms)) === 'late' ? 'late' : new Promise<'late'>(() => {});
    return (async () => {
      // A hedge is given twice the body's deadline, and no answer deadline: it often needs a new
      // connection (the pool's are busy), which the p95s over warm ones do not allow for, and a third
      // request for that would be waste. The tail it is there for is many times longer.
      if (i > 0) return bodyLate(2 * after.bodyMs);
      if (after.answerMs !== undefined && after.answerMs < after.bodyMs) {
        const first = await Promise.race([
          p.then(
            () => 'settled' as const,
            () => 'settled' as const,
          ),
          answer.then(() => 'answered' as const),
          late(after.answerMs),
        ]);
        if (first === 'late') return 'late';
        if (first !== 'answered') return new Promise<'late'>(() => {});
      }
      return bodyLate(after.bodyMs);
    })();
  };
  const timer = new AbortController();
  try {
    let late = start(0, timer.signal);
    if (after === undefined) return { value: await sent[0]!.then(([v]) => v), hedge: 'none', hedges: 0 };
    for (;;) {
      // The first success among those sent, all of them failing, or the latest one late.
      const settled = Promise.any(sent).then(
        (won) => ({ won }),
        () => ({ failed: true as const }),
      );
      const next = await Promise.race([settled, late]);
      if (next !== 'late') {
        if ('failed' in next) {
          // All failed: the first request's story is the one to tell.
          await sent[0];
          throw new Error('unreachable: the first request failed');
        }
        const [value, i] = next.won;
        aborts.forEach((a, j) => j !== i && a.abort());
        const hedges = aborts.length - 1;
        return { value, hedge: hedges === 0 ? 'none' : i > 0 ? 'won' : 'lost', hedges };
      }
      if (aborts.length > maxHedges) {
        late = new Promise(() => {});
        continue;
      }
      late = start(aborts.length, timer.signal);
    }
  } finally {
    timer.abort();
  }
}
