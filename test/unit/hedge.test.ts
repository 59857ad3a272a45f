import { describe, expect, it } from 'vitest';
import { LatencyWindow, hedged } from '../../runtime/hedge.js';

describe('LatencyWindow', () => {
  it('has no basis to hedge on before 20 requests', () => {
    const w = new LatencyWindow();
    for (let i = 0; i < 19; i++) w.record(10);
    expect(w.hedgeAfterMs()).toBeUndefined();
    w.record(10);
    expect(w.hedgeAfterMs()).toBe(10);
  });

  it('uses the nearest-rank p95', () => {
    const w = new LatencyWindow();
    // 1..100: nearest-rank p95 is 95 (floor(0.95 * 100) would index the 96th).
    for (let i = 1; i <= 100; i++) w.record(i);
    expect(w.quantile(0.95)).toBe(95);
    expect(w.quantile(0.5)).toBe(50);
  });

  it('caps the hedge delay at twice the median when the tail fills the p95', () => {
    const w = new LatencyWindow();
    // 10% of answers are 20x slow: the p95 is a tail time, so hedging at it could never win.
    for (let i = 0; i < 90; i++) w.record(40);
    for (let i = 0; i < 10; i++) w.record(800);
    expect(w.quantile(0.95)).toBe(800);
    expect(w.hedgeAfterMs()).toBe(80);
  });

  it('keeps only the last `size` requests', () => {
    const w = new LatencyWindow(20);
    for (let i = 0; i < 20; i++) w.record(1000);
    for (let i = 0; i < 20; i++) w.record(5);
    expect(w.hedgeAfterMs()).toBe(5);
  });
});

describe('hedged', () => {
  it('sends the hedge only after the delay, and the faster answer wins', async () => {
    const started: number[] = [];
    const aborted: number[] = [];
    const r = await hedged(
      async (signal, i) => {
        started.push(i);
        signal.addEventListener('abort', () => aborted.push(i));
        await new Promise((res) => setTimeout(res, i === 0 ? 300 : 5));
        return i;
      },
      { bodyMs: 20 },
    );
    expect(r).toEqual({ value: 1, hedge: 'won', hedges: 1 });
    expect(started).toEqual([0, 1]);
    expect(aborted).toEqual([0]);
  });

  it('sends no hedge when the first answers in time', async () => {
    const started: number[] = [];
    const r = await hedged(
      async (_s, i) => {
        started.push(i);
        return i;
      },
      { bodyMs: 1000 },
    );
    expect(r).toEqual({ value: 0, hedge: 'none', hedges: 0 });
    expect(started).toEqual([0]);
  });

  /**
   * A request that answers at `answerAt` ms and has its body at `bodyAt` (never, when undefined), and a
   * hedge that answers at once: when was the hedge sent, if it was?
   */
  async function hedgeSentAt(
    answerAt: number | undefined,
    bodyAt: number,
    after: { answerMs?: number; bodyMs: number },
  ) {
    const t0 = performance.now();
    let hedgeAt: number | undefined;
    const r = await hedged(async (signal, i, answered) => {
      if (i === 1) {
        hedgeAt = performance.now() - t0;
        return i;
      }
      if (answerAt !== undefined) setTimeout(answered, answerAt);
      await new Promise((res, rej) => {
        const t = setTimeout(res, bodyAt);
        signal.addEventListener('abort', () => (clearTimeout(t), rej(signal.reason as Error)));
      });
      return i;
    }, after);
    return { hedge: r.hedge, hedgeAt };
  }

  it('hedges a request its origin has not answered by the answer deadline, long before the body deadline', async () => {
    const r = await hedgeSentAt(undefined, 2000, { answerMs: 20, bodyMs: 1000 });
    expect(r.hedge).toBe('won');
    // Sent at the answer deadline: the body deadline (1 s) would have made it no earlier than 1000 ms.
    expect(r.hedgeAt).toBeGreaterThan(15);
    expect(r.hedgeAt).toBeLessThan(1000);
  });

  it('does not hedge a request that answered in time and sends its body before the body deadline', async () => {
    const r = await hedgeSentAt(5, 150, { answerMs: 20, bodyMs: 1000 });
    expect(r).toEqual({ hedge: 'none', hedgeAt: undefined });
  });

  it('hedges a request that answered in time but whose body outlasts the body deadline', async () => {
    const r = await hedgeSentAt(5, 5000, { answerMs: 20, bodyMs: 100 });
    expect(r.hedge).toBe('won');
    expect(r.hedgeAt).toBeGreaterThan(80);
  });

  it('hedges on the body alone when the origin reports no answer deadline', async () => {
    const r = await hedgeSentAt(undefined, 5000, { bodyMs: 100 });
    expect(r.hedge).toBe('won');
    expect(r.hedgeAt).toBeGreaterThan(80);
  });

  it('hedges a late hedge once more, and no further', async () => {
    // Every request but the third is the tail: the first is hedged at its answer deadline, that hedge at
    // twice its body deadline, and the third answers.
    const started: number[] = [];
    const aborted: number[] = [];
    const r = await hedged(
      async (signal, i) => {
        started.push(performance.now());
        signal.addEventListener('abort', () => aborted.push(i));
        await new Promise((res) => setTimeout(res, i === 2 ? 5 : 3000));
        return i;
      },
      { answerMs: 10, bodyMs: 60 },
    );
    expect(r).toEqual({ value: 2, hedge: 'won', hedges: 2 });
    expect(started).toHaveLength(3);
    // The hedge's own deadline: twice its body's (120 ms), not its body's (60) nor the answer's (10). Timers
    // may fire a little before performance.now() says, hence the margins here and below.
    expect(started[2]! - started[1]!).toBeGreaterThan(90);
    expect(aborted.sort()).toEqual([0, 1]);

    const all: number[] = [];
    const r2 = await hedged(
      async (_s, i) => {
        all.push(i);
        await new Promise((res) => setTimeout(res, i === 0 ? 200 : 1000));
        return i;
      },
      { bodyMs: 20 },
    );
    expect(r2).toEqual({ value: 0, hedge: 'lost', hedges: 2 });
    expect(all).toEqual([0, 1, 2]);
  });

  it("rejects with the first request's error when every request fails", async () => {
    const e = await hedged(
      async (_s, i) => {
        await new Promise((res) => setTimeout(res, i === 0 ? 50 : 5));
        throw new Error(`request ${i}`);
      },
      { bodyMs: 10 },
    ).catch((x: unknown) => x);
    expect((e as Error).message).toBe('request 0');
    const plain = await hedged(async () => Promise.reject(new Error('only')), undefined).catch(
      (x: unknown) => x,
    );
    expect((plain as Error).message).toBe('only');
  });
});
