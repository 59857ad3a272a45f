/**
 * The in-memory tier: the native ChunkTable's resident chunks, kept under a byte budget by evicting
 * the least recently admitted or used chunk. Resident chunks are what the fault thread serves without
 * JS, so a chunk one session fetched is installed by every other session of the snapshot for free.
 * Eviction is safe while fault threads copy (the table defers the release); a chunk evicted between
 * put and install comes back as a `missing` event and is put again.
 */
import type { ChunkTable } from '../native/index.js';

export class MemoryTier {
  readonly #table: ChunkTable;
  readonly #budget: number;
  /** Insertion order = recency: a Map re-inserted on use is an O(1) LRU. */
  readonly #lru = new Map<number, number>();
  #bytes = 0;
  evictions = 0;

  constructor(table: ChunkTable, budgetBytes: number) {
    this.#table = table;
    this.#budget = budgetBytes;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Puts verified bytes for chunk i, then evicts down to the budget (never i itself). */
  admit(i: number, bytes: Buffer): void {
    this.#table.put(i, bytes);
    this.touch(i, bytes.length);
    for (const [old, len] of this.#lru) {
      if (this.#bytes <= this.#budget) break;
      if (old === i) continue;
      this.#table.evict(old);
      this.#lru.delete(old);
      this.#bytes -= len;
      this.evictions++;
    }
  }

  /** Marks chunk i as just used (it is resident). */
  touch(i: number, length = this.#lru.get(i) ?? 0): void {
    if (this.#lru.has(i)) this.#lru.delete(i);
    else this.#bytes += length;
    this.#lru.set(i, length);
  }

  has(i: number): boolean {
    return this.#lru.has(i) && this.#table.state(i) === 'resident';
  }
}
