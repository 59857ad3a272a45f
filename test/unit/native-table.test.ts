/**
 * The chunk table's arena and the native argument checks (issue 11): huge pages only where a chunk is
 * whole huge pages (khugepaged would otherwise back 2 MiB around one resident 64 KiB chunk, up to 32x
 * the memory budget), and sizes that would overflow the chunk count or an int32 refused.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { ChunkTable, addon, closeFd } from '../../native/index.js';

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
