/**
 * The host disk tier of the fetch pipeline (memory → host disk cache → origins): verified,
 * uncompressed chunk bytes at <dir>/<2 hex>/<hash>, shared by every restore session of a `serve`
 * process and by every `serve` process on the host.
 *
 * Reads run on the chunk loader threads, writes on their writer thread (runtime/chunk-loader.ts),
 * straight between the file and the native table: a hit is one open and one read into a stage of the
 * table (or the chunk's slot), checked there
 * (length, BLAKE3 or an encrypted snapshot's keyed id), with no copy and no work on the event loop.
 * A write is one background job of the writer thread (in SCHED_IDLE: it runs on CPUs nothing else
 * wants), taken once loads are idle, from the chunk's slot, or decoded again from a local store's object
 * (so that such a chunk need not be held in memory until then), and dropped when the backlog is full or
 * the chunk left memory first with no object to decode: filling the cache never delays an install, and
 * its syscalls never run on the event loop.
 *
 * The filesystem is the source of truth, so processes share the directory without a lock. Writes
 * are temp file + rename, so readers see a whole entry or none, and two writers of one hash rename
 * identical bytes (content addressing makes last-writer-wins harmless). No fsync: a torn entry
 * left by a crash fails verification on its first read and is deleted: corrupt bytes cost one origin
 * fetch, never reach guest memory. Recency is the mtime, recorded for hits in batches (every
 * touchIntervalMs and at close), so the LRU order open() rebuilds reflects every process's reads.
 *
 * Caveat (budget): each process evicts only from its own index (what it wrote, read, or found at
 * open), so `budgetBytes` bounds one process's view, not the directory. Processes serving the same
 * snapshots count mostly the same files and overshoot until their next write evicts; N processes
 * with disjoint working sets can hold up to N × budget until a restart's open() rescans. Sizes are
 * file sizes, not allocated blocks.
 *
 * A cache is an optimization: write failures (ENOSPC, EACCES, EROFS, ...) are counted, kept in
 * `lastWriteError` and told to `onProblem` for the runtime to log, never thrown; a failed read is
 * a miss (one that fails verification is told too: a failing disk or a foreign write). Only caller bugs
 * throw: a bad hash or length (InvalidArgumentError).
 * Entries are guest memory (keys, tokens): the directory is created 0700, entries are 0600.
 * Entries of encrypted snapshots are plaintext too (the host that restores holds the key anyway),
 * named by the snapshot's keyed chunk id and verified with it.
 */
import assert from 'node:assert';
import { existsSync } from 'node:fs';
import { readdir, stat, unlink, utimes } from 'node:fs/promises';
import path from 'node:path';

import { makeDirs } from '../core/make-dirs.js';
import { InvalidArgumentError } from '../core/errors.js';
import { assertHash, cacheEntryKey } from '../store/keys.js';
import { LoadError, type ChunkLoader, type LoadTiming, type WriteSource } from './chunk-loader.js';
import {
  resolveDiskCacheOptions,
  type DiskCacheOptions,
  type DiskCacheProblem,
} from './disk-cache-options.js';

export {
  resolveDiskCacheOptions,
  type DiskCacheOptions,
  type DiskCacheProblem,
  type ResolvedDiskCacheOptions,
} from './disk-cache-options.js';

export interface DiskCacheStats {
  /** Entries and bytes in this process's index (see the budget caveat above). */
  entries: number;
  bytes: number;
  /** misses: every read that found nothing usable; corrupt: those that failed verification (deleted). */
  hits: number;
  misses: number;
  corrupt: number;
  evictions: number;
  writeErrors: number;
  /** Entries this process wrote. */
  writes: number;
  /** Writes not done because the loaders were busy (backlog full) or the chunk left memory first. */
  writesDropped: number;
}

/** The same mark FileStore uses: `<hash>.tmp-<pid>-<random>`. */
const TEMP_MARK = '.tmp-';
const ENTRY = /^[0-9a-f]{64}$/;
const FANOUT = /^[0-9a-f]{2}$/;
/** A temp file this old is an interrupted write whatever its pid says: writing a chunk takes ms. */
export const STALE_TEMP_MS = 60_000;

export class DiskCache {
  /** hash → file size, least recently used first: a Map keeps insertion order, a hit re-inserts. */
  readonly #index = new Map<string, number>();
  /** In-flight writes by hash, so concurrent writes of one chunk write it once. */
  readonly #writes = new Map<string, Promise<void>>();
  /** Hits whose mtime is still to be recorded. */
  readonly #touched = new Set<string>();
  #touchTimer: NodeJS.Timeout | undefined;
  #bytes = 0;
  readonly #n = { hits: 0, misses: 0, corrupt: 0, evictions: 0, writeErrors: 0, writes: 0, writesDropped: 0 };
  #lastWriteError: unknown;
  #closed = false;
  readonly #onProblem: ((p: DiskCacheProblem) => void) | undefined;
  readonly #loader: ChunkLoader;
  readonly #touchMs: number;

