/**
 * runtime/prefetch.ts's Prefetcher on its own, with a target whose prefetches finish when the test says
 * so: the order it asks for chunks in is exactly observable (prefetch.test.ts runs it through serve).
 */
import { describe, expect, it } from 'vitest';

import { Prefetcher, type PrefetchTarget } from '../../runtime/prefetch.js';

class Target implements PrefetchTarget {
  readonly asked: number[] = [];
  readonly done = new Set<number>();
  readonly #pending: (() => void)[] = [];
  ended = false;
  skip(c: number): boolean {
    return this.done.has(c) || this.asked.includes(c);
  }
  prefetch(c: number): Promise<void> {
    this.asked.push(c);
    return new Promise((r) => this.#pending.push(() => (this.done.add(c), r())));
  }
  /** Finishes the oldest prefetch in flight, and lets the prefetcher pick its next chunk. */
  async finishOne(): Promise<void> {
    this.#pending.shift()?.();
    await new Promise((r) => setImmediate(r));
  }
  get inFlight(): number {
    return this.#pending.length;
  }
}

const settle = () => new Promise((r) => setImmediate(r));

describe('Prefetcher', () => {
  it('fill jumps to just after a demand fault, then wraps round to what it skipped', async () => {
    const t = new Target();
    const p = new Prefetcher(t, 16, 1);
    const run = p.run([], true);
    await settle();
    expect(t.asked).toEqual([0]);
    // The guest faults on chunk 9 (the demand path fetches it): the fill goes on from 10.
    t.done.add(9);
    p.demand(9);
    await t.finishOne();
    await t.finishOne();
    await t.finishOne();
    expect(t.asked).toEqual([0, 10, 11, 12]);
    while (t.inFlight > 0) await t.finishOne();
    await run;
    // Everything but the demanded chunk, each once: 10..15, then round to 1..8.
    expect(t.asked).toEqual([0, 10, 11, 12, 13, 14, 15, 1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('replays the profile in its order first, never more than the window at once, then fills', async () => {
    const t = new Target();
    const p = new Prefetcher(t, 8, 2);
    const run = p.run([5, 2, 7], true);
    await settle();
    expect(t.asked).toEqual([5, 2]);
    expect(t.inFlight).toBe(2);
    await t.finishOne();
    expect(t.asked).toEqual([5, 2, 7]);
    while (t.inFlight > 0) await t.finishOne();
    await run;
    expect(t.asked).toEqual([5, 2, 7, 0, 1, 3, 4, 6]);
  });

  it('stops asking once the session ended', async () => {
    const t = new Target();
    const p = new Prefetcher(t, 8, 1);
    const run = p.run([], true);
    await settle();
    t.ended = true;
    await t.finishOne();
    await run;
    expect(t.asked).toEqual([0]);
  });
});
