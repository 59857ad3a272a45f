/**
 * Prefetch for one session: replay a profile's chunks in order, then (with fill) every other
 * missing chunk, like QEMU's postcopy background transfer: a cursor over the chunks that jumps to
 * just after the latest demand fault, where the guest is likely to go next. At most `window`
 * prefetch fetches are in flight per session, so the fetcher always has room for demand faults,
 * which also outrank prefetches in its queue. A prefetch that fails is dropped: if the guest needs
 * that chunk, the demand path fetches it again and fails closed if it must.
 */
export interface PrefetchTarget {
  /** True when the chunk needs no prefetch (zero, already installed, already tried). */
  skip(chunk: number): boolean;
  /** Fetches and installs; resolves when done (or failed). */
  prefetch(chunk: number): Promise<void>;
  readonly ended: boolean;
}

export class Prefetcher {
  readonly #t: PrefetchTarget;
  readonly #window: number;
  readonly #chunks: number;
  #cursor = 0;
  #scanned = 0;
  #active = 0;
  #wake: (() => void) | undefined;

  constructor(target: PrefetchTarget, chunks: number, window: number) {
    this.#t = target;
    this.#chunks = chunks;
    this.#window = window;
  }

  /** A demand fault on chunk c: the background fill continues right after it. */
  demand(c: number): void {
    this.#cursor = (c + 1) % this.#chunks;
    this.#scanned = 0;
  }

  /**
   * Replays `order`, then fills the rest when asked. Resolves when done or the session ended;
   * `onOrderDone` runs once every chunk of `order` has settled (before the fill).
   */
  async run(order: readonly number[], fill: boolean, onOrderDone?: () => void): Promise<void> {
    let i = 0;
    await this.#drive(() => {
      while (i < order.length) {
        const c = order[i++]!;
        if (!this.#t.skip(c)) return c;
      }
      return undefined;
    });
    onOrderDone?.();
    if (fill) await this.#drive(() => this.#nextMissing());
  }

  #nextMissing(): number | undefined {
    while (this.#scanned < this.#chunks) {
      const c = this.#cursor;
      this.#cursor = (c + 1) % this.#chunks;
      this.#scanned++;
      if (!this.#t.skip(c)) return c;
    }
    return undefined;
  }

  async #drive(next: () => number | undefined): Promise<void> {
    for (;;) {
      if (this.#t.ended) return;
      if (this.#active >= this.#window) {
        await new Promise<void>((r) => (this.#wake = r));
        continue;
      }
      const c = next();
      if (c === undefined) break;
      this.#active++;
      void this.#t.prefetch(c).finally(() => {
        this.#active--;
        const w = this.#wake;
        this.#wake = undefined;
        w?.();
      });
    }
    while (this.#active > 0 && !this.#t.ended) await new Promise<void>((r) => (this.#wake = r));
  }
}