  private constructor(
    readonly dir: string,
    readonly budgetBytes: number,
    loader: ChunkLoader,
    touchMs: number,
    onProblem?: (p: DiskCacheProblem) => void,
  ) {
    this.#loader = loader;
    this.#touchMs = touchMs;
    this.#onProblem = onProblem;
  }

  /**
   * Scans the directory once: entries enter the index oldest mtime first, stale temp files are
   * removed, and the least recently used entries are evicted down to the budget. Unlike put, a
   * directory that cannot be created or read throws (a bad --cache-dir is the operator's to see);
   * the runtime may then run without a disk tier.
   */
  static async open(options: DiskCacheOptions, signal?: AbortSignal): Promise<DiskCache> {
    signal?.throwIfAborted();
    const { dir, budgetBytes, loader, touchIntervalMs, onProblem } = resolveDiskCacheOptions(options);
    const cache = new DiskCache(dir, budgetBytes, loader, touchIntervalMs, onProblem);
    await makeDirs(cache.dir, 0o700);
    await cache.#scan(signal);
    await cache.#evict();
    await loader.startWriter();
    return cache;
  }

  /**
   * Reads chunk `hash` (`length` bytes, from the manifest) from its entry straight into slot `chunk` of
   * the loaders' table, verified there. True when the chunk is now resident from the cache; false on a
   * miss (no entry, an unreadable one, or one that failed verification, which is deleted and reported).
   */
  async read(
    chunk: number,
    hash: string,
    length: number,
    priority: 'demand' | 'prefetch' = 'demand',
    timing?: LoadTiming,
    /** Sessions whose faults wait for the chunk: the loader installs it there once verified (LoadJob.installTo). */
    installTo?: ReadonlySet<number>,
    /** Whether the chunk is kept in memory once served (LoadJob.admit). @default true */
    admit = true,
  ): Promise<boolean> {
    assertHash(hash);
    if (!Number.isSafeInteger(length) || length < 0)
      throw new InvalidArgumentError('length', 'a non-negative integer', length);
    assert(!this.#closed, 'DiskCache used after close()');
    const file = this.#path(hash);
    // A miss costs one stat here, not a trip through a loader thread and back (a cold restore with a
    // cache misses on every chunk). Entries other processes wrote since open() are found all the same.
    if (!this.#index.has(hash) && !existsSync(file)) return this.#miss(hash);
    let size: number;
    try {
      size = await this.#loader.load({
        table: this.#loader.tableId,
        chunk,
        key: cacheEntryKey(hash),
        hash,
        codec: 'none',
        length,
        from: 'raw',
        path: file,
        maxBytes: length,
        priority,
        ...(timing ? { timing } : {}),
        ...(installTo && installTo.size > 0 ? { installTo: [...installTo] } : {}),
        ...(admit ? {} : { admit }),
      });
    } catch (e) {
      if (e instanceof LoadError && e.failure === 'integrity') {
        this.#n.corrupt++;
        this.#onProblem?.({ kind: 'corrupt', hash, path: file });
        await unlink(file).catch(() => {}); // ENOENT: another process was first; EROFS: it stays a miss
      }
      // not-found (never cached, or evicted by any process), io (EIO: not proof of corruption, so the
      // file stays), busy: a miss.
      return this.#miss(hash);
    }
    await this.accountRead(hash, size);
    return true;
  }

  /**
   * A read of chunk `hash`'s entry a loader thread made on its own (the direct path, ChunkLoader.direct):
   * a hit of `size` bytes, or a miss (undefined), accounted as read() accounts its own. An entry that
   * failed verification is not reported here: the fetcher reads it again through read(), which deletes it.
   */
  async accountRead(hash: string, size?: number): Promise<void> {
    if (size === undefined) {
      this.#miss(hash);
      return;
    }
    this.#n.hits++;
    const adopted = !this.#index.has(hash);
    this.#record(hash, size);
    this.#touchLater(hash);
    if (adopted) await this.#evict(); // another process wrote it: now it counts against our budget
  }

