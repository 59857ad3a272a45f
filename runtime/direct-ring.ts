/**
 * The outcomes of a loader thread's direct loads (runtime/chunk-loader-worker.ts, DirectPlan), passed to the
 * main thread through shared memory rather than a message: a message wakes the event loop (a system call
 * and a wake-up, tens of microseconds of CPU each on a virtualized host, for every chunk), while the main
 * thread reads these whenever it next runs. It does run soon: the loader writes an outcome before it queues
 * the chunk's install, and the install's own report (or the peer's exit after it) wakes the event loop,
 * which reads the ring before the report (ChunkLoader.takeDirect). So no session hears that a chunk was
 * installed, or that its peer is gone, before it hears how the chunk was loaded.
 *
 * One ring per loader thread: one writer (that thread), one reader (the main thread). A full ring makes
 * the writer fall back to a message.
 */

/** A successful direct load, as the ring carries it. */
export interface RingOutcome {
  session: number;
  chunk: number;
  /** The stored object's size. */
  stored: number;
  /** From the host cache rather than the store. */
  disk: boolean;
  kept: boolean;
  /** CLOCK_MONOTONIC ms (DirectOutcome). */
  startedAt: number;
  endedAt: number;
  readMs: number;
  decodeMs: number;
  verifyMs: number;
}

const FIELDS = 10;
/** Outcomes a ring holds before its writer falls back to messages. */
export const RING_CAPACITY = 1024;

export class DirectRing {
  /** [read index, write index]: each only grows, written by its one side. */
  readonly #ctl: Int32Array;
  readonly #slots: Float64Array;
  readonly buffer: SharedArrayBuffer;

  constructor(buffer = new SharedArrayBuffer(8 + RING_CAPACITY * FIELDS * 8)) {
    this.buffer = buffer;
    this.#ctl = new Int32Array(buffer, 0, 2);
    this.#slots = new Float64Array(buffer, 8, RING_CAPACITY * FIELDS);
  }

  /** Writer: false when the ring is full. */
  put(o: RingOutcome): boolean {
    const head = Atomics.load(this.#ctl, 0);
    const tail = Atomics.load(this.#ctl, 1);
    if (tail - head >= RING_CAPACITY) return false;
    const b = (tail % RING_CAPACITY) * FIELDS;
    const s = this.#slots;
    s[b] = o.session;
    s[b + 1] = o.chunk;
    s[b + 2] = o.stored;
    s[b + 3] = o.kept ? 1 : 0;
    s[b + 4] = o.disk ? 1 : 0;
    s[b + 5] = o.startedAt;
    s[b + 6] = o.endedAt;
    s[b + 7] = o.readMs;
    s[b + 8] = o.decodeMs;
    s[b + 9] = o.verifyMs;
    Atomics.store(this.#ctl, 1, tail + 1); // publishes the slot: the reader loads the index first
    return true;
  }

  /** Reader: every outcome written since the last call, oldest first. */
  take(): RingOutcome[] {
    const head = Atomics.load(this.#ctl, 0);
    const tail = Atomics.load(this.#ctl, 1);
    if (tail === head) return [];
    const out: RingOutcome[] = [];
    const s = this.#slots;
    for (let i = head; i < tail; i++) {
      const b = (i % RING_CAPACITY) * FIELDS;
      out.push({
        session: s[b]!,
        chunk: s[b + 1]!,
        stored: s[b + 2]!,
        kept: s[b + 3] === 1,
        disk: s[b + 4] === 1,
        startedAt: s[b + 5]!,
        endedAt: s[b + 6]!,
        readMs: s[b + 7]!,
        decodeMs: s[b + 8]!,
        verifyMs: s[b + 9]!,
      });
    }
    Atomics.store(this.#ctl, 0, tail); // the slots are the writer's again
    return out;
  }
}
