/**
 * The chunk table's arena and the native argument checks (issue 11): by default huge pages only where a
 * chunk is whole huge pages (khugepaged would otherwise back 2 MiB around one resident 64 KiB chunk, up
 * to 32x the memory budget), else as the caller (serve: arenaHugePages) says; and sizes that would
 * overflow the chunk count or an int32 refused.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { ChunkTable, addon, closeFd } from '../../native/index.js';
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
});
