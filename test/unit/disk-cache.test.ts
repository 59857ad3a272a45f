/**
 * The host disk tier against a real directory, a real native table and real loader threads: entries are
 * read straight into a chunk's slot (checked there) and written from it (runtime/disk-cache.ts).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { InvalidArgumentError } from '../../core/errors.js';
import { ChunkTable } from '../../native/index.js';
import { ChunkLoader } from '../../runtime/chunk-loader.js';
import {
  DiskCache,
  STALE_TEMP_MS,
  resolveDiskCacheOptions,
  type DiskCacheOptions,
  type DiskCacheProblem,
} from '../../runtime/disk-cache.js';
import { encodeChunk, hashChunk, maxStoredSize } from '../../store/chunk.js';
import { tempDir } from '../helpers/images.js';

/** Chunk size of the test table: every chunk is one slot of it. */
let S = 4096;
interface Chunk {
  hash: string;
  bytes: Buffer;
  slot: number;
}

let tmp: ReturnType<typeof tempDir>;
let dir: string;
let table: ChunkTable;
let loader: ChunkLoader;
let nextSlot = 0;
const caches: DiskCache[] = [];

async function setup(chunkSize: number): Promise<void> {
  S = chunkSize;
  table = new ChunkTable(64 * S, S);
  loader = await ChunkLoader.start({ table, workers: 1 });
  nextSlot = 0;
}
beforeEach(async () => {
  tmp = tempDir('lazysnap-disk-cache-');
  dir = path.join(tmp.dir, 'cache');
  await setup(4096);
});
afterEach(async () => {
  for (const c of caches.splice(0)) await c.close();
  await loader.close();
  tmp.cleanup();
});

const open = async (o: Omit<DiskCacheOptions, 'loader'>, signal?: AbortSignal) => {
  const c = await DiskCache.open({ loader, ...o }, signal);
  caches.push(c);
  return c;
};
/** Random bytes in a slot of their own. */
const chunk = (): Chunk => {
  const bytes = randomBytes(S);
  return { hash: hashChunk(bytes), bytes, slot: nextSlot++ };
};
/** A chunk whose hash does not start with `prefix` (the fan-out directory). */
const chunkOutside = (prefix: string): Chunk => {
  for (;;) {
    const c = chunk();
    if (!c.hash.startsWith(prefix)) return c;
  }
};
const entryPath = (hash: string) => path.join(dir, hash.slice(0, 2), hash);
/** Makes the chunk resident (as a fetch would), then caches it from its slot. */
const put = async (cache: DiskCache, ...chunks: Chunk[]) => {
  for (const c of chunks) {
    if (table.reserve(c.slot)) {
      table.slot(c.slot).set(c.bytes);
      table.commit(c.slot, true);
    }
    await cache.write(c.slot, c.hash, S);
  }
};
/** Reads the chunk from the cache into its slot (evicted first, so the bytes can only come from disk). */
const get = async (cache: DiskCache, c: Chunk): Promise<Buffer | undefined> => {
  table.evict(c.slot);
  if (!(await cache.read(c.slot, c.hash, S))) return undefined;
  // Not slot(): the loader may not have copied the chunk from its stage to its slot yet.
  const bytes = table.read(c.slot);
  if (!bytes) throw new Error(`chunk ${c.slot} is not resident after a cache hit`);
  return bytes;
};

