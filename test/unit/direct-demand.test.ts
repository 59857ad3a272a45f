/**
 * The direct demand path (native/src/direct.c, ChunkLoader.direct): with a local directory as the first
 * store, a fault on an absent chunk goes from the fault thread straight to a loader thread, and JS hears of
 * it afterwards. Restores through the server's socket with the Firecracker-exact client, every byte
 * verified: the path is taken, a load it cannot do (an object missing or corrupt, a cache entry corrupt)
 * falls back to the fetcher and the next store, a stuck one to the fetcher's fail-closed rule, and a host
 * cache is read first and filled.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants,
  cpSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
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

  /** Serves `stores` without read-ahead (every non-zero chunk's first touch is then a fault), restores every byte. */
  async function restoreAll(stores: string[], threads: number) {
    server = await serve(tmp.dir, { stores, id: 'vm', readaheadBytes: 0 });
    const r = await restore(threads);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 4096 });
    return (await summaries(server, 1))[0]!;
  }

  it('a local store: every absent chunk goes from the fault thread to a loader, none through a JS fetch', async () => {
    const s = await restoreAll([store], 4);
    expect(s).toMatchObject({
      outcome: 'ended',
      directFaults: nonZero,
      fetchedChunks: nonZero,
      hitsByTier: { origin0: nonZero },
      failedChunks: [],
    });
    // Each one's wait is accounted as a fetch's would be: it has a decode and a verify.
    expect(s.stall.faults).toBe(nonZero);
    expect(s.stall.decodeMs).toBeGreaterThan(0);
    expect(s.stall.verifyMs).toBeGreaterThan(0);
    const m = await server!.metrics.fetches.get();
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

    expect(await restoreAll([store, second], 2)).toMatchObject({
      outcome: 'ended',
      directFaults: nonZero,
      fetchedChunks: nonZero,
      hitsByTier: { origin0: nonZero - 2, origin1: 2 },
      failedChunks: [],
    });
  });

  it('a direct load stuck in a read (a FIFO in place of an object): the fault goes to the fetcher after the fail timeout, which fails it closed', async () => {
    const ix = await loadIndex(new FileStore(store), 'vm');
    const stuck = [...Array(64).keys()].filter((c) => chunkHash(ix, c) !== null)[2]!;
    const fifo = path.join(store, chunkKey(chunkHash(ix, stuck)!, chunkCodec(ix, stuck)!));
    rmSync(fifo);
    execFileSync('mkfifo', [fifo]); // opening it for reading blocks until a writer comes: a hung filesystem
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      readaheadBytes: 0,
      failTimeoutMs: 1000,
      failClosed: 'kill',
    });
    try {
      // Failed closed after the claim's fail timeout and the fetcher's patience, not left waiting for the
      // stuck load (which would time this test out).
      const r = await restore(1);
      expect(r.signal).toBe('SIGKILL');
      const [s] = await summaries(server, 1);
      expect(s).toMatchObject({ outcome: 'killed', failedChunks: [stuck] });
    } finally {
      // Let the stuck opens end (a writer came; then the end of the file), and later ones find nothing,
      // so that the server's threads can stop.
      let w = -1;
      try {
        w = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      } catch {
        // ENXIO: nobody waits in it; nothing to release.
      }
      rmSync(fifo);
      if (w >= 0) closeSync(w);
    }
  });

  it('with a host cache: a cold restore fills it, a warm one reads it, both direct; a corrupt entry goes to the fetcher', async () => {
    const cacheDir = path.join(tmp.dir, 'cache');
    let residentBytes = 0;
    const withCache = async () => {
      server = await serve(tmp.dir, { stores: [store], id: 'vm', cacheDir, readaheadBytes: 0 });
      const r = await restore(2);
      expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 4096 });
      const [s] = await summaries(server, 1);
      residentBytes = server.stats().residentBytes;
      await server.close(0); // waits for the cache writes
      server = undefined;
      return s!;
    };
    const entries = () =>
      readdirSync(cacheDir, { recursive: true }).filter((f) => /[0-9a-f]{64}$/.test(String(f)));
    expect(await withCache()).toMatchObject({ directFaults: nonZero, hitsByTier: { origin0: nonZero } });
    expect(entries()).toHaveLength(nonZero);
    // Filled from the store's objects once loads were idle, not from copies held in memory meanwhile: at
    // most the loaders' stages hold chunks when the restore ends (every one of them, were they kept).
    expect(residentBytes).toBeLessThan((nonZero * CS) / 2);
    expect(await withCache()).toMatchObject({ directFaults: nonZero, hitsByTier: { disk: nonZero } });
    // An entry that is not its chunk: the direct load refuses it, the fetcher deletes it and reads the store.
    const entry = path.join(cacheDir, String(entries()[0]));
    const bytes = readFileSync(entry);
    bytes[0]! ^= 0xff;
    writeFileSync(entry, bytes);
    expect(await withCache()).toMatchObject({
      directFaults: nonZero,
      hitsByTier: { disk: nonZero - 1, origin0: 1 },
      failedChunks: [],
    });
  });
});
