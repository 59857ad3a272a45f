/**
 * Chunk fetching for restores: host disk cache, then each origin in the order given, first verified
 * answer wins. A fetch ends with the chunk resident in the snapshot's native table: the chunk loader
 * threads (runtime/chunk-loader.ts) read a local store's file or an origin's body, decode it into a
 * stage of the table (or the chunk's slot) and verify it there, so no chunk's bytes are decoded, hashed
 * or copied on the thread that runs this scheduling. Every attempt has a timeout; retryable errors (5xx, timeouts, resets) are retried with
 * jittered exponential backoff on the same origin; a missing object, a non-retryable error or bytes
 * whose hash is wrong (an origin that lies) fall through to the next origin at once. Bytes are
 * verified (BLAKE3 of the decoded chunk) before anyone sees them, and bounded: an origin body longer
 * than the largest object that can hold the chunk is refused before it is buffered, and decoding never
 * produces more than the chunk's length (store/chunk.ts). For an encrypted snapshot an object that
 * fails authentication is an integrity failure like any other: next origin, and in the end fail closed.
 *
 * Demand and prefetch have their own slots (two p-queues): a demand fault never waits behind a
 * prefetch, however many sessions replay at once, and a demand for a chunk still queued as a prefetch
 * starts a demand task for it (whichever task starts first does the fetch, the other joins it).
 *
 * A caller that can wait (a demand fault, until its session's fail timeout) passes `patienceMs`: from
 * when the fetch starts (not while it is queued), transient origin failures (timeouts, 5xx, refused
 * connections) are retried over the origins again with backoff until that much time has passed, so an
 * origin restart shorter than the fail timeout costs latency, not the VM. Absence and lying bytes
 * everywhere fail at once. A little after the patience runs out the caller is answered with a
 * FetchError (every attempt that failed so far, then the timeout) whatever the fetch is doing.
 *
 * One fetch per chunk however many faults or sessions want it (in-flight dedup by hash).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import PQueue from 'p-queue';

import { FetchError, IntegrityError, NotFoundError, StoreError } from '../core/errors.js';
import type { ChunkTable } from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import { maxStoredSize, type Codec } from '../store/chunk.js';
import { chunkKey } from '../store/keys.js';
import { chunkCodec, chunkHash, type SnapshotIndex } from '../store/manifest.js';
import {
  LoadError,
  newLoadTiming,
  type ChunkLoader,
  type DirectOutcome,
  type DirectPlan,
  type LoadTiming,
  type WriteSource,
} from './chunk-loader.js';
import { LatencyWindow, hedged } from './hedge.js';
import { PrefetchSizing } from './prefetch-sizing.js';
import { fromMonotonic } from './stall.js';

/** The host disk tier (runtime/disk-cache.ts), reading into and writing from the table's slots. */
export interface ChunkCache {
  read(
    chunk: number,
    hash: string,
    length: number,
    priority?: Priority,
    timing?: LoadTiming,
    installTo?: ReadonlySet<number>,
    /** Whether the chunk is kept in memory once served (LoadJob.admit). @default true */
    admit?: boolean,
  ): Promise<boolean>;
  /** Caches a chunk: from the table, or when it is not resident, decoded again from `source`. */
  write(chunk: number, hash: string, length: number, source?: WriteSource): Promise<void>;
  /**
   * For the direct path (ChunkLoader.direct): the directory entries are in (at `${dir}/${cacheEntryKey}`),
   * and a read a loader made of one.
   */
  readonly dir?: string;
  accountRead?(hash: string, size?: number): Promise<void>;
}

export interface ChunkRef {
  /** The chunk's index: its slot in the table. */
  chunk: number;
  hash: string;
  codec: Codec;
  length: number;
}

export type Priority = 'demand' | 'prefetch';
/** Where a fetch found the chunk: the host cache, an origin, or already resident (another fetch). */
export type Tier = 'memory' | 'disk' | `origin${number}`;

/**
 * Where one fetch's time went (performance.now() times and durations in ms), for stall accounting
 * (runtime/stall.ts) and traces: queued, started (took a slot), ended (resident, or failed), and of the
 * time between start and end, what the loader threads spent (runtime/chunk-loader.ts); the rest is the
 * transfer (requests, bodies, backoff between retries).
 */
