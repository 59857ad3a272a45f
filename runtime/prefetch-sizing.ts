/**
 * How many prefetches to keep in flight: the bytes an origin can deliver while a request is on its way
 * (bandwidth × latency, both measured on the fetches so far), twice over so the pipe never drains,
 * between 16 MiB and 256 MiB, divided by the average object size, at most `max` requests. An origin
 * whose throughput grows with connections (S3, an HTTP tier) drives it up to `max`; a saturated one
 * keeps it where more requests would only queue. Before any measurement: what fits the low end of the
 * budget at the chunk size (objects are at most that), up to `max`.
 */
export class PrefetchSizing {
  static readonly MIN_BYTES = 16 * 2 ** 20;
  static readonly MAX_BYTES = 256 * 2 ** 20;
  readonly #max: number;
  #latencyMs = 0;
  #objectBytes = 0;
  /** Completed fetches in the last second: when, and how many stored bytes. */
  readonly #recent: { at: number; bytes: number }[] = [];
  concurrency: number;

  constructor(max: number, chunkSize: number) {
    this.#max = Math.max(1, max);
    this.concurrency = Math.max(1, Math.min(this.#max, Math.ceil(PrefetchSizing.MIN_BYTES / chunkSize)));
  }

  observe(ms: number, storedBytes: number): void {
    const now = performance.now();
    // Exponentially weighted: recent fetches count most, one outlier does not swing it.
    this.#latencyMs = this.#latencyMs === 0 ? ms : 0.8 * this.#latencyMs + 0.2 * ms;
    this.#objectBytes = this.#objectBytes === 0 ? storedBytes : 0.8 * this.#objectBytes + 0.2 * storedBytes;
    this.#recent.push({ at: now, bytes: storedBytes });
    while (this.#recent.length > 0 && now - this.#recent[0]!.at > 1000) this.#recent.shift();
    const span = Math.max(this.#latencyMs, now - this.#recent[0]!.at);
    const bandwidth = this.#recent.reduce((n, r) => n + r.bytes, 0) / Math.max(1, span); // bytes per ms
    const budget = Math.min(
      PrefetchSizing.MAX_BYTES,
      Math.max(PrefetchSizing.MIN_BYTES, 2 * bandwidth * this.#latencyMs),
    );
    this.concurrency = Math.max(1, Math.min(this.#max, Math.ceil(budget / Math.max(1, this.#objectBytes))));
  }
}