  /**
   * Caches chunk `chunk` (`hash`, `length` bytes) if it is not on disk already, on the writer thread once
   * loads are idle: from its slot if it is resident then, else decoded again from `source` (a local store's
   * object). Resolves once written, skipped, dropped or failed; it throws only for an invalid hash.
   */
  async write(chunk: number, hash: string, length: number, source?: WriteSource): Promise<void> {
    assertHash(hash);
    if (this.#closed) return;
    // Larger than the whole budget: it would evict everything, then itself.
    if (length > this.budgetBytes || this.#index.has(hash)) return;
    let pending = this.#writes.get(hash);
    if (!pending) {
      pending = this.#write(chunk, hash, length, source).finally(() => this.#writes.delete(hash));
      this.#writes.set(hash, pending);
    }
    return pending;
  }

  stats(): DiskCacheStats {
    return { entries: this.#index.size, bytes: this.#bytes, ...this.#n };
  }

  /** The most recent write failure (a Node system error: `code`, `path`), for the runtime to log. */
  get lastWriteError(): unknown {
    return this.#lastWriteError;
  }

  /** Waits for in-flight writes and records pending mtimes. Entries stay on disk for the next process. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#touchTimer);
    await Promise.allSettled([...this.#writes.values()]);
    await this.#flushTouches();
  }

  #touchLater(hash: string): void {
    this.#touched.add(hash);
    this.#touchTimer ??= setTimeout(() => {
      this.#touchTimer = undefined;
      void this.#flushTouches();
    }, this.#touchMs).unref();
  }

  /** Best effort (EROFS, EPERM): other processes' LRU and the next open() see these reads. */
  async #flushTouches(): Promise<void> {
    const now = new Date();
    const batch = [...this.#touched];
    this.#touched.clear();
    await Promise.all(batch.map((h) => utimes(this.#path(h), now, now).catch(() => {})));
  }

  #path(hash: string): string {
    return `${this.dir}/${cacheEntryKey(hash)}`;
  }

  #miss(hash: string): false {
    this.#forget(hash);
    this.#n.misses++;
    return false;
  }

  #forget(hash: string): void {
    const size = this.#index.get(hash);
    if (size === undefined) return;
    this.#index.delete(hash);
    this.#bytes -= size;
  }

  /** Makes `hash` the most recently used entry, at `size` bytes. */
  #record(hash: string, size: number): void {
    this.#forget(hash);
    this.#index.set(hash, size);
    this.#bytes += size;
  }

  async #write(chunk: number, hash: string, length: number, source?: WriteSource): Promise<void> {
    // Everything from here, the check for a file already there included, runs on the writer thread.
    let r: 'written' | 'exists' | 'dropped';
    try {
      r = await this.#loader.write(chunk, this.#path(hash), `${TEMP_MARK}${process.pid}-`, length, source);
    } catch (e) {
      this.#n.writeErrors++;
      this.#lastWriteError = e;
      this.#onProblem?.({ kind: 'write-failed', hash, error: e });
      return;
    }
    if (r === 'dropped') {
      this.#n.writesDropped++;
      return;
    }
    if (r === 'written') this.#n.writes++;
    if (!this.#index.has(hash)) this.#record(hash, length);
    await this.#evict();
  }

  /**
   * Least recently used first, until the index fits. Victims leave the index before any await, so
   * concurrent calls never pick the same one. Unlink errors are ignored: ENOENT means another
   * process was first; others leave the file outside the index, for a later get to adopt again.
   */
  async #evict(): Promise<void> {
    const victims: string[] = [];
    for (const [hash, size] of this.#index) {
      if (this.#bytes <= this.budgetBytes) break;
      this.#index.delete(hash);
      this.#bytes -= size;
      this.#n.evictions++;
      victims.push(hash);
    }
    await Promise.all(victims.map((h) => unlink(this.#path(h)).catch(() => {})));
  }

  async #scan(signal?: AbortSignal): Promise<void> {
    const found: { hash: string; size: number; mtimeMs: number }[] = [];
    const now = Date.now();
    for (const sub of await readdir(this.dir)) {
      signal?.throwIfAborted();
      if (!FANOUT.test(sub)) continue; // not ours: left alone
      // [] for a file where a fan-out directory belongs, or one removed meanwhile.
      const names = await readdir(path.join(this.dir, sub)).catch((): string[] => []);
      // One directory at a time bounds the stats in flight (~1/256 of the cache).
      await Promise.all(
        names.map(async (name) => {
          const file = path.join(this.dir, sub, name);
          const st = await stat(file).catch(() => undefined);
          if (!st?.isFile()) return;
          if (ENTRY.test(name) && name.startsWith(sub))
            found.push({ hash: name, size: st.size, mtimeMs: st.mtimeMs });
          else if (name.includes(TEMP_MARK) && isStaleTemp(name, st.mtimeMs, now))
            await unlink(file).catch(() => {});
        }),
      );
    }
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    for (const e of found) this.#record(e.hash, e.size);
  }
}

/**
 * A temp file is an interrupted write if it is old, or if the pid in its name is gone (so a serve
 * restarted right after a crash clears its predecessor's temps at once). A writer in another pid
 * namespace looks dead here: removing its temp makes its rename fail, one counted write error.
 */
function isStaleTemp(name: string, mtimeMs: number, now: number): boolean {
  if (now - mtimeMs > STALE_TEMP_MS) return true;
  const pid = Number(/\.tmp-(\d+)-/.exec(name)?.[1]);
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH'; // EPERM: alive, someone else's
  }
}