export interface FetchTiming {
  queuedAt: number;
  startedAt: number;
  endedAt: number;
  /** Requests made (origin objects and host cache files read; a hedge is one more). */
  attempts: number;
  hedge: 'none' | 'won' | 'lost';
  /** Hedge requests among `attempts` (runtime/hedge.ts: up to MAX_HEDGES for one request). */
  hedges: number;
  loader: LoadTiming;
}

export interface FetchEvent {
  hash: string;
  chunk: number;
  tier: Tier | 'failed';
  bytes: number;
  ms: number;
  priority: Priority;
  /**
   * The origin attempts that failed before this outcome, one line each (`<origin>: <reason>`): empty
   * for a clean fetch, the whole story of one that recovered or failed, so the runtime can log it
   * once per fetch rather than once per attempt.
   */
  errors: readonly string[];
  /** How many of `errors` were a plain "not found" (an origin without the chunk: falling through is normal). */
  misses: number;
  timing: FetchTiming;
}

export interface FetcherOptions {
  /** Origins in order: the first that delivers verified bytes wins. */
  origins: readonly StoreBackend[];
  /** The snapshot's table: a fetch ends with the chunk resident in it. */
  table: ChunkTable;
  /** The threads that read, decode and verify into the table (they hold the snapshot's cipher, if any). */
  loader: ChunkLoader;
  cache?: ChunkCache;
  /** Whether the snapshot is encrypted (its objects are sealed: a little longer). @default false */
  encrypted?: boolean;
  /** Per attempt. @default 5000 */
  attemptTimeoutMs?: number;
  /** Retries of a retryable error on the same origin. @default 2 */
  retries?: number;
  /** First backoff; doubles per retry, ± 50% jitter. @default 50 */
  backoffMs?: number;
  /** Demand fetches in flight at once (origin requests and cache reads). @default 16 */
  concurrency?: number;
  /**
   * The most prefetch fetches in flight at once, in slots of their own. How many actually run adapts to
   * the origin (PrefetchSizing): enough to keep about twice its measured bandwidth × latency in flight.
   * @default 128
   */
  prefetchConcurrency?: number;
  /** Called once per fetch that completes or fails (metrics, logs). */
  onFetch?: (e: FetchEvent) => void;
  /**
   * Hedge slow demand requests to remote origins (runtime/hedge.ts): a request the origin has not
   * answered by the p95 of its recent answers (or whose body is not all there by the p95 of its recent
   * bodies) gets a second request; the first body wins. @default true
   */
  hedge?: boolean;
  /** Called for each hedged request: whether the hedge answered first ('won') or the original ('lost'). */
  onHedge?: (outcome: 'won' | 'lost') => void;
  /**
   * Called for every chunk a fetch made resident, whether or not anyone still waits for it (a waiter
   * may have given up meanwhile): the memory tier accounts it here, or it would stay resident unbudgeted.
   */
  onResident?: (chunk: number) => void;
  /**
   * Whether chunk `chunk`, about to be loaded from a tier that is cheap to read again (a local store's
   * file with no host cache to fill, or a host cache file), is kept in memory afterwards (the memory
   * tier's admission policy, runtime/memory-tier.ts). Asked once per load. A chunk an origin sent over
   * the network is always kept: fetching it again costs a round trip. @default always
   */
  keep?: (chunk: number) => boolean;
  /** A supervised worker's crash attribution (runtime/supervisor/): chunks not to load again. */
  suspects?: CrashSuspects;
}

/**
 * Chunks that were being decoded when earlier worker processes died, with how many times. One at
 * `limit` is failed closed without being loaded (the loader would crash this worker too); one that
 * loads fine is cleared (`onCleared`), since it was only in flight by chance.
 */
export interface CrashSuspects {
  crashes: Map<number, number>;
  limit: number;
  onCleared: (chunk: number) => void;
}

/** How long a fetch waits for another thread's load of its chunk to commit (in 1 ms steps). */
const FILLING_WAIT_MS = 1000;
/** Between passes over the origins: the first wait, doubled per pass up to the cap. */
const PASS_BACKOFF_MS = 100;
const PASS_BACKOFF_CAP_MS = 1000;
/** How long after its patience a caller is answered (a FetchError) if the fetch has not settled. */
export const FETCH_BACKSTOP_MS = 500;
/** Attempt lines kept for a fetch (logs and errors): the first and the last ones, and a count between. */
const MAX_ERROR_LINES = 12;

