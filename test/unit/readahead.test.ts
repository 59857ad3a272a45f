import { describe, expect, it } from 'vitest';

import { Readahead } from '../../runtime/readahead.js';

describe('Readahead', () => {
  it('opens a window on a forward step, doubles it for every window the reader gets through, up to the cap', () => {
    const r = new Readahead({ chunks: 1000, max: 16 });
    expect(r.touch(10)).toEqual([]); // one touch is no direction
    expect(r.touch(11)).toEqual([12, 13]);
    expect(r.touch(12)).toEqual([14]); // keeps the window ahead of the reader
    expect(r.touch(13)).toEqual([15, 16, 17]); // a whole window consumed: 4 ahead
    const asked: number[] = [];
    for (let c = 14; c < 60; c++) asked.push(...r.touch(c));
    expect(r.window).toBe(16);
    // Every chunk asked for once, in order, never more than the window ahead of the reader.
    expect(asked).toEqual(Array.from({ length: asked.length }, (_, i) => 18 + i));
    expect(asked.at(-1)).toBe(59 + 16);
  });

  it('counts a step over skipped chunks (zero or present) as sequential, and a jump as random', () => {
    const r = new Readahead({ chunks: 1000, max: 8 });
    r.touch(100);
    expect(r.touch(102)).toEqual([103, 104]); // 101 was zero: the reader never faulted on it
    expect(r.touch(500)).toEqual([]); // a jump closes the window
    expect(r.window).toBe(0);
    expect(r.touch(499)).toEqual([]); // backwards is not forward
    expect(r.touch(501)).toEqual([502, 503]); // forward again, over one skipped chunk: a new streak
  });

  it('never reads past the last chunk', () => {
    const r = new Readahead({ chunks: 20, max: 32 });
    r.touch(17);
    expect(r.touch(18)).toEqual([19]);
    expect(r.touch(19)).toEqual([]);
  });

  it('costs a random reader nothing', () => {
    const r = new Readahead({ chunks: 10_000, max: 32 });
    let asked = 0;
    let x = 12345;
    for (let i = 0; i < 5000; i++) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      asked += r.touch(x % 10_000).length;
    }
    expect(asked).toBeLessThan(50); // a forward step within reach now and then, never a streak
  });
});