describe('DiskCache', () => {
  it('round trips verified bytes under <2 hex>/<hash>, private to the owner', async () => {
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    expect(await get(cache, a)).toBeUndefined();
    await put(cache, a);
    expect(readFileSync(entryPath(a.hash))).toEqual(a.bytes);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(entryPath(a.hash)).mode & 0o777).toBe(0o600);
    utimesSync(entryPath(a.hash), 1_000, 1_000);
    expect(await get(cache, a)).toEqual(a.bytes);
    expect(cache.stats()).toEqual({
      entries: 1,
      bytes: S,
      hits: 1,
      misses: 1,
      corrupt: 0,
      evictions: 0,
      writeErrors: 0,
      writes: 1,
      writesDropped: 0,
    });
    await cache.close();
    // A hit is recorded as the entry's mtime (batched; close() records what is pending): the recency
    // other processes and the next open() see.
    expect(statSync(entryPath(a.hash)).mtimeMs).toBeGreaterThan(Date.now() - 60_000);
    await expect(cache.read(a.slot, a.hash, S)).rejects.toThrow(/after close/);
    expect(existsSync(entryPath(a.hash))).toBe(true); // entries outlive the process
  });

  it('writes on a thread of its own in SCHED_IDLE, started with the cache, never on a loader thread', async () => {
    expect(loader.writerThread).toBeUndefined(); // loads alone need no writer
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    expect(await get(cache, a)).toBeUndefined();
    await put(cache, a);
    expect(readFileSync(entryPath(a.hash))).toEqual(a.bytes);
    expect(loader.writerThread).toMatchObject({ priority: 'idle' });
    // The kernel's view of that thread: field 41 of /proc/<pid>/task/<tid>/stat is its policy
    // (SCHED_IDLE = 5); the loader threads keep SCHED_OTHER (0).
    const policy = (tid: number) => {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[41 - 3]);
    };
    expect(policy(loader.writerThread!.tid!)).toBe(5);
    const others = readdirSync('/proc/self/task')
      .map(Number)
      .filter((t) => t !== loader.writerThread!.tid);
    expect(others.map(policy).filter((p) => p !== 0)).toEqual([]);
  });

  it('writes an entry once: a second write and concurrent writes of one hash write nothing more', async () => {
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    await put(cache, a);
    await Promise.all([cache.write(a.slot, a.hash, S), cache.write(a.slot, a.hash, S)]);
    expect(cache.stats().writes).toBe(1);
    const before = statSync(entryPath(a.hash));
    await cache.write(a.slot, a.hash, S);
    expect(cache.stats().writes).toBe(1);
    expect(statSync(entryPath(a.hash)).ino).toBe(before.ino);
    expect(readdirSync(path.join(dir, a.hash.slice(0, 2)))).toEqual([a.hash]); // no temp left behind
    expect(cache.stats()).toMatchObject({ entries: 1, bytes: S });
  });

  it('drops a write whose chunk left memory before a loader got to it, and writes nothing', async () => {
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    await cache.write(a.slot, a.hash, S); // never resident
    expect(cache.stats()).toMatchObject({ writes: 0, writesDropped: 1, entries: 0 });
    expect(existsSync(entryPath(a.hash))).toBe(false);
  });

  it('writes a chunk not in memory from its local object, decoded and verified again; a wrong object writes nothing', async () => {
    const problems: DiskCacheProblem[] = [];
    const cache = await open({ dir, budgetBytes: 1 << 20, onProblem: (p) => problems.push(p) });
    const [a, b, c] = [chunk(), chunk(), chunk()];
    const objects = path.join(tmp.dir, 'objects');
    mkdirSync(objects);
    const source = (x: Chunk, bytes = x.bytes) => {
      const file = path.join(objects, `${x.hash}.zstd`);
      writeFileSync(file, encodeChunk('zstd', bytes));
      const key = `chunks/${x.hash}.zstd`;
      return {
        path: file,
        key,
        codec: 'zstd' as const,
        hash: x.hash,
        maxBytes: maxStoredSize('zstd', S, false),
      };
    };
    // None of them resident: the bytes can only come from the object.
    await cache.write(a.slot, a.hash, S, source(a));
    expect(readFileSync(entryPath(a.hash))).toEqual(a.bytes);
    // An object that decodes to other bytes (b's object holds c's): an error, reported; nothing written.
    await cache.write(b.slot, b.hash, S, source(b, c.bytes));
    expect(existsSync(entryPath(b.hash))).toBe(false);
    expect(problems.map((p) => p.kind)).toEqual(['write-failed']);
    // An object gone since its load: dropped, as a chunk evicted before its turn.
    const gone = { ...source(c), path: path.join(objects, 'missing') };
    await cache.write(c.slot, c.hash, S, gone);
    expect(existsSync(entryPath(c.hash))).toBe(false);
    expect(cache.stats()).toMatchObject({ writes: 1, writeErrors: 1, writesDropped: 1, entries: 1 });
    expect(readdirSync(dir, { recursive: true }).filter((f) => String(f).includes('.tmp'))).toEqual([]);
  });

  it('evicts the least recently used entries to stay under budget; a recent read survives', async () => {
    const cache = await open({ dir, budgetBytes: 3 * S });
    const [a, b, c, d] = [chunk(), chunk(), chunk(), chunk()] as [Chunk, Chunk, Chunk, Chunk];
    await put(cache, a, b, c);
    expect(await get(cache, a)).toEqual(a.bytes); // a is now the most recent
    await put(cache, d);
    expect(existsSync(entryPath(b.hash))).toBe(false);
    for (const kept of [a, c, d]) expect(existsSync(entryPath(kept.hash))).toBe(true);
    expect(cache.stats()).toMatchObject({ entries: 3, bytes: 3 * S, evictions: 1 });
    expect(await get(cache, b)).toBeUndefined();
    // A chunk larger than the whole budget is not written at all (it would evict everything).
    const tiny = await open({ dir: path.join(tmp.dir, 'tiny'), budgetBytes: S - 1 });
    const e = chunk();
    await put(tiny, e);
    expect(tiny.stats()).toMatchObject({ entries: 0, writes: 0 });
  });

  it.each([
    [
      'a flipped byte',
      (f: string) => {
        const b = readFileSync(f);
        b[10]! ^= 1;
        writeFileSync(f, b);
      },
    ],
    ['truncation', (f: string) => truncateSync(f, 500)],
  ])('treats %s on disk as corrupt: a miss, counted, the file deleted', async (_name, damage) => {
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    await put(cache, a);
    damage(entryPath(a.hash));
    expect(await get(cache, a)).toBeUndefined();
    expect(table.state(a.slot)).toBe('absent'); // the bad bytes never became resident
    expect(existsSync(entryPath(a.hash))).toBe(false);
    expect(cache.stats()).toMatchObject({ entries: 0, bytes: 0, corrupt: 1, misses: 1, hits: 0 });
    await put(cache, a); // the caller refetched it from the origin
    expect(await get(cache, a)).toEqual(a.bytes);
  });

  it('rejects bad arguments, writing nothing', async () => {
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    await expect(cache.write(a.slot, '../etc/passwd', S)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(cache.read(a.slot, a.hash.toUpperCase(), S)).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
      argument: 'hash',
    });
    await expect(cache.read(a.slot, a.hash, -1)).rejects.toMatchObject({ argument: 'length' });
    await expect(open({ dir, budgetBytes: -1 })).rejects.toMatchObject({ argument: 'budgetBytes' });
    await expect(open({ dir: '', budgetBytes: 1 })).rejects.toMatchObject({ argument: 'dir' });
    expect(() => resolveDiskCacheOptions({ dir, budgetBytes: 1, loader: {} as never })).toThrow(
      InvalidArgumentError,
    );
    expect(readdirSync(dir)).toEqual([]);
  });

  it('survives an unwritable fan-out directory (ENOTDIR, real as root): write resolves, counts, reports, reads go on', async () => {
    const problems: DiskCacheProblem[] = [];
    const cache = await open({ dir, budgetBytes: 1 << 20, onProblem: (p) => problems.push(p) });
    const a = chunk();
    await put(cache, a);
    const b = chunkOutside(a.hash.slice(0, 2));
    writeFileSync(path.join(dir, b.hash.slice(0, 2)), 'a file where a directory belongs');
    await expect(put(cache, b)).resolves.toBeUndefined();
    expect(cache.stats()).toMatchObject({ writeErrors: 1, entries: 1 });
    expect(cache.lastWriteError).toMatchObject({ code: 'ENOTDIR' });
    expect(problems).toEqual([{ kind: 'write-failed', hash: b.hash, error: cache.lastWriteError }]);
    expect(await get(cache, a)).toEqual(a.bytes);
    expect(await get(cache, b)).toBeUndefined();
  });

  it('reports an entry that fails verification to onProblem, once, and deletes it', async () => {
    const problems: DiskCacheProblem[] = [];
    const cache = await open({ dir, budgetBytes: 1 << 20, onProblem: (p) => problems.push(p) });
    const a = chunk();
    await put(cache, a);
    const flipped = Buffer.from(a.bytes);
    flipped[500]! ^= 1;
    writeFileSync(entryPath(a.hash), flipped);
    expect(await get(cache, a)).toBeUndefined();
    expect(await get(cache, a)).toBeUndefined(); // gone now: a plain miss, not reported again
    expect(problems).toEqual([{ kind: 'corrupt', hash: a.hash, path: entryPath(a.hash) }]);
    expect(existsSync(entryPath(a.hash))).toBe(false);
    expect(() => resolveDiskCacheOptions({ dir, budgetBytes: 1, loader, onProblem: 'log' as never })).toThrow(
      InvalidArgumentError,
    );
  });

  it('sees entries another DiskCache on the same directory wrote, and notices what it evicted', async () => {
    const first = await open({ dir, budgetBytes: 1 << 20 });
    const second = await open({ dir, budgetBytes: S });
    const [a, b] = [chunk(), chunk()] as [Chunk, Chunk];
    await put(first, a, b);
    expect(await get(second, a)).toEqual(a.bytes); // found on disk, adopted into its index
    expect(second.stats()).toMatchObject({ entries: 1, hits: 1 });
    await put(second, b); // already on disk: adopted, nothing written, a evicted by budget
    expect(first.stats().writes + second.stats().writes).toBe(2);
    expect(second.stats()).toMatchObject({ entries: 1, bytes: S, evictions: 1 });
    expect(first.stats()).toMatchObject({ entries: 2 });
    expect(await get(first, a)).toBeUndefined(); // gone from disk: dropped from first's index
    expect(first.stats()).toMatchObject({ entries: 1, bytes: S, misses: 1, corrupt: 0 });
    const third = await open({ dir, budgetBytes: 1 << 20 });
    expect(third.stats()).toMatchObject({ entries: 1, bytes: S });
  });

  it('open() removes stale temp files, keeps live ones, and evicts oldest first down to the budget', async () => {
    const cache = await open({ dir, budgetBytes: 1 << 20 });
    const chunks = [chunk(), chunk(), chunk(), chunk()];
    await put(cache, ...chunks);
    await cache.close();
    // Recency is mtime: chunks[0] is the oldest. Set explicitly, a write's mtime is not ordered enough.
    chunks.forEach((c, i) => utimesSync(entryPath(c.hash), 1_000 + i, 1_000 + i));
    const sub = path.join(dir, chunks[0]!.hash.slice(0, 2));
    const deadPid = path.join(sub, `${chunks[0]!.hash}.tmp-999999-0a0b0c0d`); // no such pid (pid_max)
    const oldLive = path.join(sub, `${chunks[0]!.hash}.tmp-${process.pid}-01020304`);
    const freshLive = path.join(sub, `${chunks[0]!.hash}.tmp-${process.pid}-05060708`);
    for (const f of [deadPid, oldLive, freshLive]) writeFileSync(f, 'partial');
    const old = (Date.now() - STALE_TEMP_MS - 10_000) / 1000;
    utimesSync(oldLive, old, old);
    mkdirSync(path.join(dir, 'not-ours'));

    const reopened = await open({ dir, budgetBytes: 2 * S });
    expect([deadPid, oldLive, freshLive].map(existsSync)).toEqual([false, false, true]);
    expect(chunks.map((c) => existsSync(entryPath(c.hash)))).toEqual([false, false, true, true]);
    expect(reopened.stats()).toMatchObject({ entries: 2, bytes: 2 * S, evictions: 2 });
    expect(existsSync(path.join(dir, 'not-ours'))).toBe(true);
  });

  it('open() rejects with signal.reason when the signal is already aborted', async () => {
    const reason = new Error('restore cancelled');
    await expect(open({ dir, budgetBytes: 1 }, AbortSignal.abort(reason))).rejects.toBe(reason);
  });
});