export interface FetchOptions {
  /** Detaches this caller only; a fetch others wait for is never cancelled. */
  signal?: AbortSignal;
  /**
   * How long this caller can wait once the fetch has started: transient failures are retried in further
   * passes until then, and the caller is answered (FetchError) shortly after. @default one pass
   */
  patienceMs?: number;
  /**
   * A session whose fault waits for this chunk (FaultSession.share(), on this fetcher's table): the
   * loader thread that verifies the chunk queues its install there at once, a hop before this fetch's
   * promise settles on the event loop. A demand that joins a fetch once its load was handed to a loader
   * thread is installed the usual way, when the promise settles.
   */
  installTo?: number;
}

/**
 * The chunk is resident in the table; `stored` is the size of the object it came from (0: memory), and
 * `timing` how the fetch went (absent when the chunk was resident already). `kept: false`: loaded and
 * served from a stage, but not admitted to the memory tier (FetcherOptions.keep), so resident only for a
 * while. `installing`: the sessions (FetchOptions.installTo) the loader thread queues the chunk's install
 * for itself, right after the fetch settles: they need not queue their own (a failure to queue reaches
 * them through ChunkLoader.onInstallFailed).
 */
export type FetchResult = {
  tier: Tier;
  stored: number;
  timing?: FetchTiming;
  kept?: false;
  installing?: ReadonlySet<number>;
};
type Result = FetchResult;

/** One fetch of one chunk, shared by every caller that wants it. */
class InFlight {
  readonly promise: Promise<Result>;
  priority: Priority;
  /** performance.now() when the fetch started, undefined while queued. */
  startedAt: number | undefined;
  readonly queuedAt = performance.now();
  /** Transient failures are retried until this performance.now() (0: one pass). */
  retryUntil = 0;
  /** Every failed attempt so far (shared with the fetch), for callers who stop waiting before it ends. */
  readonly errors: string[] = [];
  key = '';
  /** Other slots with the same content (one object, copied into each once it is in). */
  readonly extra = new Set<number>();
  /** Sessions the loader installs the chunk for (FetchOptions.installTo; this chunk's callers only). */
  readonly installTo = new Set<number>();
  /**
   * Of those, the ones named in the load that made the chunk resident (FetchResult.installing): set only
   * once a load succeeded, never from an attempt that failed.
   */
  loaderInstalls: ReadonlySet<number> | undefined;
  /** Callers' patience, applied when the fetch starts. */
  readonly #pending: { patienceMs: number; arm: () => void }[] = [];
  #resolve!: (r: Result) => void;
  #reject!: (e: unknown) => void;

  readonly chunk: number;

