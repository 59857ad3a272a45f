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
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { IntegrityError, InvalidArgumentError } from '../../core/errors.js';
import {
  DiskCache,
  STALE_TEMP_MS,
  resolveDiskCacheOptions,
  type DiskCacheProblem,
} from '../../runtime/disk-cache.js';
import { hashChunk } from '../../store/chunk.js';
import { tempDir } from '../helpers/images.js';

// A pass-through spy on rename: every entry the cache writes is renamed into place exactly once.
vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  return { ...real, rename: vi.fn(real.rename) };
});
const renames = vi.mocked(fsp.rename);

interface Chunk {
  hash: string;
  bytes: Buffer;
}
const chunk = (size = 1000): Chunk => {
  const bytes = randomBytes(size);
  return { hash: hashChunk(bytes), bytes };
};
/** A chunk whose hash does not start with `prefix` (the fan-out directory). */
const chunkOutside = (prefix: string, size = 1000): Chunk => {
  for (;;) {
    const c = chunk(size);
    if (!c.hash.startsWith(prefix)) return c;
  }
};
const entryPath = (dir: string, hash: string) => path.join(dir, hash.slice(0, 2), hash);
const put = async (cache: DiskCache, ...chunks: Chunk[]) => {
  for (const c of chunks) await cache.put(c.hash, c.bytes);
};

let tmp: ReturnType<typeof tempDir>;
let dir: string;
beforeEach(() => {
  tmp = tempDir('lazysnap-disk-cache-');
  dir = path.join(tmp.dir, 'cache');
  renames.mockClear();
});
afterEach(() => tmp.cleanup());

