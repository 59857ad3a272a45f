/**
 * One restore session: one connection, one userfaultfd, one restored VM or process. The native
 * FaultSession resolves zero, removed and resident chunks on its own; this class serves the rest
 * (`need`): fetch through the tiers, verify, put in the shared table, install. When no origin can
 * deliver a verified chunk within failTimeoutMs the session fails closed (PROTOCOL.md): it poisons
 * the chunk (the faulting thread gets SIGBUS) or, where the kernel cannot poison, SIGKILLs the peer
 * through the pidfd taken at handshake time, so a late kill can never hit a recycled PID. It never
 * leaves the peer hung and never installs a byte it has not verified.
 */
import {
  FaultSession,
  closeFd,
  pidfdSendSignal,
  type SessionEvent,
  type SessionStats,
} from '../native/index.js';
import { FetchError, SessionClosedError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { chunkCodec, chunkHash } from '../store/manifest.js';
import { chunkLength } from '../store/reader.js';
import type { Tier } from './fetcher.js';
import type { Handshake } from './handshake.js';
import { Prefetcher } from './prefetch.js';
import { Recorder } from './profile.js';
import type { LiveSessionStats, SessionContext, SessionSummary } from './session-types.js';

export type { LiveSessionStats, PrefetchContext, SessionContext, SessionSummary } from './session-types.js';

/** How long after the fail timeout a fault fails closed even if its fetch has not given up. */
const FAIL_BACKSTOP_MS = 500;

export class RestoreSession {
  readonly restoreId: string;
  readonly pid: number;
  readonly #ctx: SessionContext;
  readonly #fault: FaultSession;
  readonly #pidfd: number;
  readonly #log: Logger;
  readonly #t0 = performance.now();
  readonly #needAt = new Map<number, number>();
  /** Chunks a fault of the peer waits for whose demand fetch has not settled: a peer can only exit with some if it died midway. */
  readonly #waiting = new Set<number>();
  readonly #hits: Record<string, number> = {};
  readonly #failed: number[] = [];
  #bytesFetched = 0;
  #fetched = 0;
  #ended: SessionSummary | undefined;
  #killed = false;
  readonly #installed = new Set<number>();
  readonly #tried = new Set<number>();
  readonly #counted = new Set<number>();
  #prefetched = 0;
  readonly #recorder: Recorder | undefined;
  readonly #prefetcher: Prefetcher | undefined;
  readonly #onEnd: (s: RestoreSession, summary: SessionSummary) => void;
  /** populate() calls, re-checked on every install, failure and end. */
  readonly #waiters = new Set<() => void>();

  constructor(opts: {
    ctx: SessionContext;
    handshake: Handshake;
    uffd: number;
    pidfd: number;
    pid: number;
    restoreId: string;
    onEnd: (s: RestoreSession, summary: SessionSummary) => void;
  }) {
    this.#ctx = opts.ctx;
    this.#pidfd = opts.pidfd;
    this.pid = opts.pid;
    this.restoreId = opts.restoreId;
    this.#onEnd = opts.onEnd;
    this.#log = opts.ctx.log.child({ restoreId: opts.restoreId, pid: opts.pid });
    const pf = opts.ctx.prefetch;
    if (pf.mode === 'record') this.#recorder = new Recorder(this.#t0, pf.recordIdleMs, pf.saveRecording);
    const reportTouches = pf.mode === 'record' || pf.fill;
    this.#fault = new FaultSession(
      opts.uffd,
      {
        table: opts.ctx.table,
        pageSize: opts.handshake.pageSize,
        regions: opts.handshake.regions,
        reportTouches,
      },
      (e) => this.#onEvent(e),
    );
    this.#ctx.metrics.sessions.inc();
    this.#log.info(
      {
        regions: opts.handshake.regions.length,
        shape: opts.handshake.shape,
        pageSize: opts.handshake.pageSize,
        prefetch: pf.mode,
        fill: pf.fill,
      },
      'restore session started',
    );
    const replay = pf.mode === 'replay' && pf.profile ? pf.profile.chunks.map((e) => e.chunk) : [];
    if (replay.length > 0 || pf.fill) {
      const ended = () => this.#ended !== undefined;
      this.#prefetcher = new Prefetcher(
        {
          skip: (c) => this.#installed.has(c) || this.#tried.has(c) || chunkHash(this.#ctx.index, c) === null,
          prefetch: (c) => this.#fetchAhead(c),
          get ended() {
            return ended();
          },
        },
        opts.ctx.index.count,
        pf.window,
      );
      void this.#prefetcher.run(replay, pf.fill);
    }
  }

  /**
   * Fetches a chunk ahead of any fault (replay, fill, populate). A prefetch that fails is dropped (a
   * fault retries it); one that must arrive (populate) waits like a fault and fails closed.
   */
  #fetchAhead(c: number, mustArrive = false): Promise<void> {
    this.#tried.add(c);
    const { index, memory, fetcher } = this.#ctx;
    if (memory.has(c)) {
      memory.touch(c);
      this.#fault.install(c);
      this.#prefetched++;
      return Promise.resolve();
    }
    const ref = { hash: chunkHash(index, c)!, codec: chunkCodec(index, c)!, length: chunkLength(index, c) };
    // Its patience starts when its fetch starts, not while it waits in a long populate queue.
    return fetcher.fetch(ref, 'prefetch', mustArrive ? this.#patience() : {}).then(
      ({ bytes, tier }) => {
        // A demand fault joined this fetch (or got the chunk first): its own callback installs it.
        if (this.#installed.has(c) || this.#needAt.has(c)) return;
        this.#prefetched++;
        this.#install(c, bytes, tier);
      },
      (err: unknown) => {
        if (mustArrive) this.#failClosed(c, err);
        else if (this.#log.isLevelEnabled('debug'))
          this.#log.debug(
            { chunk: c, err: (err as Error).message },
            'prefetch failed; the demand path will retry if needed',
          );
      },
    );
  }

  stats(): SessionStats {
    return this.#fault.stats();
  }

  /** This session so far: the fault thread's counters and what it fetched. */
  liveStats(): LiveSessionStats {
    return {
      restoreId: this.restoreId,
      pid: this.pid,
      ...this.#fault.stats(),
      fetchedChunks: this.#fetched,
      bytesFetched: this.#bytesFetched,
      prefetchedChunks: this.#prefetched,
    };
  }

  get ended(): boolean {
    return this.#ended !== undefined;
  }

  /**
   * Fetches and installs every data chunk not yet installed (an eager restore, or the last step
   * before the peer stops being served: once the uffd is gone a missing page would read as zeros).
   * Resolves when all are in; rejects if a chunk failed closed or the session ended first.
   */
  populate(signal?: AbortSignal): Promise<void> {
    const { index } = this.#ctx;
    const want = new Set<number>();
    for (let c = 0; c < index.count; c++)
      if (chunkHash(index, c) !== null && !this.#installed.has(c)) want.add(c);
    if (want.size === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        for (const c of want) if (this.#installed.has(c)) want.delete(c);
        if (want.size === 0) return done();
        if (this.#failed.length > 0)
          return done(new FetchError(`chunk ${this.#failed[0]}`, ['failed closed while populating']));
        if (this.#ended) return done(new SessionClosedError());
        if (signal?.aborted) return done(signal.reason as Error);
      };
      const done = (err?: Error): void => {
        this.#waiters.delete(check);
        signal?.removeEventListener('abort', check);
        if (err) reject(err);
        else resolve();
      };
      this.#waiters.add(check);
      signal?.addEventListener('abort', check, { once: true });
      // Windowed at prefetch priority, like fill: the peer's own faults go first.
      const ended = () => this.#ended !== undefined || this.#failed.length > 0 || signal?.aborted === true;
      const driver = new Prefetcher(
        {
          skip: (c) => this.#installed.has(c),
          prefetch: (c) => this.#fetchAhead(c, true),
          get ended() {
            return ended();
          },
        },
        index.count,
        this.#ctx.prefetch.window,
      );
      void driver.run([...want], false);
      check();
    });
  }

  /** Chunks installed ahead of any fault so far (replay and fill). */
  get prefetched(): number {
    return this.#prefetched;
  }

  #onEvent(e: SessionEvent): void {
    for (const c of e.touched) this.#recorder?.touch(c);
    for (const c of e.need) {
      this.#recorder?.touch(c);
      this.#prefetcher?.demand(c);
      this.#serve(c);
    }
    for (const c of e.missing) this.#serve(c); // evicted between put and install: put it again
    for (const c of e.installed) {
      this.#installed.add(c);
      const t = this.#needAt.get(c);
      if (t !== undefined) {
        this.#ctx.metrics.faultSeconds.observe((performance.now() - t) / 1000);
        this.#needAt.delete(c);
      }
    }
    for (const err of e.errors) {
      if (err.syscall === 'ioctl(UFFDIO_POISON)')
        this.#kill(`poisoning chunk ${err.chunk} failed (${err.code})`);
      else if (err.syscall === 'fault outside the declared regions')
        this.#kill('the peer faulted on memory it did not declare in the handshake');
      else
        this.#log.warn(
          { err: { code: err.code, syscall: err.syscall, chunk: err.chunk } },
          'uffd operation failed',
        );
    }
    if (e.exited) this.end('ended');
    if (this.#waiters.size > 0 && (e.installed.length > 0 || e.poisoned.length > 0))
      for (const w of [...this.#waiters]) w();
  }

  #serve(c: number): void {
    if (this.#ended) return;
    if (!this.#needAt.has(c)) this.#needAt.set(c, performance.now());
    const { index, memory, fetcher } = this.#ctx;
    if (memory.has(c)) {
      memory.touch(c);
      this.#fault.install(c);
      return;
    }
    const hash = chunkHash(index, c);
    if (hash === null) {
      // The table marks every zero chunk; a need for one means the table was reset. Install zeros.
      this.#ctx.table.setZero(c);
      this.#fault.install(c);
      return;
    }
    this.#waiting.add(c);
    fetcher
      .fetch(
        { hash, codec: chunkCodec(index, c)!, length: chunkLength(index, c) },
        'demand',
        this.#patience(),
      )
      .then(
        ({ bytes, tier }) => (this.#waiting.delete(c), this.#install(c, bytes, tier)),
        (err: unknown) => this.#failClosed(c, err),
      );
  }

  /**
   * How a fetch that must arrive waits: transient origin failures are retried until failTimeoutMs
   * (an origin back within it costs the guest latency, not its life), the fetch then ends with its
   * account of every attempt; the signal, a little later, fails closed whatever the fetch is doing.
   */
  #patience(): { signal: AbortSignal; retryUntil: number } {
    return {
      signal: AbortSignal.timeout(this.#ctx.failTimeoutMs + FAIL_BACKSTOP_MS),
      retryUntil: performance.now() + this.#ctx.failTimeoutMs,
    };
  }

  #install(c: number, bytes: Buffer, tier: Tier): void {
    // Counted once per chunk: a chunk evicted before its install comes back as `missing` and is
    // put again, which is not another fetch for this session.
    if (!this.#counted.has(c)) {
      this.#counted.add(c);
      this.#hits[tier] = (this.#hits[tier] ?? 0) + 1;
      if (tier !== 'disk') this.#bytesFetched += bytes.length;
      this.#fetched++;
    }
    if (this.#ended) return;
    this.#ctx.memory.admit(c, bytes);
    this.#fault.install(c);
  }

  #failClosed(c: number, err: unknown): void {
    if (this.#ended) return;
    this.#failed.push(c);
    this.#waiting.delete(c);
    const errors = (err as { errors?: string[] }).errors ?? [
      (err as Error).name === 'TimeoutError'
        ? `no verified chunk within ${this.#ctx.failTimeoutMs} ms`
        : String((err as Error).message ?? err),
    ];
    const action = this.#ctx.canPoison ? 'poison' : 'kill';
    this.#ctx.metrics.failClosed.inc({ action });
    // One line says it all (chunk, every failed attempt, the action): the kill below adds none.
    this.#log.error(
      { chunk: c, hash: chunkHash(this.#ctx.index, c), errors, action },
      `chunk ${c} could not be served: failing closed (${action})`,
    );
    if (this.#ctx.canPoison) this.#fault.poison(c);
    else this.#kill(`chunk ${c} could not be served`, false);
    for (const w of [...this.#waiters]) w();
  }

  /** Server stopping, grace over: once the uffd closes nobody answers the peer's next fault on a missing page, so fail closed. */
  abandon(graceMs: number): SessionSummary {
    if (!this.#ended)
      this.#kill(`the server is shutting down and the session outlived the ${graceMs} ms grace period`);
    return this.end('shutdown');
  }

  #kill(reason: string, log = true): void {
    if (this.#killed) return;
    this.#killed = true;
    if (log)
      this.#log.error({ reason }, 'killing the peer (SIGKILL through its pidfd) rather than leave it hung');
    try {
      pidfdSendSignal(this.#pidfd, 'SIGKILL');
    } catch (e) {
      this.#log.warn(
        { err: (e as Error).message },
        'SIGKILL through the pidfd failed (the peer is already gone?)',
      );
    }
  }

  /**
   * Ends the session: stops the fault thread, closes the uffd and the pidfd. The connection belongs
   * to the server, which stops watching it before closing it (onEnd).
   */
  end(outcome: SessionSummary['outcome']): SessionSummary {
    if (this.#ended) return this.#ended;
    this.#recorder?.finish();
    const st = this.#fault.stats();
    this.#fault.close();
    closeFd(this.#pidfd);
    const m = this.#ctx.metrics;
    m.sessions.dec();
    m.sessionsTotal.inc({ outcome: this.#killed ? 'killed' : outcome });
    m.faults.inc(st.faults);
    m.zeroFaults.inc(st.zeroFaults);
    m.jsFaults.inc(st.forwardedFaults);
    const summary: SessionSummary = {
      restoreId: this.restoreId,
      pid: this.pid,
      durationMs: Math.round(performance.now() - this.#t0),
      timeToFirstFaultServedMs: st.firstServedNs ? st.firstServedNs / 1e6 : null,
      faults: st.faults,
      zeroFaults: st.zeroFaults,
      fetchedChunks: this.#fetched,
      bytesFetched: this.#bytesFetched,
      hitsByTier: { ...this.#hits, memory: st.residentFaults },
      failedChunks: this.#failed,
      prefetchedChunks: this.#prefetched,
      recordedChunks: this.#recorder?.size ?? 0,
      outcome: this.#killed ? 'killed' : outcome,
    };
    this.#ended = summary;
    // The peer hung up mid-restore (crashed, killed): its fetches finish for the cache, nothing is installed any more.
    const waiting = [...this.#waiting];
    if (outcome === 'ended' && !this.#killed && waiting.length > 0)
      this.#log.warn(
        { waiting },
        `the peer went away with faults on ${waiting.length} chunk(s) still waiting for a fetch; session ended`,
      );
    for (const w of [...this.#waiters]) w();
    this.#log.info(summary, 'restore session summary');
    this.#onEnd(this, summary);
    return summary;
  }
}