/**
 * Real full and read-only filesystems need mount(2) (root with CAP_SYS_ADMIN, as in CI). chmod is
 * no test here: root writes through 0500.
 */
const mountSkip = (() => {
  try {
    const probe = tempDir('lazysnap-mount-probe-');
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe.dir], { stdio: 'pipe' });
      execFileSync('umount', [probe.dir]);
      return '';
    } finally {
      probe.cleanup();
    }
  } catch (e) {
    return `needs mount(2) (root with CAP_SYS_ADMIN): ${(e as Error).message.split('\n')[0]}`;
  }
})();
if (mountSkip)
  console.warn(`[lazysnap tests] skipping disk cache full/read-only filesystem tests: ${mountSkip}`);

describe.skipIf(mountSkip)(
  `DiskCache on a full or read-only filesystem${mountSkip ? ` [SKIPPED: ${mountSkip}]` : ''}`,
  () => {
    let mounted: string | undefined;
    afterEach(() => {
      if (mounted) execFileSync('umount', [mounted]);
      mounted = undefined;
    });

    it('keeps serving on a full tmpfs (ENOSPC): write resolves and counts, no temp file is left', async () => {
      await loader.close();
      await setup(32 * 1024);
      mkdirSync(dir);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48k,mode=0700', 'tmpfs', dir]);
      mounted = dir;
      const cache = await open({ dir, budgetBytes: 1 << 20 });
      const first = chunk();
      await put(cache, first);
      const second = chunkOutside(first.hash.slice(0, 2));
      await expect(put(cache, second)).resolves.toBeUndefined();
      expect(cache.stats()).toMatchObject({ writeErrors: 1, entries: 1 });
      expect(cache.lastWriteError).toMatchObject({ code: 'ENOSPC' });
      expect(readdirSync(path.join(dir, second.hash.slice(0, 2))).filter((n) => n.includes('.tmp-'))).toEqual(
        [],
      );
      expect(await get(cache, first)).toEqual(first.bytes);
    });

    it('keeps serving on a read-only filesystem (EROFS): existing entries still read, touch is best effort', async () => {
      const cache = await open({ dir, budgetBytes: 1 << 20 });
      const a = chunk();
      await put(cache, a);
      execFileSync('mount', ['--bind', dir, dir]);
      mounted = dir;
      execFileSync('mount', ['-o', 'remount,bind,ro', dir]);
      const b = chunk();
      await expect(put(cache, b)).resolves.toBeUndefined();
      expect(cache.lastWriteError).toMatchObject({ code: 'EROFS' });
      expect(await get(cache, a)).toEqual(a.bytes);
      expect(cache.stats()).toMatchObject({ writeErrors: 1, hits: 1, entries: 1 });
      await cache.close(); // the pending mtime fails with EROFS: best effort, no throw
    });
  },
);
