/**
 * Working-set prefetch through serve: record writes a profile of first touches; replay installs the
 * profile's chunks before the workload touches them; fill brings in the rest; demand faults are
 * served while thousands of prefetches wait.
 */
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { FileStore } from '../../store/file-store.js';
import type { RestoreServer } from '../../runtime/restore-server.js';
import { parseProfile } from '../../runtime/profile.js';
import { runClient, startClient } from '../helpers/fc-client.js';
import { fakeOrigin } from '../helpers/fault-origin.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;

async function until(f: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !f();) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(5);
  }
}

describe.skipIf(!hasUffd)(uffdSuite('working-set prefetch'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let server: RestoreServer | undefined;
  // The workload touches the first page of every 2 MiB: chunks 0, 8, ..., 56; multiples of 3 are zero.
  const workload = ['--touch', 'sparse', '--chunk-size', '2M', '--threads', '1'];
  const touched = [0, 8, 16, 24, 32, 40, 48, 56];
  const nonZero = touched.filter((c) => c % 3 !== 0);
  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 16 * MiB, CS, { zeroEvery: 3 });
    await snapshotTo(store, img.path, 'vm', CS);
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });
  const profile = async () =>
    parseProfile(await new FileStore(store).get('profiles/vm'), {
      id: 'vm',
      chunkSize: CS,
      totalSize: 16 * MiB,
      chunks: 64,
    });

  it('record writes the first-touch order to profiles/<id>, and recordings merge', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'record', recordIdleMs: 60_000 });
    let r = await runClient([
      '--socket',
      server.socketPath,
      '--image',
      img.path,
      ...workload,
      '--order',
      'seq',
    ]);
    expect(r.report).toMatchObject({ ok: true });
    const [s] = await summaries(server, 1);
    expect(s!.recordedChunks).toBe(nonZero.length);
    await server.close(0);
    let p = await profile();
    expect(p.chunks.map((e) => e.chunk)).toEqual(nonZero); // sequential workload: ascending first touches
    expect(p.recordings).toBe(1);
    // A second recording, in another order, merges into the same profile.
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'record', recordIdleMs: 60_000 });
    r = await runClient([
      '--socket',
      server.socketPath,
      '--image',
      img.path,
      ...workload,
      '--order',
      'random',
      '--seed',
      '7',
    ]);
    expect(r.report).toMatchObject({ ok: true });
    await summaries(server, 1);
    await server.close(0);
    p = await profile();
    expect(p.recordings).toBe(2);
    expect(p.chunks.map((e) => e.chunk).sort((a, b) => a - b)).toEqual(nonZero);
    expect(p.chunks.every((e) => e.n === 2)).toBe(true);
  });

  it('replay installs the profile before the workload touches it: the faults go away', async () => {
    // Saved when the session ends: a 50 ms idle window split the recording after one chunk when the
    // machine was loaded (the client's next touch came later than that), and replay then had one chunk.
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'record', recordIdleMs: 60_000 });
    await runClient(['--socket', server.socketPath, '--image', img.path, ...workload]);
    const [recorded] = await summaries(server, 1);
    expect(recorded!.fetchedChunks).toBe(nonZero.length);
    await server.close(0);
    // Default mode: a profile exists, so sessions replay it.
    server = await serve(tmp.dir, { stores: [store], id: 'vm' });
    const c = startClient(['--socket', server.socketPath, '--image', img.path, ...workload, '--wait']);
    await c.ready;
    // Installed by the fault thread, not merely queued.
    await until(() => [...server!.sessions][0]?.stats().installs === nonZero.length);
    c.go();
    c.release();
    expect((await c.result).report).toMatchObject({ ok: true, mismatches: 0 });
    const [s] = await summaries(server, 1);
    expect(s!.prefetchedChunks).toBe(nonZero.length);
    const st = s!.faults;
    // Only the zero chunks of the working set still fault (they are never prefetched: no fetch needed).
    expect(st).toBe(touched.length - nonZero.length);
  });

  it('fill brings in every missing chunk in the background, jumping to where demand faults are', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off', fill: true });
    const c = startClient(['--socket', server.socketPath, '--image', img.path, '--wait', '--threads', '1']);
    await c.ready;
    const all = 64 - img.zeroChunks.length;
    await until(() => [...server!.sessions][0]?.stats().installs === all);
    c.go();
    c.release();
    expect((await c.result).report).toMatchObject({ ok: true, pagesVerified: 4096 });
    const [s] = await summaries(server, 1);
    expect(s!.fetchedChunks).toBe(all);
    expect(s!.faults).toBe(img.zeroChunks.length); // only zero chunks were left to fault
  });

  it('serves a demand fault while thousands of prefetches wait behind it', async () => {
    const big = makeImage(tmp.dir, 64 * MiB, 32 * KiB, { name: 'big.img' });
    const bigStore = path.join(tmp.dir, 'big');
    await snapshotTo(bigStore, big.path, 'big', 32 * KiB);
    // A profile of all 2048 chunks in order, replayed through a slow origin (20 ms per request).
    const order = Array.from({ length: 2048 }, (_, i) => ({ chunk: i, t: i, n: 1 }));
    await new FileStore(bigStore).put(
      'profiles/big',
      Buffer.from(
        JSON.stringify({
          format: 'lazysnap-profile/1',
          id: 'big',
          chunkSize: 32 * KiB,
          totalSize: 64 * MiB,
          recordings: 1,
          updatedAt: '',
          chunks: order,
        }),
      ),
    );
    const slow = await fakeOrigin(bigStore, () => ({ delayMs: 20 }));
    try {
      server = await serve(tmp.dir, {
        stores: [slow.url],
        id: 'big',
        prefetchWindow: 4,
        fetchConcurrency: 8,
      });
      // The client touches one page near the end of the replay order, at once.
      const r = await runClient([
        '--socket',
        server.socketPath,
        '--image',
        big.path,
        '--touch',
        'sparse',
        '--chunk-size',
        '64M',
        '--threads',
        '1',
      ]);
      expect(r.report, JSON.stringify(r) + r.stderr).toMatchObject({ ok: true });
      // The client is done (its session ended with it) while the replay had fetched only a small
      // part of its 2048 chunks: the demand fault did not wait behind the queued prefetches.
      const [s] = await summaries(server, 1);
      expect(s!.prefetchedChunks).toBeLessThan(500);
      expect(s!.hitsByTier.origin0).toBeGreaterThanOrEqual(1);
    } finally {
      await server?.close(0);
      server = undefined;
      await slow.close();
    }
  });

  it('with only an HTTP origin, records to --profile-store and replays from it; without one, record is refused at start', async () => {
    const o = await fakeOrigin(store, () => 'ok');
    try {
      await expect(serve(tmp.dir, { stores: [o.url], id: 'vm', prefetch: 'record' })).rejects.toMatchObject({
        code: 'LAZYSNAP_INVALID_ARGUMENT',
        argument: 'profileStore',
      });
      const profiles = path.join(tmp.dir, 'profiles');
      server = await serve(tmp.dir, {
        stores: [o.url],
        id: 'vm',
        prefetch: 'record',
        profileStore: profiles,
        recordIdleMs: 60_000,
      });
      await runClient(['--socket', server.socketPath, '--image', img.path, ...workload]);
      await summaries(server, 1);
      await server.close(0);
      server = undefined;
      const saved = parseProfile(await new FileStore(profiles).get('profiles/vm'), {
        id: 'vm',
        chunkSize: CS,
        totalSize: 16 * MiB,
        chunks: 64,
      });
      expect(saved.chunks.map((e) => e.chunk).sort((a, b) => a - b)).toEqual(nonZero);
      // Replay through the HTTP origin with the same profile store: the workload's chunks arrive first.
      server = await serve(tmp.dir, { stores: [o.url], id: 'vm', profileStore: profiles });
      const c = startClient(['--socket', server.socketPath, '--image', img.path, ...workload, '--wait']);
      await c.ready;
      await until(() => [...server!.sessions][0]?.stats().installs === nonZero.length);
      c.go();
      c.release();
      expect((await c.result).report).toMatchObject({ ok: true, mismatches: 0 });
      const [sum] = await summaries(server, 1);
      expect(sum!.prefetchedChunks).toBe(nonZero.length);
    } finally {
      await o.close();
    }
  });
});
