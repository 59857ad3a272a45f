/**
 * When to start a worker again after one died. A crash is answered at once (every blocked fault waits
 * for it), up to `burst` restarts in a minute; past that the delay doubles from 100 ms to 5 s, so a
 * host whose worker dies in a loop does not spend itself restarting it. Workers that die before they
 * are ready (the snapshot cannot be opened: an origin outage, say) are retried with the same doubling
 * delay; when to give up is the supervisor's decision (it knows how long its sessions can wait).
 *
 * Crash looping on one chunk is handled elsewhere: that chunk is failed closed (CrashSuspects), which
 * ends the loop without this policy having to.
 */
export interface RestartPolicyOptions {
  /** Restarts within `windowMs` answered at once. @default 10 */
  burst?: number;
  /** @default 60000 */
  windowMs?: number;
  /** @default 5000 */
  maxDelayMs?: number;
}

export class RestartPolicy {
  readonly #burst: number;
  readonly #windowMs: number;
  readonly #maxDelayMs: number;
  readonly #deaths: number[] = [];
  #startFailures = 0;

  constructor(o: RestartPolicyOptions = {}) {
    this.#burst = o.burst ?? 10;
    this.#windowMs = o.windowMs ?? 60_000;
    this.#maxDelayMs = o.maxDelayMs ?? 5000;
  }

  /** A worker died at `now` (ms), having been ready or not: the delay before the next one starts. */
  next(now: number, wasReady: boolean): number {
    this.#startFailures = wasReady ? 0 : this.#startFailures + 1;
    this.#deaths.push(now);
    while (this.#deaths.length > 0 && this.#deaths[0]! <= now - this.#windowMs) this.#deaths.shift();
    const excess = Math.max(this.#deaths.length - this.#burst, this.#startFailures);
    return excess <= 0 ? 0 : Math.min(this.#maxDelayMs, 100 * 2 ** (excess - 1));
  }

  /** Consecutive deaths before ready so far. */
  get startFailures(): number {
    return this.#startFailures;
  }
}
