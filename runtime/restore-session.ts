/**
 * One restore session: one connection, one userfaultfd, one restored VM or process. The native
 * FaultSession resolves zero, removed and resident chunks on its own; this class routes what it reports:
 * chunks a fault needs go to ChunkDelivery (fetch, verify, admit, install), native failures to
 * runtime/native-failure.ts (which decides) and FailClosed (which acts), first touches to the working-set
 * Recorder. It never leaves the peer hung and never installs a byte it has not verified.
 */
import { FetchError, SessionClosedError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { FaultSession, closeFd, type SessionEvent, type SessionStats } from '../native/index.js';
import { chunkHash } from '../store/manifest.js';
import type { Handshake } from './handshake.js';
import { decideFailure } from './native-failure.js';
import { Prefetcher } from './prefetch.js';
import { Recorder } from './profile.js';
import { Readahead } from './readahead.js';
import { metaOf, writeSessionMeta } from './session-state.js';
import { ChunkDelivery } from './session-delivery.js';
import { FailClosed } from './session-fail-closed.js';
import { SessionTrace } from './session-trace.js';
import { fromMonotonic } from './stall.js';
import { EVENT } from './tracing.js';
import type { LiveSessionStats, SessionContext, SessionSummary } from './session-types.js';

export type { LiveSessionStats, PrefetchContext, SessionContext, SessionSummary } from './session-types.js';

export interface RestoreSessionOptions {
  ctx: SessionContext;
  handshake: Handshake;
  uffd: number;
  pidfd: number;
  pid: number;
  restoreId: string;
  /**
   * The session's state memfd (runtime/session-state.ts) when someone else holds it too (a supervisor):
   * empty for a new session (its metadata is recorded there), or a predecessor's to adopt, with the
   * chunks it had installed. Not given: the native side makes a private one.
   */
  state?: { fd: number; adopted?: { installed: Uint8Array } };
  onEnd: (s: RestoreSession, summary: SessionSummary) => void;
}

export class RestoreSession {
  readonly restoreId: string;
  readonly pid: number;
  readonly #ctx: SessionContext;
  readonly #fault: FaultSession;
  readonly #pidfd: number;
  readonly #log: Logger;
  readonly #t0 = performance.now();
  readonly #delivery: ChunkDelivery;
  readonly #fail: FailClosed;
  /** Chunks a page of which the kernel refused (native-failure.ts retries a chunk once). */
  readonly #refused = new Set<number>();
  #ended: SessionSummary | undefined;
  /** Handed to a successor (release()): not served here any more, not ended for the peer. */
  #released = false;
  readonly #recorder: Recorder | undefined;
  readonly #onEnd: (s: RestoreSession, summary: SessionSummary) => void;
  readonly #prefetcher: Prefetcher | undefined;
  readonly #readahead: Readahead | undefined;
  /** populate() calls, re-checked on every install, failure and end. */
  readonly #waiters = new Set<() => void>();
  readonly #trace: SessionTrace;
  /** end() has begun delivering the fault thread's last reports (FaultSession.drain): done once. */
  #draining = false;
  /** First touches the fault thread served from memory (kept only for a detailed trace's chunk map). */
  readonly #touched: Set<number> | undefined;

  constructor(opts: RestoreSessionOptions) {
    const { ctx, handshake } = opts;
    this.#ctx = ctx;
    this.#pidfd = opts.pidfd;
    this.pid = opts.pid;
    this.restoreId = opts.restoreId;
    this.#onEnd = opts.onEnd;
    // `pid` is the root logger's (this serve process): the peer's is bound as peerPid, so that no line
    // of the session carries two `pid` keys (JSON readers keep only the last).
    this.#log = ctx.log.child({ restoreId: opts.restoreId, peerPid: opts.pid });
    const pf = ctx.prefetch;
    if (pf.mode === 'record') this.#recorder = new Recorder(this.#t0, pf.recordIdleMs, pf.saveRecording);
    this.#trace = new SessionTrace({
      trace: ctx.trace,
      restoreId: opts.restoreId,
      peerPid: opts.pid,
      handshake,
      chunkSize: ctx.index.manifest.chunkSize,
      chunkCount: ctx.index.count,
      metrics: ctx.metrics,
      log: this.#log,
      t0: this.#t0,
    });
    if (this.#trace.detailed) this.#touched = new Set();
    const direct = ctx.direct === true && ctx.fetcher.directAllowed();
    this.#fault = new FaultSession(
      opts.uffd,
      {
        table: ctx.table,
        pageSize: handshake.pageSize,
        regions: handshake.regions,
        // First touches served from memory are reported when something uses them: the recording, the
        // fill's cursor, and read-ahead, which follows the reader through the chunks it made resident.
        // The trace's chunk map also wants them (which chunks were served from memory).
        reportTouches: pf.mode === 'record' || pf.fill || pf.readaheadChunks > 0 || this.#trace.detailed,
        // From the first fault: the peer may fault before this constructor returns.
        direct,
        ...(opts.state ? { stateFd: opts.state.fd } : {}),
      },
      (e) => this.#onEvent(e),
    );
    this.#fail = new FailClosed({
      fault: this.#fault,
      pidfd: opts.pidfd,
      canPoison: ctx.canPoison,
      failTimeoutMs: ctx.failTimeoutMs,
      log: this.#log,
      metrics: ctx.metrics,
      hashOf: (c) => chunkHash(ctx.index, c),
    });
    const replay = pf.mode === 'replay' && pf.profile ? pf.profile.chunks.map((e) => e.chunk) : [];
    this.#delivery = new ChunkDelivery(
      ctx,
      this.#fault,
      this.#fail,
      this.#log,
      this.#trace,
      replay.length > 0 ? replay : undefined,
    );
    if (direct) this.#delivery.direct();
    if (opts.state?.adopted) this.#delivery.adoptInstalled(opts.state.adopted.installed);
    else if (opts.state)
      writeSessionMeta(opts.state.fd, metaOf(ctx.index.manifest.id, opts.restoreId, opts.pid, handshake));
    ctx.metrics.sessions.inc();
    this.#log.info(
      {
        regions: handshake.regions.length,
        shape: handshake.shape,
        pageSize: handshake.pageSize,
        prefetch: pf.mode,
        fill: pf.fill,
        adopted: opts.state?.adopted !== undefined,
      },
      opts.state?.adopted ? 'restore session adopted' : 'restore session started',
    );
    if (pf.readaheadChunks > 0)
      this.#readahead = new Readahead({ chunks: ctx.index.count, max: pf.readaheadChunks });
    if (replay.length > 0 || pf.fill) {
      this.#prefetcher = this.#prefetchDriver(
        (c) => this.#delivery.prefetch(c),
        () => false,
      );
      const start = performance.now();
      const before = this.#delivery.prefetched;
      void this.#prefetcher.run(replay, pf.fill, () => {
        if (replay.length === 0 || this.#stopped) return;
        this.#trace.milestone(EVENT.profileInstalled);
        this.#trace.prefetchBatch('replay', replay.length, this.#delivery.prefetched - before, start);
      });
    }
  }

  /** A Prefetcher over this session's chunks, stopping when the session ends or `stop()` says so. */
  #prefetchDriver(prefetch: (c: number) => Promise<void>, stop: () => boolean): Prefetcher {
    const ended = () => this.#stopped || stop();
    return new Prefetcher(
      {
        skip: (c) => this.#delivery.skipPrefetch(c),
        prefetch,
        get ended() {
          return ended();
        },
      },
      this.#ctx.index.count,
      this.#ctx.prefetch.window,
    );
  }

  stats(): SessionStats {
    return this.#fault.stats();
  }

  /** This session so far: the fault thread's counters and what it fetched. */
  liveStats(): LiveSessionStats {
    // Loads the loader threads did straight from a fault, and not yet read, count now.
    this.#ctx.takeDirect?.();
    return {
      restoreId: this.restoreId,
      pid: this.pid,
      ...this.#fault.stats(),
      fetchedChunks: this.#delivery.fetched,
      bytesFetched: this.#delivery.bytesFetched,
      prefetchedChunks: this.#delivery.prefetched,
    };
  }

  get ended(): boolean {
    return this.#stopped;
  }

  get #stopped(): boolean {
    return this.#ended !== undefined || this.#released;
  }

  /** Chunks installed ahead of any fault so far (replay, fill and populate). */
  get prefetched(): number {
    return this.#delivery.prefetched;
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
      if (chunkHash(index, c) !== null && !this.#delivery.isInstalled(c)) want.add(c);
    if (want.size === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        for (const c of want) if (this.#delivery.isInstalled(c)) want.delete(c);
        if (want.size === 0) return done();
        const failed = this.#fail.failed;
        if (failed.length > 0)
          return done(new FetchError(`chunk ${failed[0]}`, ['failed closed while populating']));
        if (this.#stopped) return done(new SessionClosedError());
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
      const driver = this.#prefetchDriver(
        (c) => this.#delivery.prefetch(c, true),
        () => this.#fail.failed.length > 0 || signal?.aborted === true,
      );
      void driver.run([...want], false);
      check();
    });
  }

  #onEvent(e: SessionEvent): void {
    this.#ctx.takeDirect?.();
    for (const c of e.touched) {
      this.#touched?.add(c);
      this.#recorder?.touch(c);
      this.#readAhead(c);
    }
    for (let i = 0; i < e.need.length; i++) {
      const c = e.need[i]!;
      this.#recorder?.touch(c);
      this.#prefetcher?.demand(c);
      this.#delivery.demand(c, fromMonotonic(e.needAt[i]!));
      this.#readAhead(c);
    }
    // Before `installed`: a chunk claimed and installed since the last report is in both.
    for (let i = 0; i < e.claimed.length; i++) {
      const c = e.claimed[i]!;
      this.#recorder?.touch(c);
      this.#prefetcher?.demand(c);
      this.#delivery.claimed(c, fromMonotonic(e.claimedAt[i]!));
      this.#readAhead(c);
    }
    for (const c of e.missing) this.#delivery.missing(c);
    for (let i = 0; i < e.installed.length; i++) {
      const waited = this.#delivery.installed(e.installed[i]!, fromMonotonic(e.installedAt[i]!));
      if (waited !== undefined) this.#ctx.metrics.faultSeconds.observe(waited / 1000);
    }
    for (const c of e.poisoned) this.#delivery.poisoned(c);
    for (const f of e.failures) {
      const d = decideFailure(f, (c) => this.#refused.has(c));
      if (f.chunk !== undefined) this.#refused.add(f.chunk);
      this.#ctx.metrics.nativeFailures.inc({ kind: f.kind, code: f.code, action: d.action });
      this.#log.warn(
        { failure: { kind: f.kind, code: f.code, chunk: f.chunk, length: f.length }, action: d.action },
        d.reason,
      );
      if (!this.#stopped) this.#fail.apply(d);
    }
    if (e.stopped && !this.#stopped)
      this.#fail.kill('the fault thread stopped: nothing can serve the peer any more');
    if (e.exited) {
      if (!this.#stopped) this.#trace.milestone(EVENT.peerExited);
      this.end('ended');
    }
    if (this.#waiters.size > 0 && (e.installed.length > 0 || e.poisoned.length > 0 || e.failures.length > 0))
      for (const w of [...this.#waiters]) w();
  }

  #readAhead(c: number): void {
    if (this.#readahead) for (const next of this.#readahead.touch(c)) this.#delivery.readAhead(next);
  }

  /**
   * Stops serving without ending anything for the peer (a handover or a worker's orderly exit): the fault
   * thread stops and this process's copies of the uffd, state memfd and pidfd close; nobody is killed and
   * no summary is logged. Whoever holds the other copies adopts the session and serves on.
   */
  release(): void {
    if (this.#stopped) return;
    this.#released = true;
    this.#fault.close();
    this.#delivery.end();
    closeFd(this.#pidfd);
    this.#ctx.metrics.sessions.dec();
    this.#log.info('restore session released for a successor');
  }

  /** Server stopping, grace over: once the uffd closes nobody answers the peer's next fault on a missing page, so fail closed. */
  abandon(graceMs: number): SessionSummary {
    if (!this.#ended)
      this.#fail.kill(`the server is shutting down and the session outlived the ${graceMs} ms grace period`);
    return this.end('shutdown');
  }

  /**
   * Ends the session: stops the fault thread, closes the uffd and the pidfd. The connection belongs
   * to the server, which stops watching it before closing it (onEnd).
   */
  end(outcome: SessionSummary['outcome']): SessionSummary {
    if (this.#ended) return this.#ended;
    if (this.#released) throw new SessionClosedError();
    // What the fault thread holds back a moment (installs done, chunks claimed by the loaders) counts too.
    // Once: a report that the peer exited (which every later report repeats) ends the session from
    // within, and that end must not drain again.
    if (!this.#draining) {
      this.#draining = true;
      this.#fault.drain();
      if (this.#ended) return this.#ended;
      this.#ctx.takeDirect?.();
    }
    this.#recorder?.finish();
    const st = this.#fault.stats();
    this.#fault.close();
    this.#delivery.end();
    closeFd(this.#pidfd);
    const m = this.#ctx.metrics;
    const killed = this.#fail.killed;
    m.sessions.dec();
    m.sessionsTotal.inc({ outcome: killed ? 'killed' : outcome });
    m.faults.inc(st.faults);
    m.zeroFaults.inc(st.zeroFaults);
    m.jsFaults.inc(st.forwardedFaults);
    m.faultsAcrossRestart.inc(st.adoptedFaults);
    const d = this.#delivery;
    const summary: SessionSummary = {
      restoreId: this.restoreId,
      pid: this.pid,
      durationMs: Math.round(performance.now() - this.#t0),
      timeToFirstFaultServedMs: st.firstServedNs ? st.firstServedNs / 1e6 : null,
      faults: st.faults,
      zeroFaults: st.zeroFaults,
      directFaults: st.directFaults,
      fetchedChunks: d.fetched,
      bytesFetched: d.bytesFetched,
      hitsByTier: { ...d.hits, memory: st.residentFaults },
      failedChunks: this.#fail.failed,
      prefetchedChunks: d.prefetched,
      recordedChunks: this.#recorder?.size ?? 0,
      stall: this.#trace.summary(),
      outcome: killed ? 'killed' : outcome,
    };
    if (st.firstServedNs) this.#trace.milestone(EVENT.firstFaultServed, this.#t0 + st.firstServedNs / 1e6);
    this.#trace.end(
      {
        durationMs: summary.durationMs,
        outcome: summary.outcome,
        totals: {
          faults: st.faults,
          zeroFaults: st.zeroFaults,
          fetchedChunks: d.fetched,
          bytesFetched: d.bytesFetched,
          prefetchedChunks: d.prefetched,
          failedChunks: summary.failedChunks.length,
          hitsByTier: summary.hitsByTier,
        },
      },
      () => d.chunkMap(this.#touched ?? new Set()),
    );
    this.#ended = summary;
    // The peer hung up mid-restore (crashed, killed): its fetches finish for the cache, nothing is installed any more.
    const waiting = d.waiting;
    if (outcome === 'ended' && !killed && waiting.length > 0)
      this.#log.warn(
        { waiting },
        `the peer went away with faults on ${waiting.length} chunk(s) still waiting for a fetch; session ended`,
      );
    for (const w of [...this.#waiters]) w();
    // restoreId and the peer's pid (peerPid) are the logger's bindings already: the line does not repeat them.
    const { restoreId: _id, pid: _pid, ...line } = summary;
    this.#log.info(line, 'restore session summary');
    this.#onEnd(this, summary);
    return summary;
  }
}
