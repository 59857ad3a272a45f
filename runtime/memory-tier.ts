/**
 * The in-memory tier: the native ChunkTable's resident chunks (fetches make them resident in place,
 * runtime/fetcher.ts), kept under a byte budget by evicting the least recently admitted or used chunk. Resident chunks are what the fault thread serves without
 * JS, so a chunk one session fetched is installed by every other session of the snapshot for free.
 *
 * A chunk with an install queued is pinned until the fault thread has copied it: evicting it first
 * would make the install find nothing (a `missing` event), and with a budget smaller than the installs
 * in flight, installs would evict each other for ever. Pinned chunks may take the tier over its budget,
 * by at most the chunks being installed at once; it comes back under when they are unpinned. A budget
 * of 0 keeps nothing that is not being installed.
 */
import type { ChunkTable } from '../native/index.js';

const HUGE_PAGE = 2 * 2 ** 20;

/**
 * Whether the chunk table's arena should be on transparent huge pages. Copying a chunk into a peer from
 * 4 KiB source pages measured 2-5x slower than from huge pages on this kind of host (a nested VM: the
 * 512 KiB resident populate at 0.8-1.9 GB/s against 4.1-4.3 GB/s, bench/ANALYSIS.md "P2"). The risk of
 * huge pages is memory: with chunks smaller than 2 MiB, one resident chunk can make the kernel back the
 * whole 2 MiB around it, up to 2 MiB / chunk size times the budget. That cannot happen when a chunk is
 * whole huge pages, and cannot exceed the budget when the budget holds the whole snapshot (the arena is
 * the snapshot's size): so huge pages then, 4 KiB pages otherwise.
 *
 * The first chunk written into each 2 MiB range makes the kernel zero a whole huge page (and, under THP
 * defrag=madvise, perhaps compact memory). That once made cold restores erratic, when loads decoded
 * straight into their slots on the fault's path; loads now go through a stage and reach their slot
 * after the install (native/src/table.h), so that cost is off the path of the fault waiting.
 */
export function arenaHugePages(chunkSize: number, totalSize: number, budgetBytes: number): boolean {
  return chunkSize >= HUGE_PAGE || budgetBytes >= totalSize;
}

/** How long a chunk admitted over the budget is kept for installs that took no pin (admitted). */
const ADMITTED_GRACE_MS = 100;

export class MemoryTier {
  readonly #table: ChunkTable;
  readonly #budget: number;
  /** Insertion order = recency: a Map re-inserted on use is an O(1) LRU. */
  readonly #lru = new Map<number, number>();
  /** Chunk → installs in flight that will copy from it. */
  readonly #pins = new Map<number, number>();
  /**
   * Chunks loaded once from a cheap tier and not kept (keepLoaded), in shared memory: the loader threads'
   * direct loads apply the same rule to the same record (DirectPlan.loadedOnce).
   */
  readonly loadedOnce: Uint8Array;
  #bytes = 0;
  /** The eviction that follows an admission over the budget (admitted). */
  #later: NodeJS.Timeout | undefined;
  evictions = 0;

  constructor(table: ChunkTable, budgetBytes: number) {
    this.#table = table;
    this.#budget = budgetBytes;
    this.loadedOnce = new Uint8Array(new SharedArrayBuffer(table.chunks));
  }

  /**
   * Admission for a chunk about to be loaded from a tier that is cheap to read again (a local store's
   * file, a host cache file; FetcherOptions.keep): kept from its second load on, not at its first.
   * Keeping a chunk costs a copy into its own slot of the arena, fresh memory the kernel zeroes first
   * (on this kind of host ~5 ms per 2 MiB huge page, the largest share of a cold restore's CPU, measured
   * in bench/ANALYSIS.md); a chunk one restore read once is often never read again on this host, while
   * one read twice will likely be read again. So a snapshot's first restore pays only the load, its
   * second also fills the tier, and later ones are served from memory. What an origin sends over the
   * network is always kept: a second fetch costs a round trip.
   */
  keepLoaded(i: number): boolean {
    return Atomics.exchange(this.loadedOnce, i, 1) === 1;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Chunk i was made resident in the table (by a fetch, verified): it counts against the budget from
   * now on, and the least recently used chunks are evicted down to it (never a pinned chunk, never i).
   */
  admitted(i: number): void {
    this.touch(i, this.#table.chunkLength(i));
    this.#evict(i);
    // Kept over the budget for its installs: they pin it when the event loop queues them, and unpin()
    // evicts it after. A loader thread's installs (LoadJob.installTo) take no pin, so with nothing after
    // it, the last chunk a restore admitted would stay over the budget for good: evicted a moment later
    // instead, by when those installs have copied it (one that has not finds it gone and fetches again).
    if (this.#bytes > this.#budget && !this.#later) {
      this.#later = setTimeout(() => {
        this.#later = undefined;
        this.#evict();
      }, ADMITTED_GRACE_MS);
      this.#later.unref();
    }
  }

  /**
   * Chunk i, loaded without admission (keepLoaded), was kept after all: another reader used its stage, or
   * an install had yet to (the loader's notice). Unlike admitted(), i itself may be evicted at once when
   * over budget: its fetch has settled, installs the event loop queued are pinned, and one a loader
   * queued that has not copied yet finds it gone and reports `missing`, which fetches it again for a
   * fault still waiting.
   */
  admittedLate(i: number): void {
    this.touch(i, this.#table.chunkLength(i));
    this.#evict();
  }

  /** Marks chunk i as just used (it is resident). */
  touch(i: number, length = this.#lru.get(i) ?? 0): void {
    if (this.#lru.has(i)) this.#lru.delete(i);
    else this.#bytes += length;
    this.#lru.set(i, length);
  }

  /** Up to `max` resident chunks, the most recently used first (what a successor should warm first). */
  resident(max: number): number[] {
    const out: number[] = [];
    for (const i of [...this.#lru.keys()].reverse()) {
      if (out.length >= max) break;
      if (this.#table.state(i) === 'resident') out.push(i);
    }
    return out;
  }

  has(i: number): boolean {
    return this.#lru.has(i) && this.#table.state(i) === 'resident';
  }

  /** Keeps chunk i resident until unpin(): an install will copy from it. */
  pin(i: number): void {
    this.#pins.set(i, (this.#pins.get(i) ?? 0) + 1);
  }

  /** One install of chunk i is done (installed, found missing, or its session ended). */
  unpin(i: number): void {
    const n = this.#pins.get(i);
    if (n === undefined) return;
    if (n > 1) this.#pins.set(i, n - 1);
    else {
      this.#pins.delete(i);
      this.#evict();
    }
  }

  #evict(keep?: number): void {
    if (this.#bytes <= this.#budget) return;
    for (const [old, len] of this.#lru) {
      if (this.#bytes <= this.#budget) break;
      if (old === keep || this.#pins.has(old)) continue;
      this.#table.evict(old);
      this.#lru.delete(old);
      this.#bytes -= len;
      this.evictions++;
    }
  }
}
