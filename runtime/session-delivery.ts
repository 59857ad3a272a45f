/**
 * Getting one session's chunks into its peer: fetch through the tiers, admit to the shared memory tier,
 * install. A demand (a fault waits) has the session's fail timeout as patience, counted from when its
 * fetch starts, and fails closed when it runs out; a prefetch (replay, fill) that fails is dropped, as a
 * fault would fetch it again; a prefetch that must arrive (populate) waits like a demand.
 *
 * Installs are tracked one by one: each install() pins its chunk in the memory tier until the fault
 * thread answers it (installed, or missing when the bytes were gone), and a missing chunk is fetched
 * again only if a fault still waits for it: a chunk that was only prefetched never fails a VM closed.
 */
import type { FaultSession } from '../native/index.js';
import type { Logger } from '../core/logger.js';
import { chunkCodec, chunkHash } from '../store/manifest.js';
import { chunkLength } from '../store/reader.js';
import type { FetchResult, Tier } from './fetcher.js';
import type { FailClosed } from './session-fail-closed.js';
import type { SessionTrace } from './session-trace.js';
import { bit } from './session-state.js';
import type { SessionContext } from './session-types.js';

/**
 * Live deliveries by their session's share id (FaultSession.share(), unique in this process): a loader
 * thread names sessions by it when it could not queue their install (ChunkLoader.onInstallFailed).
 */
const byShareId = new Map<number, ChunkDelivery>();

/**
 * A loader thread could not queue chunk `chunk`'s install for these sessions (their share ids): each still
 * live installs it itself. Without this, a session whose fetch said the loader installs for it
 * (FetchResult.installing) would never queue its own, and its fault would wait for ever.
 */
export function installsFailed(chunk: number, sessions: readonly number[]): void {
  for (const id of sessions) byShareId.get(id)?.installIfNeeded(chunk);
}

/** A direct load for session `session` (its share id) ended: `r` is its result, undefined when it failed. */
export function directLoaded(session: number, chunk: number, r: FetchResult | undefined): void {
  byShareId.get(session)?.directDone(chunk, r);
}

/** performance.now() when a loader thread last stopped with direct loads possible (ChunkLoader.onDirectLost). */
let directLostAt = -Infinity;

/**
 * A loader thread stopped: the direct loads it had taken will never report. Every session asks again for
 * the chunks it was told were claimed and has no outcome for; a claim it hears of later, made before now,
 * is asked for at once (claimed()). A load that did finish is then found resident, or joined.
 */
export function directLost(at: number): void {
  directLostAt = at;
  for (const d of byShareId.values()) d.redemandClaimed();
}

export class ChunkDelivery {
  readonly #ctx: SessionContext;
  readonly #fault: FaultSession;
  readonly #fail: FailClosed;
  readonly #log: Logger;
  readonly #trace: SessionTrace;
  /** Whether the profile being replayed holds each chunk (demand faults outside it are prefetch misses). */
  readonly #inProfile: Set<number> | undefined;
  /** Chunks a fault waits for, since when (the fault thread read it, on the performance.now() clock): until installed. */
  readonly #needAt = new Map<number, number>();
  /** Chunks a fault crossed into JS for (the trace's chunk map). */
  readonly #demanded = new Set<number>();
  /** The fetch that made each chunk resident for this session, for the stall split of the fault waiting on it. */
  readonly #fetchOf = new Map<number, FetchResult>();
  /** Demanded chunks whose fetch has not settled: a peer can only exit with some if it died midway. */
  readonly #waiting = new Set<number>();
  readonly #installed = new Set<number>();
  /** Chunks a prefetch was started for (never prefetched twice). */
  readonly #tried = new Set<number>();
  /**
   * Chunks a fault waits for that its fault thread handed to the loader threads (direct mode), whose load
   * has not reported yet.
   */
  readonly #claimed = new Set<number>();
  /** Direct loads that reported before their claim reached this session (the claim's report is deferred). */
  readonly #directEarly = new Map<number, FetchResult | undefined>();
  /** Armed while claims wait: asks the fetcher for those that waited a whole fail timeout (#sweepClaims). */
  #claimSweep: NodeJS.Timeout | undefined;
  /** Chunks whose fetch was counted for this session (a re-install after `missing` is not a fetch). */
  readonly #counted = new Set<number>();
  /** Install commands in flight per chunk, each holding a pin in the memory tier. */
  readonly #installs = new Map<number, number>();
  /** Chunks installed through a prefetch before any fault asked for them. */
  readonly #ahead = new Set<number>();
  /**
   * Faults a loader thread answered (its install, LoadJob.installTo) before their fetch settled here:
   * when they were read and answered, kept for the stall split until the fetch's account arrives.
   */
  readonly #early = new Map<number, { needAt: number; doneAt: number }>();
  /**
   * This session's id for the loader threads' installs (FaultSession.share()), once a demand needed it;
   * null when it could not be had (the registry full): then JS installs every chunk, as it can anyway.
   */
  #shareId: number | null | undefined;
  readonly hits: Record<string, number> = {};
  bytesFetched = 0;
  fetched = 0;
  #ended = false;

