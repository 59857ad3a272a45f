/**
 * The direct demand path (native/src/direct.c, ChunkLoader.direct): with a local directory as the first
 * store, a fault on an absent chunk goes from the fault thread straight to a loader thread, and JS hears of
 * it afterwards. Restores through the server's socket with the Firecracker-exact client, every byte
 * verified: the path is taken, a load it cannot do (an object missing or corrupt) falls back to the
 * fetcher and the next store, and with a host cache it is not used at all (the cache's reads and fills
 * are the fetcher's).
 */
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import type { RestoreServer } from '../../runtime/restore-server.js';
import { FileStore } from '../../store/file-store.js';
import { chunkKey } from '../../store/keys.js';
import { chunkCodec, chunkHash } from '../../store/manifest.js';
import { loadIndex } from '../../store/reader.js';
import { runClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;

describe.skipIf(!hasUffd)(uffdSuite('direct demand path'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: RestoreServer | undefined;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let nonZero: number;
  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 16 * MiB, CS, { zeroEvery: 4 });
    await snapshotTo(store, img.path, 'vm', CS);
    nonZero = 64 - img.zeroChunks.length;
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  const restore = (threads: number) =>
    runClient(['--socket', server!.socketPath, '--image', img.path, '--threads', String(threads)]);

  it('a local store: every absent chunk goes from the fault thread to a loader, none through a JS fetch', async () => {
    // No read-ahead, so that every non-zero chunk's first touch is a fault (it would otherwise prefetch).
    server = await serve(tmp.dir, { stores: [store], id: 'vm', readaheadBytes: 0 });
    const r = await restore(4);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 4096 });
    const [s] = await summaries(server, 1);
    expect(s).toMatchObject({
      outcome: 'ended',
      directFaults: nonZero,
      fetchedChunks: nonZero,
      hitsByTier: { origin0: nonZero },
      failedChunks: [],
    });
    // Each one's wait is accounted as a fetch's would be: it has a decode and a verify.
    expect(s!.stall.faults).toBe(nonZero);
    expect(s!.stall.decodeMs).toBeGreaterThan(0);
    expect(s!.stall.verifyMs).toBeGreaterThan(0);
    const m = await server.metrics.fetches.get();
    const fetches = m.values.filter((v) => v.labels.tier === 'origin0').reduce((n, v) => n + v.value, 0);
    expect(fetches).toBe(nonZero);
  });

  it('an object missing and one corrupt in the first store: the direct loads fail, the fetcher gets both from the next store', async () => {
    const second = path.join(tmp.dir, 'store2');
    cpSync(store, second, { recursive: true });
    const ix = await loadIndex(new FileStore(store), 'vm');
    const data = [...Array(64).keys()].filter((c) => chunkHash(ix, c) !== null);
    const object = (c: number) => path.join(store, chunkKey(chunkHash(ix, c)!, chunkCodec(ix, c)!));
    const [gone, corrupt] = [data[1]!, data[5]!];
    rmSync(object(gone));
    const bytes = readFileSync(object(corrupt));
    bytes[bytes.length >> 1]! ^= 0xff; // same length: only the hash can tell
    writeFileSync(object(corrupt), bytes);

    server = await serve(tmp.dir, { stores: [store, second], id: 'vm', readaheadBytes: 0 });
    const r = await restore(2);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 4096 });
    const [s] = await summaries(server, 1);
    expect(s).toMatchObject({
      outcome: 'ended',
      directFaults: nonZero,
      fetchedChunks: nonZero,
      hitsByTier: { origin0: nonZero - 2, origin1: 2 },
      failedChunks: [],
    });
  });

  it('with a host cache: not used (the fetcher reads and fills the cache)', async () => {
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      cacheDir: path.join(tmp.dir, 'cache'),
      readaheadBytes: 0,
    });
    const r = await restore(2);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 4096 });
    const [s] = await summaries(server, 1);
    expect(s).toMatchObject({ directFaults: 0, fetchedChunks: nonZero, failedChunks: [] });
  });
});
