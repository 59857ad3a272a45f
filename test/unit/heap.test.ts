/**
 * core/heap.ts: settleHeap() collects this thread's heap there and then, without --expose-gc, and
 * leaves no `gc` global in contexts made afterwards.
 */
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';

import { settleHeap } from '../../core/heap.js';

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('settleHeap', () => {
  it('collects now: an object only a WeakRef reaches is gone after it, and the time is reported', async () => {
    // Made in a function of its own, so that nothing on this frame holds the object.
    const ref = (() => new WeakRef({ payload: new Array(4096).fill(7) }))();
    // A WeakRef's target lives until the job that created or read it has ended.
    await turn();
    const ms = settleHeap();
    await turn();
    expect(ms).toBeTypeOf('number');
    expect(ms).toBeGreaterThanOrEqual(0);
    expect(ref.deref()).toBeUndefined();
  });

  it.skipIf(process.execArgv.includes('--expose-gc'))(
    'does not leave --expose-gc on: a context made after it has no gc',
    () => {
      settleHeap();
      expect(runInNewContext('typeof gc')).toBe('undefined');
      expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
    },
  );
});
