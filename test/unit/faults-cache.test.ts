/**
 * Host disk cache faults under a real `lazysnap serve` process: a disk that fills up (a 600 KiB
 * tmpfs), one that cannot be written (a read-only tmpfs), a cache directory that cannot be created,
 * and a cached file corrupted on disk. The cache is an optimization: restores go on from the
 * origins, never read a byte that failed verification, and the operator gets one line.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  expectOneProblem,
  expectRestored,
  mountSkipReason,
  restore,
  smallSnapshot,
  type Snapshot,
} from '../helpers/fault-case.js';
import { tempDir } from '../helpers/images.js';
import { startServe, type LogLine, type ServeProcess } from '../helpers/serve-process.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const summaryOf = (s: ServeProcess) =>
  s.logs.find((l) => l.msg === 'restore session summary') as LogLine & { hitsByTier: Record<string, number> };
const entries = (dir: string) =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name));

describe.skipIf(!hasUffd)(uffdSuite('faults: host disk cache'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let snap: Snapshot;
  let serve: ServeProcess | undefined;
  let mounted: string | undefined;
  beforeAll(async () => {
    tmp = tempDir('lazysnap-faults-cache-');
    snap = await smallSnapshot(tmp.dir);
  });
  afterEach(async () => {
    await serve?.stop();
    serve = undefined;
    if (mounted) execFileSync('umount', [mounted]);
    mounted = undefined;
  });
  afterAll(() => tmp.cleanup());

  const socket = () => path.join(tmp.dir, 'run', 'fc.sock');
  const start = async (cacheDir: string) =>
    (serve = await startServe(socket(), ['--store', snap.store, '--id', snap.id, '--cache-dir', cacheDir]));
  const tmpfs = (name: string, options: string) => {
    const dir = path.join(tmp.dir, name);
    mkdirSync(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir]);
    mounted = dir;
    return dir;
  };

  describe.skipIf(!!mountSkipReason)(
    `on a real full or read-only filesystem${mountSkipReason ? ` [SKIPPED: ${mountSkipReason}]` : ''}`,
    () => {
      it('disk cache full (ENOSPC on a 600 KiB tmpfs): restored whole from the origin, one warn line, no temp file left', async () => {
        const dir = tmpfs('full', 'size=600k,mode=0700');
        const s = await start(dir);
        expectRestored(await restore(s.socket, snap), snap);
        await expectOneProblem(s, 1, /disk cache writes are failing \(ENOSPC\)/);
        expect(summaryOf(s).hitsByTier).toMatchObject({ origin0: 12 });
        await s.stop(); // waits for the cache writes in flight
        serve = undefined;
        const files = entries(dir);
        expect(files.filter((f) => f.includes('.tmp-'))).toEqual([]);
        expect(files.length).toBeLessThan(12); // some entries fitted, the rest failed
      });

      it('disk cache unwritable (EROFS, read-only tmpfs): restored whole from the origin, one warn line', async () => {
        const dir = tmpfs('ro', 'size=4m,mode=0700');
        execFileSync('mount', ['-o', 'remount,ro', dir]);
        const s = await start(dir);
        expectRestored(await restore(s.socket, snap), snap);
        await expectOneProblem(s, 1, /disk cache writes are failing \(EROFS\)/);
        expect(entries(dir)).toEqual([]);
      });
    },
  );

  it('cache directory that cannot be created (ENOTDIR): serve refuses to start, exit 1, one line', async () => {
    const file = path.join(tmp.dir, 'a-file');
    writeFileSync(file, '');
    const e = (await startServe(socket(), [
      '--store',
      snap.store,
      '--id',
      snap.id,
      '--cache-dir',
      path.join(file, 'cache'),
    ]).catch((x: unknown) => x)) as Error;
    expect(e.message).toMatch(
      /^serve exited \(1\) before serving: lazysnap: ENOTDIR: not a directory, mkdir '.*a-file\/cache'$/,
    );
  });

  it('cached file corrupted on disk: detected, deleted, fetched from the origin, restored whole, one warn line', async () => {
    const dir = path.join(tmp.dir, 'cache');
    let s = await start(dir);
    expectRestored(await restore(s.socket, snap), snap);
    await s.stop(); // waits for the cache writes
    const files = entries(dir);
    expect(files).toHaveLength(12);
    const victim = files[0]!;
    const bytes = readFileSync(victim);
    bytes[1000]! ^= 0x01; // same size: only the BLAKE3 check can tell
    writeFileSync(victim, bytes);
    s = await start(dir);
    expectRestored(await restore(s.socket, snap), snap);
    const line = await expectOneProblem(s, 1, /disk cache entry failed verification/);
    expect(line.path).toBe(victim);
    expect(summaryOf(s).hitsByTier).toMatchObject({ disk: 11, origin0: 1 });
    await s.stop();
    expect(readFileSync(victim).equals(bytes)).toBe(false); // rewritten with the verified bytes
  });
});