  constructor(
    ctx: SessionContext,
    fault: FaultSession,
    fail: FailClosed,
    log: Logger,
    trace: SessionTrace,
    profile?: readonly number[],
  ) {
    this.#ctx = ctx;
    this.#fault = fault;
    this.#fail = fail;
    this.#log = log;
    this.#trace = trace;
    if (profile) this.#inProfile = new Set(profile);
  }

  /**
   * One character per chunk for the trace (runtime/trace-format.ts): failed, demanded, prefetched,
   * served from memory (`touched`: the fault thread's own first touches), zero, untouched.
   */
  chunkMap(touched: ReadonlySet<number>): string {
    const { index } = this.#ctx;
    const failed = new Set(this.#fail.failed);
    let out = '';
    for (let c = 0; c < index.count; c++)
      out += failed.has(c)
        ? 'x'
        : this.#demanded.has(c)
          ? 'd'
          : this.#ahead.has(c)
            ? 'p'
            : touched.has(c)
              ? 'm'
              : chunkHash(index, c) === null
                ? 'z'
                : '.';
    return out;
  }

  /** Chunks installed ahead of any fault (replay, fill, populate). */
  get prefetched(): number {
    return this.#ahead.size;
  }

  /** Demanded chunks still being fetched and not installed (a loader thread may install one first). */
  get waiting(): number[] {
    return [...this.#waiting].filter((c) => !this.#installed.has(c));
  }

  /** Adopting a session: the chunks the predecessor installed (a bitmap) are in the peer already. */
  adoptInstalled(bits: Uint8Array): void {
    for (let c = 0; c < this.#ctx.index.count; c++) if (bit(bits, c)) this.#installed.add(c);
  }

  isInstalled(c: number): boolean {
    return this.#installed.has(c);
  }

  /** Whether a prefetch of c would be useless: zero, installed, or already tried. */
  skipPrefetch(c: number): boolean {
    return this.#installed.has(c) || this.#tried.has(c) || chunkHash(this.#ctx.index, c) === null;
  }

  /**
   * The session was opened in direct mode (FaultSession option `direct`, which shared it): the fault thread
   * hands absent chunks to the loader threads itself (the ChunkLoader.direct plan), and this session hears
   * of them as `claimed`, then of their load (directLoaded, by its share id, registered here).
   */
  direct(): void {
    this.#installTarget();
  }

  /** A fault waits for chunk c since `at` (performance.now() clock): to the accounting, once. */
  #waitsFor(c: number, at: number): void {
    if (this.#needAt.has(c)) return;
    this.#needAt.set(c, at);
    if (this.#demanded.has(c)) return;
    this.#demanded.add(c);
    const m = this.#ctx.metrics;
    if (this.#inProfile && !this.#inProfile.has(c)) m.prefetchMisses.inc();
    else if (this.#tried.has(c)) m.prefetchChunks.inc({ outcome: 'late' });
  }

  /**
   * A fault waits for chunk c since `at`, and its fault thread handed it to the loader threads (direct):
   * nothing to fetch here, unless the load already reported a failure or a loader thread stopped since.
   */
  claimed(c: number, at = performance.now()): void {
    if (this.#ended) return;
    this.#waitsFor(c, at);
    if (this.#directEarly.has(c)) {
      const r = this.#directEarly.get(c);
      this.#directEarly.delete(c);
      this.#directSettled(c, r);
    } else if (at <= directLostAt) {
      this.demand(c, at); // its loader may have stopped with it
    } else {
      this.#claimed.add(c);
      this.#waiting.add(c);
      this.#claimSweep ??= setTimeout(() => this.#sweepClaims(), this.#ctx.failTimeoutMs).unref();
    }
  }

  /**
   * A direct load that has not reported within the fail timeout (a loader stuck in a read of a hung
   * filesystem) is asked for through the fetcher, whose patience fails the chunk closed if nothing delivers
   * it: a claim alone has no timeout, and the peer must not wait for ever.
   */
  #sweepClaims(): void {
    this.#claimSweep = undefined;
    if (this.#ended) return;
    const now = performance.now();
    let oldest = Infinity;
    for (const c of [...this.#claimed]) {
      const at = this.#needAt.get(c) ?? now;
      if (now - at < this.#ctx.failTimeoutMs) oldest = Math.min(oldest, at);
      else {
        this.#claimed.delete(c);
        this.#waiting.delete(c);
        this.demand(c);
      }
    }
    if (oldest !== Infinity)
      this.#claimSweep = setTimeout(
        () => this.#sweepClaims(),
        oldest + this.#ctx.failTimeoutMs - now,
      ).unref();
  }

  /** directLoaded: chunk c's direct load ended, with this result (undefined: it failed). */
  directDone(c: number, r: FetchResult | undefined): void {
    if (this.#ended) return;
    // Counted at once: the load was this session's, whenever its claim is heard of (liveStats may ask first).
    if (r) this.#count(c, r.tier, r.stored);
    if (!this.#claimed.delete(c)) {
      // Its claim comes with the fault thread's next report; unless this session asked for the chunk
      // through the fetcher since (a stopped loader, a sweep), which then delivers it.
      if (!this.#demanded.has(c)) this.#directEarly.set(c, r);
      return;
    }
    this.#directSettled(c, r);
  }

  /** directLost: the claims with no outcome yet go through the fetcher. */
  redemandClaimed(): void {
    for (const c of [...this.#claimed]) {
      this.#claimed.delete(c);
      this.#waiting.delete(c);
      this.demand(c);
    }
  }

  #directSettled(c: number, r: FetchResult | undefined): void {
    this.#waiting.delete(c);
    // Failed (absent, corrupt, unreadable, or the slot taken by another load): the fetcher's way, with
    // every tier and retry, joining that other load if there is one, failing closed in the end.
    if (!r) return this.demand(c);
    this.#settled(c, r, r.timing!.queuedAt, r.installing !== undefined);
  }

  /** A fault waits for chunk c (it crossed into JS as `need`), since `at` (performance.now() clock). */
  demand(c: number, at = performance.now()): void {
    if (this.#ended) return;
    this.#waitsFor(c, at);
    const { index, memory, fetcher } = this.#ctx;
    if (memory.has(c)) {
      memory.touch(c);
      this.#install(c);
      return;
    }
    const hash = chunkHash(index, c);
    if (hash === null) {
      // The table marks every zero chunk; a need for one means the table was reset. Install zeros.
      this.#ctx.table.setZero(c);
      this.#install(c);
      return;
    }
    this.#waiting.add(c);
    const asked = performance.now();
    const installTo = this.#installTarget();
    fetcher
      .fetch({ chunk: c, hash, codec: chunkCodec(index, c)!, length: chunkLength(index, c) }, 'demand', {
        patienceMs: this.#ctx.failTimeoutMs,
        ...(installTo !== undefined ? { installTo } : {}),
      })
      .then(
        (r) => {
          this.#waiting.delete(c);
          // The loader thread queues the install for this session itself (installTo), right after the
          // fetch settles: a second one from here would cost the fault thread a wake-up and the event
          // loop an event for each chunk, for nothing.
          this.#settled(c, r, asked, installTo !== undefined && r.installing?.has(installTo) === true);
        },
        (err: unknown) => {
          this.#waiting.delete(c);
          this.#trace.fetched(c, 'demand', undefined, asked);
          if (!this.#ended) this.#fail.chunk(c, err);
        },
      );
  }

  /** A demand's fetch made chunk c resident (asked at `asked`): traced, counted, installed unless a loader does. */
  #settled(c: number, r: FetchResult, asked: number, loaderInstalls: boolean): void {
    this.#fetchOf.set(c, r);
    const early = this.#early.get(c);
    this.#trace.fetched(c, 'demand', r, asked);
    if (early) {
      this.#early.delete(c);
      this.#faultDone(c, early.needAt, early.doneAt);
    }
    this.#admit(c, r.tier, r.stored, loaderInstalls);
  }

  /**
   * Fetches a chunk ahead of any fault. One that fails is dropped (a fault retries it); one that must
   * arrive (populate) waits like a fault and fails closed.
   */
  prefetch(c: number, mustArrive = false): Promise<void> {
    this.#tried.add(c);
    const { index, memory, fetcher } = this.#ctx;
    if (memory.has(c)) {
      memory.touch(c);
      this.#install(c);
      return Promise.resolve();
    }
    const ref = {
      chunk: c,
      hash: chunkHash(index, c)!,
      codec: chunkCodec(index, c)!,
      length: chunkLength(index, c),
    };
    const asked = performance.now();
    return fetcher.fetch(ref, 'prefetch', mustArrive ? { patienceMs: this.#ctx.failTimeoutMs } : {}).then(
      (r) => {
        this.#trace.fetched(c, 'prefetch', r, asked);
        // A demand fault joined this fetch (or got the chunk first): its own callback installs it.
        if (this.#installed.has(c) || this.#needAt.has(c)) return;
        this.#admit(c, r.tier, r.stored);
      },
      (err: unknown) => {
        this.#trace.fetched(c, 'prefetch', undefined, asked);
        this.#ctx.metrics.prefetchChunks.inc({ outcome: 'failed' });
        if (mustArrive && !this.#ended) this.#fail.chunk(c, err);
        else if (this.#log.isLevelEnabled('debug'))
          this.#log.debug(
            { chunk: c, err: (err as Error).message },
            'prefetch failed; the demand path will retry if needed',
          );
      },
    );
  }

  /**
   * Read-ahead (runtime/readahead.ts): makes chunk c resident without installing it, so the reader's
   * first touch is served by the fault thread alone. Nothing to do for a zero, resident or installed
   * chunk; a failure is dropped (a fault would fetch it again).
   */
  readAhead(c: number): void {
    const { index, memory, fetcher } = this.#ctx;
    const hash = chunkHash(index, c);
    if (this.#ended || hash === null || this.#installed.has(c) || memory.has(c)) return;
    const asked = performance.now();
    fetcher
      .fetch({ chunk: c, hash, codec: chunkCodec(index, c)!, length: chunkLength(index, c) }, 'prefetch')
      .then(
        (r) => {
          this.#trace.fetched(c, 'prefetch', r, asked);
          this.#count(c, r.tier, r.stored);
        },
        () => this.#trace.fetched(c, 'prefetch', undefined, asked),
      );
  }

  /**
   * The fault thread copied chunk c (or found it present) at `at` (performance.now() clock). Returns how
   * long JS saw a fault wait for it, if one did; the fault's whole stall goes to the trace.
   */
  installed(c: number, at = performance.now()): number | undefined {
    this.#unpin(c);
    const t = this.#needAt.get(c);
    this.#needAt.delete(c);
    if (t === undefined && !this.#installed.has(c)) {
      this.#ahead.add(c);
      if (this.#tried.has(c)) this.#ctx.metrics.prefetchChunks.inc({ outcome: 'ahead' });
    }
    this.#installed.add(c);
    if (t === undefined) return undefined;
    // The loader thread installed it before the fetch settled here: its split waits for the fetch.
    if (this.#waiting.has(c)) this.#early.set(c, { needAt: t, doneAt: at });
    else this.#faultDone(c, t, at);
    return performance.now() - t;
  }

  #installTarget(): number | undefined {
    if (this.#shareId === undefined) {
      try {
        this.#shareId = this.#fault.share();
        byShareId.set(this.#shareId, this);
      } catch {
        this.#shareId = null; // an optimization only: the event loop installs what the loaders do not
      }
    }
    return this.#shareId ?? undefined;
  }

  /** A fault's wait is over: to the trace, split by the fetch that delivered its chunk (if one did). */
  #faultDone(c: number, needAt: number, doneAt: number): void {
    const fetch = this.#fetchOf.get(c);
    this.#fetchOf.delete(c);
    this.#trace.faultDone({
      chunk: c,
      needAt,
      doneAt,
      tier: fetch?.tier ?? 'memory',
      ...(fetch ? { fetch } : {}),
    });
  }

  /** An install found no bytes (evicted before the copy): fetched again only if a fault waits. */
  missing(c: number): void {
    this.#unpin(c);
    if (this.#needAt.has(c)) this.demand(c);
  }

  /** Chunk c was poisoned (failed closed): no fault waits for it any more. */
  poisoned(c: number): void {
    const t = this.#needAt.get(c);
    this.#needAt.delete(c);
    if (t !== undefined)
      this.#trace.faultDone({ chunk: c, needAt: t, doneAt: performance.now(), tier: 'failed' });
  }

  /** The session ended: nothing more is installed, pins are released. */
  end(): void {
    this.#ended = true;
    if (typeof this.#shareId === 'number') byShareId.delete(this.#shareId);
    // Faults a loader thread answered whose fetch has not settled here yet: their waits count all the
    // same, without the fetch's split (the fetch settles after the session's trace has ended).
    for (const [c, e] of this.#early) this.#faultDone(c, e.needAt, e.doneAt);
    this.#early.clear();
    this.#claimed.clear();
    this.#directEarly.clear();
    clearTimeout(this.#claimSweep);
    for (const [c, n] of this.#installs) for (let i = 0; i < n; i++) this.#ctx.memory.unpin(c);
    this.#installs.clear();
  }

  /** Chunk c is resident (the fetch made it so, and told the memory tier): count it, install it. */
  #admit(c: number, tier: Tier, stored: number, loaderInstalls = false): void {
    this.#count(c, tier, stored);
    // Installed already (by a loader thread for the fault that asked, or by another way in), or about to
    // be: the loader queues it right after its reply (FetchResult.installing; a failure comes back
    // through installsFailed).
    if (this.#ended || this.#installed.has(c) || loaderInstalls) return;
    this.#install(c);
  }

  /** installsFailed: chunk c's install, unless this session has it or ended. */
  installIfNeeded(c: number): void {
    if (this.#ended || this.#installed.has(c)) return;
    this.#install(c);
  }

  /** Counted once per chunk: a chunk fetched again after `missing` is not another fetch for this session. */
  #count(c: number, tier: Tier, stored: number): void {
    if (this.#counted.has(c) || tier === 'memory') return;
    this.#counted.add(c);
    this.hits[tier] = (this.hits[tier] ?? 0) + 1;
    if (tier !== 'disk') this.bytesFetched += stored;
    this.fetched++;
  }

  #install(c: number): void {
    if (this.#ended) return;
    this.#ctx.memory.pin(c);
    this.#installs.set(c, (this.#installs.get(c) ?? 0) + 1);
    try {
      this.#fault.install(c);
    } catch (e) {
      this.#unpin(c);
      // The command could not be queued (out of memory): the fault waiting on it would never be answered.
      this.#fail.kill(`installing chunk ${c} could not be queued (${(e as Error).message})`);
    }
  }

  #unpin(c: number): void {
    const n = this.#installs.get(c);
    if (!n) return;
    if (n > 1) this.#installs.set(c, n - 1);
    else this.#installs.delete(c);
    this.#ctx.memory.unpin(c);
  }
}
