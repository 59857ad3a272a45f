/**
 * The ring a loader thread leaves its direct loads' outcomes in (runtime/direct-ring.ts), read by the main
 * thread: in order, nothing lost or read twice, and a full ring refused rather than overwritten, also
 * with the writer in a worker thread of its own over the same shared memory.
 */
import { describe, expect, it } from 'vitest';

import { startModuleWorker } from '../../core/worker.js';
import { DirectRing, RING_CAPACITY, type RingOutcome } from '../../runtime/direct-ring.js';

const outcome = (i: number): RingOutcome => ({
  session: 4097 + i,
  chunk: i,
  stored: 1000 + i,
  disk: i % 5 === 0,
  kept: i % 2 === 0,
  startedAt: 1.7e12 + i,
  endedAt: 1.7e12 + i + 0.5,
  readMs: i / 10,
  decodeMs: i / 20,
  verifyMs: i / 40,
});

describe('direct outcome ring', () => {
  it('hands outcomes over in order, each once; a full ring refuses the next until read', () => {
    const w = new DirectRing();
    const r = new DirectRing(w.buffer);
    expect(r.take()).toEqual([]);
    for (let i = 0; i < RING_CAPACITY; i++) expect(w.put(outcome(i))).toBe(true);
    expect(w.put(outcome(RING_CAPACITY))).toBe(false); // full: not written over the oldest
    const first = r.take();
    expect(first).toHaveLength(RING_CAPACITY);
    expect(first.map((o) => o.chunk)).toEqual([...Array(RING_CAPACITY).keys()]);
    expect(first[7]).toEqual(outcome(7));
    expect(r.take()).toEqual([]);
    // Wrapped around: the slots are reused after the reader freed them.
    for (let i = 0; i < 10; i++) expect(w.put(outcome(RING_CAPACITY + i))).toBe(true);
    expect(r.take()).toEqual(Array.from({ length: 10 }, (_, i) => outcome(RING_CAPACITY + i)));
  });

  it('a writer thread and this thread reading as it writes: 20000 outcomes, in order, none lost', async () => {
    const ring = new DirectRing();
    const n = 20_000;
    const worker = startModuleWorker(new URL('../fixtures/ring-writer.js', import.meta.url), {
      workerData: { buffer: ring.buffer, n },
    });
    const seen: number[] = [];
    while (seen.length < n) {
      for (const o of ring.take()) {
        expect(o.stored).toBe(o.chunk * 3);
        seen.push(o.chunk);
      }
      await new Promise((r) => setImmediate(r));
    }
    await worker.terminate();
    expect(seen).toEqual([...Array(n).keys()]);
  });
});