  constructor(priority: Priority, chunk: number) {
    this.priority = priority;
    this.chunk = chunk;
    this.promise = new Promise<Result>((res, rej) => ((this.#resolve = res), (this.#reject = rej)));
    this.promise.catch(() => {}); // callers get their own view; an unobserved failure is not a crash
  }

  /** Marks the fetch started (once) and arms every caller's patience from now. */
  start(): boolean {
    if (this.startedAt !== undefined) return false;
    this.startedAt = performance.now();
    for (const p of this.#pending.splice(0)) this.#patience(p.patienceMs, p.arm);
    return true;
  }

  /** Registers a caller's patience: armed now if the fetch runs, else when it starts. */
  wait(patienceMs: number, arm: () => void): void {
    if (this.startedAt === undefined) this.#pending.push({ patienceMs, arm });
    else this.#patience(patienceMs, arm);
  }

  #patience(patienceMs: number, arm: () => void): void {
    this.retryUntil = Math.max(this.retryUntil, performance.now() + patienceMs);
    arm();
  }

  settle(r: Result | undefined, e?: unknown): void {
    if (r) this.#resolve(r);
    else this.#reject(e);
  }
}

export class ChunkFetcher {
  readonly #o: Required<
    Omit<FetcherOptions, 'cache' | 'onFetch' | 'onResident' | 'onHedge' | 'suspects' | 'keep'>
  > &
    Pick<FetcherOptions, 'cache' | 'onFetch' | 'onResident' | 'onHedge' | 'suspects' | 'keep'>;
  readonly #demand: PQueue;
  readonly #prefetch: PQueue;
  readonly #sizing: PrefetchSizing;
  /** Recent request times per origin, for hedging: to the whole body, and to the origin's answer. */
  readonly #latency: LatencyWindow[];
  readonly #answers: LatencyWindow[];
  /** The table's id for the loader threads (runtime/chunk-loader.ts). */
  readonly #tableId: number;
  readonly #inflight = new Map<string, InFlight>();
  /** The snapshot's index, once a direct plan was made (the hashes of direct loads, for their events). */
  #directIndex: SnapshotIndex | undefined;
  /** The direct plan's store directory (DirectPlan.root). */
  #directRoot = '';

  constructor(options: FetcherOptions) {
    this.#o = {
      attemptTimeoutMs: 5000,
      retries: 2,
      backoffMs: 50,
      concurrency: 16,
      prefetchConcurrency: 128,
      encrypted: false,
      hedge: true,
      ...options,
    };
    this.#demand = new PQueue({ concurrency: this.#o.concurrency });
    this.#sizing = new PrefetchSizing(this.#o.prefetchConcurrency, this.#o.table.chunkSize);
    this.#tableId = this.#o.table.share();
    this.#latency = this.#o.origins.map(() => new LatencyWindow());
    this.#answers = this.#o.origins.map(() => new LatencyWindow());
    this.#prefetch = new PQueue({ concurrency: this.#sizing.concurrency });
  }

  /** Prefetch fetches allowed in flight now (adapts to the origin; see PrefetchSizing). */
  get prefetchConcurrency(): number {
    return this.#prefetch.concurrency;
  }

  /** Queued fetches not yet started, by priority (for tests and metrics). */
  pending(): { demand: number; prefetch: number } {
    return { demand: this.#demand.size, prefetch: this.#prefetch.size };
  }

  /** Fetches running now, by the slots they hold. */
  running(): { demand: number; prefetch: number } {
    return { demand: this.#demand.pending, prefetch: this.#prefetch.pending };
  }

  /**
   * The verified bytes of a chunk and the tier that served them. Concurrent calls for one hash share
   * one fetch; the signal only detaches this caller, it never cancels a fetch others may wait for.
   */
  fetch(ref: ChunkRef, priority: Priority, options: FetchOptions = {}): Promise<Result> {
    const { signal, patienceMs, installTo } = options;
    signal?.throwIfAborted();
    let entry = this.#inflight.get(ref.hash);
    if (entry && entry.chunk !== ref.chunk) entry.extra.add(ref.chunk);
    // Only for the slot the loader fills: another chunk of the same content is copied in afterwards.
    else if (entry && installTo !== undefined) entry.installTo.add(installTo);
    if (!entry) {
      const e = new InFlight(priority, ref.chunk);
      if (installTo !== undefined) e.installTo.add(installTo);
      entry = e;
      this.#inflight.set(ref.hash, e);
      void e.promise.then(
        () => this.#inflight.delete(ref.hash),
        () => this.#inflight.delete(ref.hash),
      );
      this.#enqueue(e, ref, priority);
    } else if (priority === 'demand' && entry.priority === 'prefetch') {
      // Queued behind other prefetches: a demand task of its own; whichever starts first fetches.
      entry.priority = 'demand';
      if (entry.startedAt === undefined) this.#enqueue(entry, ref, 'demand');
      // Started: its load may be queued for a loader thread behind other prefetches' loads.
      else this.#o.loader.promote(this.#tableId, entry.chunk);
    }
    const shared = entry;
    if (!signal && patienceMs === undefined) return shared.promise;
    return new Promise<Result>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => reject(signal!.reason as Error);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (patienceMs !== undefined) {
        shared.wait(patienceMs, () => {
          // The fetch goes on for others; this caller gets its account of what failed so far.
          timer = setTimeout(
            () =>
              reject(
                new FetchError(shared.key, [
                  ...trimmed(shared.errors),
                  `no verified chunk within ${patienceMs} ms`,
                ]),
              ),
            patienceMs + FETCH_BACKSTOP_MS,
          );
        });
      }
      shared.promise.then(resolve, reject).finally(() => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      });
    });
  }

  /**
   * How the loader threads may load this snapshot's chunks straight from a fault (ChunkLoader.direct), or
   * undefined when a fault's chunk must come through here: the first origin is not a local directory, or
   * the snapshot is encrypted. A host cache is read first, as here, and filled from here (directLoaded).
   * `loadedOnce`: the memory tier's admission record (MemoryTier.loadedOnce).
   */
  directPlan(index: SnapshotIndex, loadedOnce: Uint8Array): DirectPlan | undefined {
    const first = this.#o.origins[0];
    const cache = this.#o.cache;
    if (!first?.localPath || this.#o.encrypted) return undefined;
    // The loaders name objects as `${root}/${key}`: only for a store whose paths are exactly that.
    const probe = chunkKey('0'.repeat(64), 'zstd');
    const path = first.localPath(probe);
    if (!path.endsWith(`/${probe}`)) return undefined;
    if (cache && (cache.dir === undefined || !cache.accountRead)) return undefined;
    const cacheDir = cache?.dir;
    const { chunkSize, totalSize, chunks } = index.manifest;
    this.#directIndex = index;
    this.#directRoot = path.slice(0, -probe.length - 1);
    return {
      op: 'direct',
      table: this.#tableId,
      root: this.#directRoot,
      ...(cacheDir !== undefined ? { cacheDir } : {}),
      hashes: index.hashes,
      flags: index.flags,
      codecs: chunks.codecs,
      chunkSize,
      totalSize,
      loadedOnce,
    };
  }

  /**
   * Whether a session starting now may use the direct plan: not while a chunk that was being decoded when
   * an earlier worker process died is unresolved (CrashSuspects: such a chunk is loaded alone, or failed
   * closed, which only this fetcher does). Suspects arrive after start-up, and only ever go.
   */
  directAllowed(): boolean {
    return (this.#o.suspects?.crashes.size ?? 0) === 0;
  }

  /**
   * A direct load ended (ChunkLoader.onDirect): one that made the chunk resident is accounted here as the
   * demand fetch from origin 0 it was, and its result returned for the session that waits (the loader
   * queued its install). One that failed returns undefined: that session then fetches the chunk through
   * here, with every tier, retry and fail-closed rule that applies.
   */
  directLoaded(o: DirectOutcome): FetchResult | undefined {
    const r = o.reply;
    if (!r.ok) return undefined;
    const [readMs, decodeMs, verifyMs] = r.phases ?? [0, 0, 0];
    const startedAt = fromMonotonic(o.startedAt);
    const cache = this.#o.cache;
    const tier: Tier = o.disk ? 'disk' : 'origin0';
    const timing: FetchTiming = {
      queuedAt: startedAt,
      startedAt,
      endedAt: fromMonotonic(o.endedAt),
      // A store read with a cache: the cache was tried first (a miss).
      attempts: cache && !o.disk ? 2 : 1,
      hedge: 'none',
      hedges: 0,
      loader: { waitMs: 0, readMs, decodeMs, verifyMs },
    };
    const index = this.#directIndex;
    const hash = (index && chunkHash(index, o.chunk)) ?? '';
    this.#o.onFetch?.({
      hash,
      chunk: o.chunk,
      tier,
      bytes: r.stored,
      ms: timing.endedAt - timing.startedAt,
      priority: 'demand',
      errors: [],
      misses: 0,
      timing,
    });
    if (o.kept) this.#o.onResident?.(o.chunk);
    if (cache && hash) {
      // As read() and #pass() would have: the cache's hit or miss, and a store's chunk cached.
      void cache.accountRead?.(hash, o.disk ? r.stored : undefined).catch(() => {});
      const codec = index && chunkCodec(index, o.chunk);
      if (!o.disk && codec) {
        const length = this.#o.table.chunkLength(o.chunk);
        const key = chunkKey(hash, codec);
        const source = {
          path: `${this.#directRoot}/${key}`,
          key,
          codec,
          hash,
          maxBytes: maxStoredSize(codec, length, false),
        };
        void cache.write(o.chunk, hash, length, source).catch(() => {});
      }
    }
    return {
      tier,
      stored: r.stored,
      timing,
      ...(o.kept ? {} : { kept: false as const }),
      // The loader queued the session's install right after the outcome.
      installing: new Set([o.session]),
    };
  }

  #enqueue(entry: InFlight, ref: ChunkRef, priority: Priority): void {
    entry.key = chunkKey(ref.hash, ref.codec);
    const queue = priority === 'demand' ? this.#demand : this.#prefetch;
    void queue.add(async () => {
      if (!entry.start()) return; // the other task got there first
      try {
        const r = await this.#fetchOnce(ref, entry);
        if (r.kept !== false) this.#o.onResident?.(ref.chunk);
        const sus = this.#o.suspects;
        if (sus?.crashes.delete(ref.chunk)) sus.onCleared(ref.chunk);
        for (const c of entry.extra) if (this.#copySlot(ref.chunk, c)) this.#o.onResident?.(c);
        entry.settle(r);
      } catch (e) {
        entry.settle(undefined, e);
      }
    });
  }

  async #fetchOnce(ref: ChunkRef, entry: InFlight): Promise<Result> {
    const t0 = performance.now();
    const errors = entry.errors;
    const counts = { misses: 0 };
    const timing: FetchTiming = {
      queuedAt: entry.queuedAt,
      startedAt: t0,
      endedAt: t0,
      attempts: 0,
      hedge: 'none',
      hedges: 0,
      loader: newLoadTiming(),
    };
    const done = (tier: FetchEvent['tier'], bytes: number) => {
      timing.endedAt = performance.now();
      this.#o.onFetch?.({
        hash: ref.hash,
        chunk: ref.chunk,
        tier,
        bytes,
        ms: timing.endedAt - t0,
        priority: entry.priority,
        errors: trimmed(errors),
        misses: counts.misses,
        timing,
      });
    };
    // Being loaded by a loader thread for another session's fault (the direct path, which this fetcher's
    // in-flight dedup does not see): waited for, not fetched a second time. Bounded: a load stuck for
    // longer is left to the busy rule below.
    for (let i = 0; i < FILLING_WAIT_MS && this.#o.table.filling(ref.chunk); i++) await sleep(1);
    if (this.#o.table.state(ref.chunk) === 'resident') return { tier: 'memory', stored: 0 };
    const sus = this.#o.suspects;
    const crashes = sus?.crashes.get(ref.chunk) ?? 0;
    if (sus && crashes >= sus.limit) {
      errors.push(
        `chunk ${ref.chunk} was being decoded each of the ${crashes} times a worker process died: not loaded again`,
      );
      done('failed', 0);
      throw new FetchError(chunkKey(ref.hash, ref.codec), trimmed(errors));
    }
    // Asked once: whichever tier answers, this is one more load of the chunk. Only for a demand whose
    // faults the loader installs itself (installTo): the chunk is in their sessions before its stage can
    // be let go of. A prefetch, a read-ahead or a warm-up makes a chunk resident for later: kept.
    const keep =
      entry.priority !== 'demand' || entry.installTo.size === 0 || (this.#o.keep?.(ref.chunk) ?? true);
    if (this.#o.cache) timing.attempts++;
    // Taken before the read: the set only grows, so every session named here is in the load's job (one
    // that joins meanwhile may be too, and then installs a second time, which is harmless).
    const toInstall = entry.installTo.size > 0 ? new Set(entry.installTo) : undefined;
    if (
      await this.#o.cache
        ?.read(ref.chunk, ref.hash, ref.length, entry.priority, timing.loader, entry.installTo, keep)
        .catch(() => false)
    ) {
      done('disk', ref.length);
      return {
        tier: 'disk',
        stored: ref.length,
        timing,
        ...(keep ? {} : { kept: false as const }),
        ...(toInstall ? { installing: toInstall } : {}),
      };
    }
    const key = chunkKey(ref.hash, ref.codec);
    for (let pass = 0; ; pass++) {
      const r = await this.#pass(key, ref, entry, errors, counts, entry.retryUntil || Infinity, timing, keep);
      if (typeof r !== 'boolean') {
        if (r.tier === 'memory') return r; // resident through another thread's load: no fetch to report
        r.timing = timing;
        done(r.tier, r.stored);
        this.#sizing.observe(performance.now() - t0, r.stored);
        this.#prefetch.concurrency = this.#sizing.concurrency;
        return r;
      }
      const wait = Math.min(PASS_BACKOFF_CAP_MS, PASS_BACKOFF_MS * 2 ** pass);
      if (!r || performance.now() + wait >= entry.retryUntil) break;
      await sleep(wait);
    }
    done('failed', 0);
    throw new FetchError(key, trimmed(errors));
  }

  /**
   * Loads one object into the chunk's slot through the loader threads: a local store's file is read
   * there, another origin's body is fetched here and handed over. Loader failures become the store
   * errors the passes classify (absent, lying, or an I/O error).
   */
  async #load(
    ref: ChunkRef,
    key: string,
    entry: InFlight,
    maxBytes: number,
    localPath: string | undefined,
    body: () => Promise<Buffer>,
    timing: LoadTiming,
    admit: boolean,
  ): Promise<number> {
    const job = {
      table: this.#tableId,
      chunk: ref.chunk,
      key,
      hash: ref.hash,
      codec: ref.codec,
      length: ref.length,
      maxBytes,
      priority: entry.priority,
      timing,
      ...(admit ? {} : { admit }),
      // A chunk in flight when a worker died is decoded alone, so that another death names it alone.
      ...(this.#o.suspects?.crashes.has(ref.chunk) ? { exclusive: true } : {}),
    };
    // Sessions to install for, read as the job is handed over (after the body arrived): every demand
    // that joined the fetch so far.
    const targets = () => (entry.installTo.size > 0 ? { installTo: [...entry.installTo] } : {});
    for (let busy = 0; ; busy++) {
      try {
        let named: { installTo?: number[] } = {};
        const stored = localPath
          ? await this.#o.loader.load({ ...job, from: 'file', path: localPath, ...(named = targets()) })
          : await this.#o.loader.load({ ...job, from: 'bytes', bytes: await body(), ...(named = targets()) });
        if (named.installTo) entry.loaderInstalls = new Set(named.installTo);
        return stored;
      } catch (e) {
        if (!(e instanceof LoadError)) throw e;
        if (e.failure === 'not-found') throw new NotFoundError(localPath ?? key, key, e);
        if (e.failure === 'integrity') {
          const { reason = e.message, expected, actual } = e.integrity ?? {};
          throw new IntegrityError(key, reason, { expected, actual, cause: e });
        }
        if (e.failure === 'busy') {
          // Someone else made it resident, or a cache write still holds its evicted slot: wait a little.
          if (this.#o.table.state(ref.chunk) === 'resident') return 0;
          if (busy < 100) {
            await sleep(1);
            continue;
          }
        }
        throw new StoreError(localPath ?? key, key, e.message, { cause: e, retryable: e.failure === 'io' });
      }
    }
  }

  /** Another slot with the same content: copied from the one just filled (pinned while copied). */
  #copySlot(from: number, to: number): boolean {
    const t = this.#o.table;
    const bytes = t.pin(from);
    if (!bytes) return false;
    try {
      if (!t.reserve(to)) return false;
      t.slot(to).set(bytes);
      t.commit(to, true);
      return true;
    } finally {
      t.unpin(from, bytes);
    }
  }

  /**
   * An object from remote origin n, hedged for a demand (runtime/hedge.ts): not answered by the p95 of
   * origin n's recent answers (or not all there by the p95 of its recent bodies), a second request goes
   * to the next remote origin (or n again), and a late hedge gets one more; the first body wins, the
   * others are aborted. Which origin answered comes back with the body (the tier the fetch reports).
   */
  async #get(
    n: number,
    key: string,
    timeoutMs: number,
    maxBytes: number,
    demand: boolean,
    timing: FetchTiming,
  ): Promise<{ body: Buffer; origin: number }> {
    const origins = this.#o.origins;
    let alt = n + 1;
    while (alt < origins.length && origins[alt]!.localPath) alt++;
    const target = alt < origins.length ? alt : n;
    const bodyMs = demand && this.#o.hedge ? this.#latency[n]!.hedgeAfterMs() : undefined;
    const after = bodyMs === undefined ? undefined : { bodyMs, answerMs: this.#answers[n]!.hedgeAfterMs() };
    const { value, hedge, hedges } = await hedged(async (signal, i, answered) => {
      const o = i === 0 ? n : target;
      const t0 = performance.now();
      const body = await origins[o]!.get(key, {
        signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
        maxBytes,
        onAnswer: () => {
          this.#answers[o]!.record(performance.now() - t0);
          answered();
        },
      });
      this.#latency[o]!.record(performance.now() - t0);
      return { body, origin: o };
    }, after);
    if (hedge !== 'none') {
      this.#o.onHedge?.(hedge);
      timing.hedge = hedge;
      timing.attempts += hedges;
      timing.hedges += hedges;
    }
    return value;
  }

  /**
   * One pass over the origins: the verified chunk, or whether some origin failed transiently (so a
   * later pass may succeed) rather than lacking the chunk or lying about it.
   */
  async #pass(
    key: string,
    ref: ChunkRef,
    entry: InFlight,
    errors: string[],
    counts: { misses: number },
    deadline: number,
    timing: FetchTiming,
    keep: boolean,
  ): Promise<Result | boolean> {
    let transient = false;
    const { priority } = entry;
    const maxBytes = maxStoredSize(ref.codec, ref.length, this.#o.encrypted);
    for (const [n, origin] of this.#o.origins.entries()) {
      for (let attempt = 0; ; attempt++) {
        // A waiter's deadline also bounds each attempt, so the fetch ends with its own account of
        // what failed rather than being cut off mid-attempt by the waiter's timeout.
        const left = deadline - performance.now();
        if (left <= 0) return true;
        const timeoutMs = Math.max(1, Math.min(this.#o.attemptTimeoutMs, Math.floor(left)));
        try {
          const local = origin.localPath?.(key);
          // Only a local file is cheap to read again: a host cache to fill is written from it (WriteSource),
          // not from a copy held in memory until the writer's turn. Not an encrypted one's (the writer
          // has no cipher): kept, and written from the table.
          // Written by the loader thread from its stage instead, between loads, the cache entries delayed
          // the next loads: a cold fill took 1.5-2x the restore without it.
          const source: WriteSource | undefined =
            local !== undefined && !this.#o.encrypted
              ? { path: local, key, codec: ref.codec, hash: ref.hash, maxBytes }
              : undefined;
          const admit = keep || local === undefined || (this.#o.cache !== undefined && !source);
          let answered = n;
          timing.attempts++;
          const stored = await this.#load(
            ref,
            key,
            entry,
            maxBytes,
            local,
            async () => {
              const r = await this.#get(n, key, timeoutMs, maxBytes, priority === 'demand', timing);
              answered = r.origin;
              return r.body;
            },
            timing.loader,
            admit,
          );
          // A local file not read after all: another thread's load made the chunk resident meanwhile (a
          // loader serving a fault directly). Nothing was fetched; an origin's body was, and counts.
          if (stored === 0 && local !== undefined) return { tier: 'memory', stored: 0 };
          void this.#o.cache?.write(ref.chunk, ref.hash, ref.length, source).catch(() => {});
          return {
            tier: `origin${answered}`,
            stored,
            ...(admit ? {} : { kept: false as const }),
            ...(entry.loaderInstalls ? { installing: entry.loaderInstalls } : {}),
          };
        } catch (e) {
          const timedOut = (e as Error).name === 'TimeoutError';
          const msg = timedOut ? `no answer within ${timeoutMs} ms` : (e as Error).message;
          errors.push(msg.startsWith(origin.url) ? msg : `${origin.url}: ${msg}`); // store errors often name their URL already
          if (e instanceof NotFoundError) counts.misses++;
          const retryable = timedOut || (e instanceof StoreError && e.retryable);
          if (!retryable || e instanceof NotFoundError || e instanceof IntegrityError) break;
          // An origin that did not answer in a whole attempt timeout is asked again in the next pass,
          // after the others: retrying it at once would spend the fault's patience on one silent origin
          // while a healthy one behind it was never asked.
          if (timedOut || attempt >= this.#o.retries) {
            transient = true;
            break;
          }
          await sleep(
            Math.min(
              this.#o.backoffMs * 2 ** attempt * (0.5 + Math.random()),
              Math.max(0, deadline - performance.now()),
            ),
          );
        }
      }
    }
    return transient;
  }
}

/** At most MAX_ERROR_LINES attempt lines: a long outage retried for seconds must not flood a log line. */
function trimmed(errors: string[]): string[] {
  if (errors.length <= MAX_ERROR_LINES) return errors;
  const head = errors.slice(0, MAX_ERROR_LINES / 2);
  const tail = errors.slice(-MAX_ERROR_LINES / 2 + 1);
  return [...head, `... ${errors.length - head.length - tail.length} more failed attempts ...`, ...tail];
}
