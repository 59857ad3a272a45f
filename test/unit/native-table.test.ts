/**
 * The chunk table's arena and the native argument checks (issue 11): by default huge pages only where a
 * chunk is whole huge pages (khugepaged would otherwise back 2 MiB around one resident 64 KiB chunk, up
 * to 32x the memory budget), else as the caller (serve: arenaHugePages) says; and sizes that would
 * overflow the chunk count or an int32 refused. The stages (issue 12): a chunk loaded into a reused
 * buffer is resident (installs copy from the stage) before it is copied to its own slot, and eviction,
 * pins and failed loads keep the accounting and the bytes right.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';

import { ChunkTable, addon, closeFd } from '../../native/index.js';
import { ChunkLoader } from '../../runtime/chunk-loader.js';
import { encodeChunk, hashChunk } from '../../store/chunk.js';
import { arenaHugePages } from '../../runtime/memory-tier.js';

/** The VmFlags line of the mapping that starts at `address` in /proc/self/smaps. */
function vmFlags(address: bigint): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  const start = smaps.findIndex((l) => l.startsWith(`${address.toString(16)}-`));
  expect(start, `no mapping at 0x${address.toString(16)}`).toBeGreaterThanOrEqual(0);
  const flags = smaps.slice(start).find((l) => l.startsWith('VmFlags:'))!;
  return flags.slice('VmFlags:'.length).trim().split(/\s+/);
}