describe('DiskCache', () => {
  it('round trips verified bytes under <2 hex>/<hash>, private to the owner', async () => {
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    expect(await cache.get(a.hash, a.bytes.length)).toBeUndefined();
    await cache.put(a.hash, a.bytes);
    expect(readFileSync(entryPath(dir, a.hash))).toEqual(a.bytes);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(entryPath(dir, a.hash)).mode & 0o777).toBe(0o600);
    utimesSync(entryPath(dir, a.hash), 1_000, 1_000);
    expect(await cache.get(a.hash, a.bytes.length)).toEqual(a.bytes);
    // A hit touches the mtime: the recency other processes and the next open() see.
    expect(statSync(entryPath(dir, a.hash)).mtimeMs).toBeGreaterThan(Date.now() - 60_000);
    expect(cache.stats()).toEqual({
      entries: 1,
      bytes: 1000,
      hits: 1,
      misses: 1,
      corrupt: 0,
      evictions: 0,
      writeErrors: 0,
    });
    await cache.close();
    await expect(cache.get(a.hash, a.bytes.length)).rejects.toThrow(/after close/);
    expect(existsSync(entryPath(dir, a.hash))).toBe(true); // entries outlive the process
  });

  it('writes an entry once: a second put and concurrent puts of one hash write nothing more', async () => {
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    await Promise.all([cache.put(a.hash, a.bytes), cache.put(a.hash, a.bytes), cache.put(a.hash, a.bytes)]);
    expect(renames).toHaveBeenCalledTimes(1);
    const before = statSync(entryPath(dir, a.hash));
    await cache.put(a.hash, a.bytes);
    expect(renames).toHaveBeenCalledTimes(1);
    expect(statSync(entryPath(dir, a.hash)).ino).toBe(before.ino);
    expect(readdirSync(path.join(dir, a.hash.slice(0, 2)))).toEqual([a.hash]); // no temp left behind
    expect(cache.stats()).toMatchObject({ entries: 1, bytes: 1000 });
  });

  it('evicts the least recently used entries to stay under budget; a recent read survives', async () => {
    const cache = await DiskCache.open({ dir, budgetBytes: 3000 });
    const [a, b, c, d] = [chunk(), chunk(), chunk(), chunk()] as [Chunk, Chunk, Chunk, Chunk];
    await put(cache, a, b, c);
    expect(await cache.get(a.hash, 1000)).toEqual(a.bytes); // a is now the most recent
    await put(cache, d);
    expect(existsSync(entryPath(dir, b.hash))).toBe(false);
    for (const kept of [a, c, d]) expect(existsSync(entryPath(dir, kept.hash))).toBe(true);
    expect(cache.stats()).toMatchObject({ entries: 3, bytes: 3000, evictions: 1 });
    expect(await cache.get(b.hash, 1000)).toBeUndefined();
    // A chunk larger than the whole budget is not written at all (it would evict everything).
    const big = chunk(4000);
    await cache.put(big.hash, big.bytes);
    expect(existsSync(entryPath(dir, big.hash))).toBe(false);
    expect(cache.stats()).toMatchObject({ entries: 3, evictions: 1 });
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
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    await put(cache, a);
    damage(entryPath(dir, a.hash));
    expect(await cache.get(a.hash, 1000)).toBeUndefined();
    expect(existsSync(entryPath(dir, a.hash))).toBe(false);
    expect(cache.stats()).toMatchObject({ entries: 0, bytes: 0, corrupt: 1, misses: 1, hits: 0 });
    await put(cache, a); // the caller refetched it from the origin
    expect(await cache.get(a.hash, 1000)).toEqual(a.bytes);
  });

  it('rejects bytes that are not the chunk named (IntegrityError) and bad arguments, writing nothing', async () => {
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    const b = chunk();
    await expect(cache.put(a.hash, b.bytes)).rejects.toBeInstanceOf(IntegrityError);
    await expect(cache.put(a.hash, b.bytes)).rejects.toMatchObject({
      code: 'LAZYSNAP_INTEGRITY',
      expected: a.hash,
      actual: b.hash,
    });
    await expect(cache.put('../etc/passwd', a.bytes)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(cache.get(a.hash.toUpperCase(), 1000)).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
      argument: 'hash',
    });
    await expect(cache.get(a.hash, -1)).rejects.toMatchObject({ argument: 'length' });
    await expect(DiskCache.open({ dir, budgetBytes: -1 })).rejects.toMatchObject({ argument: 'budgetBytes' });
    await expect(DiskCache.open({ dir: '', budgetBytes: 1 })).rejects.toMatchObject({ argument: 'dir' });
    expect(readdirSync(dir)).toEqual([]);
    expect(renames).not.toHaveBeenCalled();
  });

  it('survives an unwritable fan-out directory (ENOTDIR, real as root): put resolves, counts, reports, reads go on', async () => {
    const problems: DiskCacheProblem[] = [];
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20, onProblem: (p) => problems.push(p) });
    const a = chunk();
    await put(cache, a);
    const b = chunkOutside(a.hash.slice(0, 2));
    writeFileSync(path.join(dir, b.hash.slice(0, 2)), 'a file where a directory belongs');
    await expect(cache.put(b.hash, b.bytes)).resolves.toBeUndefined();
    expect(cache.stats()).toMatchObject({ writeErrors: 1, entries: 1 });
    expect(cache.lastWriteError).toMatchObject({ code: 'ENOTDIR' });
    expect(problems).toEqual([{ kind: 'write-failed', hash: b.hash, error: cache.lastWriteError }]);
    expect(await cache.get(a.hash, 1000)).toEqual(a.bytes);
    expect(await cache.get(b.hash, 1000)).toBeUndefined();
  });

  it('reports an entry that fails verification to onProblem, once, and deletes it', async () => {
    const problems: DiskCacheProblem[] = [];
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20, onProblem: (p) => problems.push(p) });
    const a = chunk();
    await put(cache, a);
    const flipped = Buffer.from(a.bytes);
    flipped[500]! ^= 1;
    writeFileSync(entryPath(dir, a.hash), flipped);
    expect(await cache.get(a.hash, 1000)).toBeUndefined();
    expect(await cache.get(a.hash, 1000)).toBeUndefined(); // gone now: a plain miss, not reported again
    expect(problems).toEqual([{ kind: 'corrupt', hash: a.hash, path: entryPath(dir, a.hash) }]);
    expect(existsSync(entryPath(dir, a.hash))).toBe(false);
    expect(() => resolveDiskCacheOptions({ dir, budgetBytes: 1, onProblem: 'log' as never })).toThrow(
      InvalidArgumentError,
    );
  });

  it('sees entries another DiskCache on the same directory wrote, and notices what it evicted', async () => {
    const first = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const second = await DiskCache.open({ dir, budgetBytes: 1000 });
    const [a, b] = [chunk(), chunk()] as [Chunk, Chunk];
    await put(first, a, b);
    expect(await second.get(a.hash, 1000)).toEqual(a.bytes); // found on disk, adopted into its index
    expect(second.stats()).toMatchObject({ entries: 1, hits: 1 });
    await second.put(b.hash, b.bytes); // already on disk: adopted, nothing written, a evicted by budget
    expect(renames).toHaveBeenCalledTimes(2);
    expect(second.stats()).toMatchObject({ entries: 1, bytes: 1000, evictions: 1 });
    expect(first.stats()).toMatchObject({ entries: 2 });
    expect(await first.get(a.hash, 1000)).toBeUndefined(); // gone from disk: dropped from first's index
    expect(first.stats()).toMatchObject({ entries: 1, bytes: 1000, misses: 1, corrupt: 0 });
    const third = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    expect(third.stats()).toMatchObject({ entries: 1, bytes: 1000 });
  });

  it('open() removes stale temp files, keeps live ones, and evicts oldest first down to the budget', async () => {
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const chunks = [chunk(), chunk(), chunk(), chunk()];
    await put(cache, ...chunks);
    await cache.close();
    // Recency is mtime: chunks[0] is the oldest. Set explicitly, a put's mtime is not ordered enough.
    chunks.forEach((c, i) => utimesSync(entryPath(dir, c.hash), 1_000 + i, 1_000 + i));
    const sub = path.join(dir, chunks[0]!.hash.slice(0, 2));
    const deadPid = path.join(sub, `${chunks[0]!.hash}.tmp-999999-0a0b0c0d`); // no such pid (pid_max)
    const oldLive = path.join(sub, `${chunks[0]!.hash}.tmp-${process.pid}-01020304`);
    const freshLive = path.join(sub, `${chunks[0]!.hash}.tmp-${process.pid}-05060708`);
    for (const f of [deadPid, oldLive, freshLive]) writeFileSync(f, 'partial');
    const old = (Date.now() - STALE_TEMP_MS - 10_000) / 1000;
    utimesSync(oldLive, old, old);
    mkdirSync(path.join(dir, 'not-ours'));

    const reopened = await DiskCache.open({ dir, budgetBytes: 2000 });
    expect([deadPid, oldLive, freshLive].map(existsSync)).toEqual([false, false, true]);
    expect(chunks.map((c) => existsSync(entryPath(dir, c.hash)))).toEqual([false, false, true, true]);
    expect(reopened.stats()).toMatchObject({ entries: 2, bytes: 2000, evictions: 2 });
    expect(existsSync(path.join(dir, 'not-ours'))).toBe(true);
  });

  it('rejects with signal.reason when the signal is already aborted', async () => {
    const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
    const a = chunk();
    const reason = new Error('restore cancelled');
    const signal = AbortSignal.abort(reason);
    await expect(DiskCache.open({ dir, budgetBytes: 1 }, signal)).rejects.toBe(reason);
    await expect(cache.put(a.hash, a.bytes, signal)).rejects.toBe(reason);
    await expect(cache.get(a.hash, 1000, signal)).rejects.toBe(reason);
    expect(existsSync(entryPath(dir, a.hash))).toBe(false);
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

    it('keeps serving on a full tmpfs (ENOSPC): put resolves and counts, no temp file is left', async () => {
      mkdirSync(dir);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', dir]);
      mounted = dir;
      const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
      const small = chunk(8192);
      await cache.put(small.hash, small.bytes);
      const big = chunk(128 * 1024);
      await expect(cache.put(big.hash, big.bytes)).resolves.toBeUndefined();
      expect(cache.stats()).toMatchObject({ writeErrors: 1, entries: 1 });
      expect(cache.lastWriteError).toMatchObject({ code: 'ENOSPC' });
      expect(readdirSync(path.join(dir, big.hash.slice(0, 2))).filter((n) => n.includes('.tmp-'))).toEqual(
        [],
      );
      expect(await cache.get(small.hash, 8192)).toEqual(small.bytes);
    });

    it('keeps serving on a read-only filesystem (EROFS): existing entries still read, touch is best effort', async () => {
      const cache = await DiskCache.open({ dir, budgetBytes: 1 << 20 });
      const a = chunk();
      await put(cache, a);
      execFileSync('mount', ['--bind', dir, dir]);
      mounted = dir;
      execFileSync('mount', ['-o', 'remount,bind,ro', dir]);
      const b = chunk();
      await expect(cache.put(b.hash, b.bytes)).resolves.toBeUndefined();
      expect(cache.lastWriteError).toMatchObject({ code: 'EROFS' });
      expect(await cache.get(a.hash, 1000)).toEqual(a.bytes);
      expect(cache.stats()).toMatchObject({ writeErrors: 1, hits: 1, entries: 1 });
    });
  },
);
