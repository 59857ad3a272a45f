/**
 * The memory tier's admission (runtime/memory-tier.ts keepLoaded, LoadJob.admit): a chunk a demand
 * loads from a local store's file is served from its stage and let go of, not copied to its own slot
 * of the arena, at its first load; its second load keeps it; a chunk another reader took from its
 * stage meanwhile is kept after all; an idle loader lets go of the rest; a prefetch always keeps. Real loader threads, table and store.
 */
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { ChunkTable } from '../../native/index.js';
import { ChunkLoader } from '../../runtime/chunk-loader.js';
import { ChunkFetcher } from '../../runtime/fetcher.js';
import { MemoryTier } from '../../runtime/memory-tier.js';
import { encodeChunk, hashChunk } from '../../store/chunk.js';
import { FileStore } from '../../store/file-store.js';
import { chunkKey } from '../../store/keys.js';
import { tempDir } from '../helpers/images.js';

const CS = 64 * 1024;
const CHUNKS = 16;
/** A session id no FaultSession was shared under: the loader's install for it finds no session. */
const NO_SESSION = 2 ** 31 - 1;

describe('memory tier admission of chunks from a local store', () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: FileStore;
  const refs = Array.from({ length: CHUNKS }, (_, chunk) => {
    const bytes = Buffer.alloc(CS, chunk + 1);
    return { chunk, hash: hashChunk(bytes), codec: 'zstd' as const, length: CS, bytes };
  });
  let loader: ChunkLoader | undefined;

  beforeEach(async () => {
    tmp = tempDir();
    store = new FileStore(path.join(tmp.dir, 'store'));
    for (const r of refs) await store.put(chunkKey(r.hash, 'zstd'), encodeChunk('zstd', r.bytes));
  });
  afterEach(async () => {
    await loader?.close();
    loader = undefined;
    tmp.cleanup();
  });

  async function setUp() {
    const table = new ChunkTable(CHUNKS * CS, CS);
    // One loader thread: it holds every stage but one unsettled, so when it lets go of a chunk is known.
    loader = await ChunkLoader.start({ table, workers: 1 });
    const memory = new MemoryTier(table, CHUNKS * CS);
    const admittedLate: number[] = [];
    loader.onAdmitted = (c) => (admittedLate.push(c), memory.admittedLate(c));
    const installFailed: [number, number[]][] = [];
    loader.onInstallFailed = (c, ids) => installFailed.push([c, ids]);
    const fetcher = new ChunkFetcher({
      origins: [store],
      table,
      loader,
      onResident: (c) => memory.admitted(c),
      keep: (c) => memory.keepLoaded(c),
    });
    const demand = (c: number) =>
      fetcher.fetch(refs[c]!, 'demand', { installTo: NO_SESSION, patienceMs: 5000 });
    return { table, memory, fetcher, demand, admittedLate, installFailed, stages: table.stats().stages };
  }

  it('serves a first load from its stage and lets it go; keeps the second', async () => {
    const { table, memory, demand, stages } = await setUp();
    expect(stages).toBe(8);
    for (let c = 0; c < CHUNKS; c++) {
      const r = await demand(c);
      expect(r).toMatchObject({ tier: 'origin0', kept: false });
    }
    // The loader keeps at most stages - 1 chunks unsettled; the oldest were let go of as it loaded on.
    const absent = refs.filter((r) => table.state(r.chunk) === 'absent').map((r) => r.chunk);
    expect(absent.length).toBeGreaterThanOrEqual(CHUNKS - (stages - 1));
    expect(absent).toContain(0);
    expect(memory.bytes).toBe(0);
    expect(table.stats().residentBytes).toBeLessThanOrEqual((stages - 1) * CS); // only stages

    // Its second load keeps it: resident in its slot, counted by the tier, the right bytes.
    const again = await demand(0);
    expect(again.tier).toBe('origin0');
    expect(again.kept).toBeUndefined();
    expect(memory.has(0)).toBe(true);
    expect(memory.bytes).toBe(CS);
    // Loads that push it out of the stages settle it into its slot instead of letting it go.
    for (const c of absent.filter((c) => c !== 0).slice(0, stages)) await demand(c);
    expect(table.state(0)).toBe('resident');
    expect(table.read(0)!.equals(refs[0]!.bytes)).toBe(true);
  });

  it('keeps a chunk another reader took from its stage, and tells the memory tier', async () => {
    const { table, memory, demand, admittedLate, stages } = await setUp();
    await demand(0);
    // Another session's fault served from the stage (the fault thread acquires it as this pin does).
    expect(table.read(0)!.equals(refs[0]!.bytes)).toBe(true);
    for (let c = 1; c <= stages; c++) await demand(c);
    await expect.poll(() => admittedLate).toEqual([0]);
    expect(memory.has(0)).toBe(true);
    expect(table.state(0)).toBe('resident');
    expect(table.read(0)!.equals(refs[0]!.bytes)).toBe(true);
    expect(table.state(1)).toBe('absent'); // read by no one but its own install: let go of
  });

  it('lets go of what it did not keep once its loader is idle: nothing resident outside the tier', async () => {
    const { table, memory, demand } = await setUp();
    for (let c = 0; c < 3; c++) await demand(c);
    expect(table.stats().residentBytes).toBeGreaterThan(0); // in their stages, until the loader idles
    await expect.poll(() => table.stats().residentBytes, { timeout: 5000 }).toBe(0);
    expect([0, 1, 2].map((c) => table.state(c))).toEqual(['absent', 'absent', 'absent']);
    expect(memory.bytes).toBe(0);
    // and loaded again at once when asked (kept, this time)
    expect((await demand(1)).kept).toBeUndefined();
    expect(table.read(1)!.equals(refs[1]!.bytes)).toBe(true);
  });

  it('names the sessions the loader installs for, and says when it could not queue an install', async () => {
    const { demand, fetcher, installFailed } = await setUp();
    // The session asked the fetch to install for (installTo): the loader thread does it, so the result
    // names it and the session queues no second install (session-delivery.ts)...
    const r = await demand(5);
    expect([...(r.installing ?? [])]).toEqual([NO_SESSION]);
    // ...and here no session has that id, so the install could not be queued: said, so that a live
    // session installs it itself rather than leave its fault waiting.
    await expect.poll(() => installFailed).toEqual([[5, [NO_SESSION]]]);
    // A fetch without installTo names nobody.
    expect((await fetcher.fetch(refs[6]!, 'demand')).installing).toBeUndefined();
  });

  it('keeps what a prefetch loads, and what a demand with no install of its own loads', async () => {
    const { memory, fetcher } = await setUp();
    expect((await fetcher.fetch(refs[3]!, 'prefetch')).kept).toBeUndefined();
    expect((await fetcher.fetch(refs[4]!, 'demand')).kept).toBeUndefined();
    expect(memory.has(3) && memory.has(4)).toBe(true);
  });
});

describe('memory tier budget', () => {
  it('evicts a chunk admitted over the budget once its grace is over, though nothing pins or unpins it', async () => {
    // A loader thread's installs take no pin, so no unpin() follows the last admission of a restore: the
    // chunk must still leave a budget of zero (faults-native's budget-0 restore saw one stay, in CI).
    const table = new ChunkTable(4 * CS, CS);
    const memory = new MemoryTier(table, 0);
    table.put(2, Buffer.alloc(CS, 7));
    memory.admitted(2);
    expect(table.stats().residentBytes).toBe(CS); // kept for its installs first
    const deadline = performance.now() + 5_000;
    while (table.stats().residentBytes > 0 && performance.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    expect(table.stats().residentBytes).toBe(0);
    expect(memory.bytes).toBe(0);
    expect(memory.evictions).toBe(1);
  });
});