describe('native: the chunk table', () => {
  it('advises huge pages for 2 MiB chunks, and forbids them for smaller ones', () => {
    for (const [cs, want, not] of [
      [64 * 1024, 'nh', 'hg'],
      [512 * 1024, 'nh', 'hg'],
      [2 * 1024 * 1024, 'hg', 'nh'],
    ] as const) {
      const t = new ChunkTable(64 * 1024 * 1024, cs);
      const flags = vmFlags(t.stats().arenaAddress);
      expect(flags, `chunk size ${cs}`).toContain(want);
      expect(flags, `chunk size ${cs}`).not.toContain(not);
    }
  });

  it("takes the caller's word on huge pages, and serve asks for them where they cannot cost the budget", () => {
    const MiB = 1024 * 1024;
    for (const hugePages of [true, false]) {
      const t = new ChunkTable(64 * MiB, 512 * 1024, { hugePages });
      const flags = vmFlags(t.stats().arenaAddress);
      expect(flags).toContain(hugePages ? 'hg' : 'nh');
      expect(flags).not.toContain(hugePages ? 'nh' : 'hg');
    }
    expect(() => addon().tableCreate(MiB, 4096, 1 as unknown as boolean)).toThrow(
      /hugePages must be a boolean/,
    );
    // Whole-huge-page chunks always; smaller ones only when the budget holds the whole snapshot.
    expect(arenaHugePages(2 * MiB, 64 * 1024 * MiB, 1024 * MiB)).toBe(true);
    expect(arenaHugePages(512 * 1024, 1024 * MiB, 1024 * MiB)).toBe(true);
    expect(arenaHugePages(512 * 1024, 1024 * MiB + 4096, 1024 * MiB)).toBe(false);
    expect(arenaHugePages(64 * 1024, 8192 * MiB, 0)).toBe(false);
  });

  it('refuses a snapshot size whose chunk count would overflow, instead of wrapping around', () => {
    expect(() => addon().tableCreate((2n ** 64n - 1n) as unknown as number, 4096)).toThrow(
      /at most 2\^32 chunks/,
    );
    expect(() => addon().tableCreate(2 ** 52, 4096)).toThrow(/at most 2\^32 chunks/);
  });

  it('refuses integers outside int32 for descriptors rather than converting them (undefined behaviour in C)', () => {
    for (const v of [2 ** 31, -(2 ** 31) - 1, 2 ** 40, Number.MAX_SAFE_INTEGER])
      expect(() => addon().closeFd(v)).toThrow(
        expect.objectContaining({ code: 'LAZYSNAP_INVALID_ARGUMENT' }),
      );
    expect(() => closeFd(-1)).toThrow(); // still an argument error, now in range
  });

  describe('stages', () => {
    const CS = 64 * 1024;
    const bytesOf = (seed: number) => Buffer.alloc(CS, seed);
    /** Loads chunk i into a stage (or its slot when none is free), as a loader thread does. */
    const load = (t: ChunkTable, i: number, seed = i + 1) => {
      const where = t.reserveStaged(i);
      expect(where, `chunk ${i} should be absent`).toBeDefined();
      where!.set(bytesOf(seed));
      t.commit(i, true);
      return where!;
    };
    const inStage = (t: ChunkTable, v: Uint8Array) => v.byteOffset >= t.stats().arenaBytes;
    /** Chunk i of the loader's table, from `plain` zstd-encoded in memory, at `priority`. */
    const loadBytes = (loader: ChunkLoader, i: number, plain: Buffer, priority: 'demand' | 'prefetch') =>
      loader.load({
        table: loader.tableId,
        chunk: i,
        key: `k${i}`,
        hash: hashChunk(plain),
        codec: 'zstd',
        length: CS,
        from: 'bytes',
        bytes: encodeChunk('zstd', plain),
        maxBytes: 2 * CS,
        priority,
      });

    it('serves a staged chunk from its stage, then from its slot once settled in slices', () => {
      const t = new ChunkTable(16 * CS, CS);
      const stage = load(t, 3);
      expect(inStage(t, stage)).toBe(true);
      expect(t.state(3)).toBe('resident');
      expect(t.stats()).toMatchObject({
        residentChunks: 1,
        residentBytes: CS,
        stagedChunks: 1,
        busyStages: 1,
      });
      // The slot has not been written: the bytes a reader gets can only be the stage's.
      expect(t.slot(3).every((b) => b === 0)).toBe(true);
      const pinned = t.pin(3)!;
      expect(pinned.byteOffset).toBe(stage.byteOffset);
      expect(Buffer.from(pinned).equals(bytesOf(4))).toBe(true);
      expect(t.settle(3, 16 * 1024)).toBe(48 * 1024);
      expect(t.settle(3, 16 * 1024)).toBe(32 * 1024);
      expect(t.settle(3, 64 * 1024)).toBe(0);
      expect(Buffer.from(t.slot(3)).equals(bytesOf(4))).toBe(true);
      // Settled, but a reader still holds the stage: it is not reused until the unpin.
      expect(t.stats()).toMatchObject({ residentChunks: 1, stagedChunks: 0, busyStages: 1 });
      t.unpin(3, pinned);
      expect(t.stats()).toMatchObject({ busyStages: 0 });
      const now = t.pin(3)!;
      expect(now.byteOffset).toBe(3 * CS); // from the slot from now on
      t.unpin(3, now);
      expect(t.settle(3, CS)).toBe(0); // nothing staged: nothing to do
      expect(() => t.settle(3, 1000)).toThrow(/multiple of 4096/);
    });

    it('evicted while staged: still readable until settled, then absent, with the counts right at each step', () => {
      const t = new ChunkTable(16 * CS, CS);
      load(t, 5);
      expect(t.evict(5)).toBe(CS);
      expect(t.evict(5)).toBe(0); // once
      expect(t.state(5)).toBe('absent');
      expect(t.stats()).toMatchObject({ residentChunks: 0, residentBytes: 0, stagedChunks: 1 });
      expect(t.reserveStaged(5)).toBeUndefined(); // no second load while its stage is still in use
      expect(t.read(5)?.equals(bytesOf(6))).toBe(true); // a fault thread would still be served right
      expect(t.settle(5, CS)).toBe(0);
      expect(t.state(5)).toBe('absent');
      expect(t.slot(5).every((b) => b === 0)).toBe(true); // the slot's memory given back, not filled
      expect(t.stats()).toMatchObject({ residentChunks: 0, stagedChunks: 0, busyStages: 0 });
      load(t, 5, 9); // loadable again
      expect(t.read(5)?.equals(bytesOf(9))).toBe(true);
      expect(t.settle(5, CS)).toBe(0);

      // put() of a chunk evicted while staged makes it resident again (same content, nothing to copy).
      load(t, 6);
      t.evict(6);
      t.put(6, bytesOf(7));
      expect(t.state(6)).toBe('resident');
      expect(t.settle(6, CS)).toBe(0);
      expect(t.state(6)).toBe('resident');
      expect(Buffer.from(t.slot(6)).equals(bytesOf(7))).toBe(true);
      expect(t.stats()).toMatchObject({ residentChunks: 2, stagedChunks: 0 });

      // Zeroed by the manifest while staged: zero, and its slot left empty.
      load(t, 7);
      t.setZero(7);
      expect(t.settle(7, CS)).toBe(0);
      expect(t.state(7)).toBe('zero');
      expect(t.stats()).toMatchObject({ residentChunks: 2, zeroChunks: 1, busyStages: 0 });
    });

    it('loads into the slot when every stage is taken, and a failed staged load frees its stage', () => {
      const t = new ChunkTable(64 * CS, CS);
      const { stages } = t.stats();
      expect(stages).toBeGreaterThanOrEqual(2);
      for (let i = 0; i < stages; i++) expect(inStage(t, load(t, i))).toBe(true);
      const full = load(t, stages);
      expect(full.byteOffset).toBe(stages * CS);
      expect(t.stats().stageMisses).toBe(1);
      expect(t.stats()).toMatchObject({ stagedChunks: stages, residentChunks: stages + 1 });
      for (let i = 0; i < stages; i++) while (t.settle(i, 16 * 1024) > 0);
      for (let i = 0; i <= stages; i++) expect(t.read(i)?.equals(bytesOf(i + 1)), `chunk ${i}`).toBe(true);

      const w = t.reserveStaged(40)!;
      expect(inStage(t, w)).toBe(true);
      expect(t.stats().busyStages).toBe(1);
      t.commit(40, false);
      expect(t.state(40)).toBe('absent');
      expect(t.stats()).toMatchObject({ busyStages: 0, stagedChunks: 0, residentChunks: stages + 1 });
    });

    it('settleAll() settles what a stopped loader left staged, and a settle of a chunk already settled does nothing', () => {
      const t = new ChunkTable(16 * CS, CS);
      load(t, 1);
      load(t, 2);
      expect(t.settle(2, 16 * 1024)).toBe(48 * 1024); // a loader stopped part way through this one
      t.evict(1);
      expect(t.settleAll()).toBe(2);
      expect(t.stats()).toMatchObject({ stagedChunks: 0, busyStages: 0, residentChunks: 1 });
      expect(t.state(1)).toBe('absent');
      expect(t.reserveStaged(1)).toBeDefined(); // loadable again, not stuck behind its old stage
      t.commit(1, false);
      expect(Buffer.from(t.slot(2)).equals(bytesOf(3))).toBe(true);
      expect(t.settle(2, CS)).toBe(0);
      expect(t.settleAll()).toBe(0);
    });

    it('promote(): a queued prefetch load a fault now waits for runs before the prefetches queued ahead of it', async () => {
      const n = 24;
      const t = new ChunkTable(n * CS, CS);
      const loader = await ChunkLoader.start({ table: t, workers: 1 });
      try {
        const done: number[] = [];
        const loads = Array.from({ length: n }, (_, i) =>
          loadBytes(loader, i, bytesOf(i + 1), 'prefetch').then(() => done.push(i)),
        );
        // The thread holds two jobs; the other 22 wait here, in order.
        expect(loader.queued()).toMatchObject({ demand: 0, prefetch: n - 2 });
        expect(loader.promote(loader.tableId, 20)).toBe(true);
        expect(loader.queued()).toMatchObject({ demand: 1, prefetch: n - 3 });
        expect(loader.promote(loader.tableId, 20)).toBe(false); // queued as a demand already
        expect(loader.promote(loader.tableId, 0)).toBe(false); // handed to the thread already
        expect(loader.promote(loader.tableId + 1000, 21)).toBe(false); // another table's chunk 21
        await Promise.all(loads);
        // Right after the two the thread held, not 21st.
        expect(done.slice(0, 3)).toEqual([0, 1, 20]);
      } finally {
        await loader.close();
      }
    });

    it('loader threads share the stages: a burst of loads never finds them all taken, and every chunk reaches its slot', async () => {
      const n = 32;
      const t = new ChunkTable(n * CS, CS);
      const loader = await ChunkLoader.start({ table: t, workers: 2 });
      try {
        const chunks = Array.from({ length: n }, (_, i) => {
          const b = Buffer.alloc(CS);
          for (let o = 0; o < CS; o += 4096) b.writeUInt32LE(i * CS + o, o);
          return b;
        });
        await Promise.all(chunks.map((b, i) => loadBytes(loader, i, b, i % 2 ? 'demand' : 'prefetch')));
        for (let i = 0; i < 500 && t.stats().busyStages > 0; i++) await sleep(2);
        expect(t.stats()).toMatchObject({
          stageMisses: 0,
          stagedChunks: 0,
          busyStages: 0,
          residentChunks: n,
        });
        for (let i = 0; i < n; i++)
          expect(Buffer.from(t.slot(i)).equals(chunks[i]!), `chunk ${i}`).toBe(true);
      } finally {
        await loader.close();
      }
    });

    it('refuses an unpin at an offset the chunk is not pinned at', () => {
      const t = new ChunkTable(16 * CS, CS);
      load(t, 1);
      const p = t.pin(1)!;
      expect(() => t.unpin(1, t.slot(1))).toThrow(/not pinned/);
      expect(() => t.unpin(2, p)).toThrow(/not pinned/);
      t.unpin(1, p);
      expect(() => t.unpin(1, p)).toThrow(/not pinned/);
    });
  });
});
