/**
 * Chunk fetching for restores: host disk cache, then each origin in the order given, first verified
 * answer wins. Every attempt has a timeout; retryable errors (5xx, timeouts, resets) are retried with
 * jittered exponential backoff on the same origin; a missing object, a non-retryable error or bytes
 * whose hash is wrong (an origin that lies) fall through to the next origin at once. Bytes are
 * verified (BLAKE3 of the decoded chunk) before anyone sees them. For an encrypted snapshot an
 * object that fails authentication is an integrity failure like any other: next origin, and in
 * the end fail closed.
 *
 * One fetch per chunk however many faults or sessions want it (in-flight dedup by hash). A p-queue
 * bounds concurrent fetches; demand faults run before prefetches, and a demand for a chunk already
 * queued as a prefetch promotes it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import PQueue from 'p-queue';

import { FetchError, IntegrityError, NotFoundError, StoreError } from '../core/errors.js';
import type { StoreBackend } from '../store/backend.js';
import { decodeChunk, type Codec } from '../store/chunk.js';
import type { ChunkCrypto } from '../store/chunk-crypto.js';
import { chunkKey } from '../store/keys.js';

/** The host disk tier (runtime/disk-cache.ts): verified, uncompressed bytes by hash. */
export interface ChunkCache {
  get(hash: string, length: number, signal?: AbortSignal): Promise<Buffer | undefined>;
  put(hash: string, bytes: Buffer, signal?: AbortSignal): Promise<void>;
}

export interface ChunkRef {
  hash: string;
  codec: Codec;
  length: number;
}

export type Priority = 'demand' | 'prefetch';
export type Tier = 'disk' | `origin${number}`;

export interface FetchEvent {
  hash: string;
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
}

export interface FetcherOptions {
  /** Origins in order: the first that delivers verified bytes wins. */
  origins: readonly StoreBackend[];
  cache?: ChunkCache;
  /** The snapshot's cipher when it is encrypted: objects are authenticated and decrypted, ids are keyed. */
  crypto?: ChunkCrypto;
  /** Per attempt. @default 5000 */
  attemptTimeoutMs?: number;
  /** Retries of a retryable error on the same origin. @default 2 */
  retries?: number;
  /** First backoff; doubles per retry, ± 50% jitter. @default 50 */
  backoffMs?: number;
  /** Fetches in flight at once (origin requests and cache reads). @default 16 */
  concurrency?: number;
  /** Called once per fetch that completes or fails (metrics, logs). */
  onFetch?: (e: FetchEvent) => void;
}

const PRIORITY: Record<Priority, number> = { demand: 10, prefetch: 0 };

export class ChunkFetcher {
  readonly #o: Required<Omit<FetcherOptions, 'cache' | 'crypto' | 'onFetch'>> & Pick<FetcherOptions, 'cache' | 'crypto' | 'onFetch'>;
  readonly #queue: PQueue;
  readonly #inflight = new Map<string, { promise: Promise<{ bytes: Buffer; tier: Tier }>; priority: Priority }>();

  constructor(options: FetcherOptions) {
    this.#o = { attemptTimeoutMs: 5000, retries: 2, backoffMs: 50, concurrency: 16, ...options };
    this.#queue = new PQueue({ concurrency: this.#o.concurrency });
  }

  /** Queued fetches not yet started, by priority (for tests and metrics). */
  pending(): { demand: number; prefetch: number } {
    return { demand: this.#queue.sizeBy({ priority: PRIORITY.demand }), prefetch: this.#queue.sizeBy({ priority: PRIORITY.prefetch }) };
  }

  /**
   * The verified bytes of a chunk and the tier that served them. Concurrent calls for one hash share
   * one fetch; the signal only detaches this caller, it never cancels a fetch others may wait for.
   */
  fetch(ref: ChunkRef, priority: Priority, signal?: AbortSignal): Promise<{ bytes: Buffer; tier: Tier }> {
    signal?.throwIfAborted();
    let entry = this.#inflight.get(ref.hash);
    if (entry && priority === 'demand' && entry.priority === 'prefetch') {
      entry.priority = 'demand';
      try {
        this.#queue.setPriority(ref.hash, PRIORITY.demand);
      } catch {
        // Already running: nothing to promote.
      }
    }
    if (!entry) {
      const promise = this.#queue
        .add(() => this.#fetchOnce(ref, priority), { priority: PRIORITY[priority], id: ref.hash })
        .finally(() => this.#inflight.delete(ref.hash)) as Promise<{ bytes: Buffer; tier: Tier }>;
      entry = { promise, priority };
      this.#inflight.set(ref.hash, entry);
    }
    if (!signal) return entry.promise;
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      entry.promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  async #fetchOnce(ref: ChunkRef, priority: Priority): Promise<{ bytes: Buffer; tier: Tier }> {
    const t0 = performance.now();
    const errors: string[] = [];
    let misses = 0;
    const done = (tier: FetchEvent['tier'], bytes: number) => this.#o.onFetch?.({ hash: ref.hash, tier, bytes, ms: performance.now() - t0, priority, errors, misses });
    const cached = await this.#o.cache?.get(ref.hash, ref.length).catch(() => undefined);
    if (cached) {
      done('disk', cached.length);
      return { bytes: cached, tier: 'disk' };
    }
    const key = chunkKey(ref.hash, ref.codec);
    for (const [n, origin] of this.#o.origins.entries()) {
      for (let attempt = 0; ; attempt++) {
        try {
          const stored = await origin.get(key, { signal: AbortSignal.timeout(this.#o.attemptTimeoutMs) });
          const bytes = decodeChunk(key, ref.codec, stored, ref.hash, ref.length, this.#o.crypto);
          void this.#o.cache?.put(ref.hash, bytes).catch(() => {});
          done(`origin${n}`, stored.length);
          return { bytes, tier: `origin${n}` };
        } catch (e) {
          const timedOut = (e as Error).name === 'TimeoutError';
          const msg = timedOut ? `no answer within ${this.#o.attemptTimeoutMs} ms` : (e as Error).message;
          errors.push(msg.startsWith(origin.url) ? msg : `${origin.url}: ${msg}`); // store errors often name their URL already
          if (e instanceof NotFoundError) misses++;
          const retryable = timedOut || (e instanceof StoreError && e.retryable);
          if (!retryable || e instanceof NotFoundError || e instanceof IntegrityError || attempt >= this.#o.retries) break;
          await sleep(this.#o.backoffMs * 2 ** attempt * (0.5 + Math.random()));
        }
      }
    }
    done('failed', 0);
    throw new FetchError(key, errors);
  }
}
