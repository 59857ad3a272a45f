/**
 * Failing a session closed (docs/PROTOCOL.md, "Handler side"): a chunk that cannot be served is
 * poisoned (the thread touching it gets SIGBUS; KVM reports a memory error to the VMM), or, where the
 * kernel cannot poison, the peer is SIGKILLed through the pidfd taken at handshake time, so a late
 * kill can never hit a recycled PID. SIGKILL, not a softer signal: a vCPU blocked in a fault inside a
 * KVM ioctl cannot be interrupted. Never a hung peer, never a byte that was not verified.
 */
import { pidfdSendSignal, type FaultSession } from '../native/index.js';
import type { Logger } from '../core/logger.js';
import type { RuntimeMetrics } from './metrics.js';
import type { FailureAction } from './native-failure.js';

export interface FailClosedOptions {
  fault: FaultSession;
  pidfd: number;
  /** Whether UFFDIO_POISON works here; otherwise failing a chunk kills the peer. */
  canPoison: boolean;
  failTimeoutMs: number;
  log: Logger;
  metrics: RuntimeMetrics;
  /** The chunk's content id, for the log line. */
  hashOf: (chunk: number) => string | null;
}

export class FailClosed {
  readonly #o: FailClosedOptions;
  /** Chunks failed closed, in order. */
  readonly failed: number[] = [];
  #killed = false;

  constructor(options: FailClosedOptions) {
    this.#o = options;
  }

  get killed(): boolean {
    return this.#killed;
  }

  /** No verified bytes for chunk c could be had (every origin failed, or the patience ran out). */
  chunk(c: number, err: unknown): void {
    const errors = (err as { errors?: string[] }).errors ?? [
      (err as Error).name === 'TimeoutError'
        ? `no verified chunk within ${this.#o.failTimeoutMs} ms`
        : String((err as Error).message ?? err),
    ];
    this.#failChunk(c, errors, `chunk ${c} could not be served`);
  }

  /** Carries out what runtime/native-failure.ts decided for a native failure. */
  apply(d: FailureAction): void {
    if (d.action === 'wake') this.#o.fault.wake(d.chunk);
    else if (d.action === 'fail-chunk')
      this.#failChunk(d.chunk, [d.reason], `chunk ${d.chunk} was refused again`);
    else this.kill(d.reason);
  }

  #failChunk(c: number, errors: string[], what: string): void {
    this.failed.push(c);
    const action = this.#o.canPoison ? 'poison' : 'kill';
    this.#o.metrics.failClosed.inc({ action });
    // One line says it all (chunk, every failed attempt, the action): the kill below adds none.
    this.#o.log.error(
      { chunk: c, hash: this.#o.hashOf(c), errors, action },
      `${what}: failing closed (${action})`,
    );
    if (this.#o.canPoison) {
      try {
        this.#o.fault.poison(c);
        return;
      } catch (e) {
        // The command could not even be queued (out of memory): nothing will answer the fault.
        this.kill(`poisoning chunk ${c} could not be queued (${(e as Error).message})`);
        return;
      }
    }
    this.kill(`${what}`, false);
  }

  /** SIGKILLs the peer once. */
  kill(reason: string, log = true): void {
    if (this.#killed) return;
    this.#killed = true;
    if (log)
      this.#o.log.error({ reason }, 'killing the peer (SIGKILL through its pidfd) rather than leave it hung');
    try {
      pidfdSendSignal(this.#o.pidfd, 'SIGKILL');
    } catch (e) {
      this.#o.log.warn(
        { err: (e as Error).message },
        'SIGKILL through the pidfd failed (the peer is already gone?)',
      );
    }
  }
}
