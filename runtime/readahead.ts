/**
 * Sequential read-ahead for one session, the way the kernel reads ahead in files: while the peer's first
 * touches move forward through the chunks, fetch the chunks just ahead of them, in a window that doubles
 * with every window the reader gets through (up to a cap); a touch that jumps elsewhere closes the
 * window, so a random reader costs nothing. Read-ahead only makes chunks resident in the shared table, it
 * does not install them: the reader's first touch of such a chunk is still served by the fault thread
 * alone (a copy, no JS), and reported back as a touch, which is how this sees the reader move on.
 */
export interface ReadaheadOptions {
  /** Chunks in the snapshot. */
  chunks: number;
  /** Window after the first sequential step, in chunks. @default 2 */
  initial?: number;
  /** Largest window, in chunks. */
  max: number;
}

export class Readahead {
  readonly #chunks: number;
  readonly #initial: number;
  readonly #max: number;
  /** The last chunk the reader touched first, -1 before any. */
  #last = -1;
  #window = 0;
  /** Every chunk below this was already asked for by read-ahead (in the current streak). */
  #ahead = 0;
  /** Where the reader was when the window last grew. */
  #grownAt = 0;

  constructor(o: ReadaheadOptions) {
    this.#chunks = o.chunks;
    this.#initial = Math.max(1, Math.min(o.initial ?? 2, o.max));
    this.#max = Math.max(1, o.max);
  }

  /** Current window in chunks (0: not reading sequentially). */
  get window(): number {
    return this.#window;
  }

  /**
   * The reader touched chunk c for the first time (a fault JS saw, or one the fault thread served from
   * memory). Returns the chunks to read ahead now, in order (possibly none).
   */
  touch(c: number): number[] {
    const last = this.#last;
    this.#last = c;
    // Forward within reach of the window (zero and already-present chunks in between are skipped by the
    // reader without a fault, so a step of more than one chunk still counts as sequential).
    const reach = Math.max(this.#window, this.#initial) + 1;
    if (last < 0 || c <= last || c - last > reach) {
      this.#window = 0;
      this.#ahead = 0;
      return [];
    }
    if (this.#window === 0) {
      this.#window = this.#initial;
      this.#ahead = c + 1;
      this.#grownAt = c;
    } else if (c - this.#grownAt >= this.#window) {
      // A whole window consumed since it last grew: keep twice as much ahead from now on.
      this.#window = Math.min(this.#max, this.#window * 2);
      this.#grownAt = c;
    }
    const from = Math.max(this.#ahead, c + 1);
    const to = Math.min(this.#chunks, c + 1 + this.#window);
    if (from >= to) return [];
    this.#ahead = to;
    return Array.from({ length: to - from }, (_, i) => from + i);
  }
}
