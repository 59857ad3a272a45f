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
    const r = await hedged(async (signal, i) => {
      started.push(i);
      signal.addEventListener('abort', () => aborted.push(i));
      await new Promise((res) => setTimeout(res, i === 0 ? 300 : 5));
      return i;
    }, 20);
    expect(r).toEqual({ value: 1, hedge: 'won' });
    expect(started).toEqual([0, 1]);
    expect(aborted).toEqual([0]);
  });

  it('sends no hedge when the first answers in time', async () => {
    const started: number[] = [];
    const r = await hedged(async (_s, i) => {
      started.push(i);
      return i;
    }, 1000);
    expect(r).toEqual({ value: 0, hedge: 'none' });
    expect(started).toEqual([0]);
  });
});
