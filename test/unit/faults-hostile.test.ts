/**
 * Origins that lie to exhaust memory, and neighbours that hog the fetch path (docs/RELIABILITY.md,
 * "Hostile objects" and "Neighbours"). A real `lazysnap serve` process, whose peak resident memory
 * (VmHWM) is read after the fact, so a spike between samples cannot hide:
 *
 * - eight chunk objects replaced by a 48 KB zstd frame that decodes to 1.5 GiB each, behind an HTTP
 *   origin; an endless HTTP body without Content-Length; a 32 MiB object in s3rver in place of a
 *   chunk: serve's peak RSS grows by less than one chunk per fetch slot plus a small constant, the peer
 *   that needs those chunks gets SIGBUS on exactly their pages, fast (an object that lies is not
 *   retried), and a healthy peer beside it is served whole;
 * - three sessions replaying a profile from an origin that takes seconds per chunk: a fourth session's
 *   demand fault on a chunk outside every profile is served at once, well within its fail timeout.
 */
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { chunkHash, type SnapshotIndex } from '../../store/manifest.js';
import { chunkKey } from '../../store/keys.js';
import { loadIndex } from '../../store/reader.js';
import { FileStore } from '../../store/file-store.js';
import { S3Store } from '../../store/s3-store.js';
import { fakeOrigin, zstdBomb, type Fault } from '../helpers/fault-origin.js';
import { makeImage, tempDir, type TestImage } from '../helpers/images.js';
import { S3RVER_ENV, startS3rver, type S3rverHandle } from '../helpers/s3rver.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { bounded, startServe, type ServeProcess } from '../helpers/serve-process.js';
import { hasUffd, kernelHasPoison, uffdSuite } from '../helpers/skip.js';
import { startPeer } from '../helpers/uffd-peer.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 512 * KiB;
const SIZE = 32 * MiB;
/** Demand and prefetch slots of a default serve (runtime/serve-options.ts). */
const SLOTS = 16 + 16;
/** Node's own growth over a restore (heap, buffers, the JIT): what "a small constant" allows. */
const CONSTANT = 48 * MiB;

describe.skipIf(!hasUffd || !kernelHasPoison())(uffdSuite('faults: hostile objects and neighbours'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let img: TestImage;
  let store: string;
  let ix: SnapshotIndex;
  let sp: ServeProcess | undefined;
  const closers: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    tmp = tempDir('lazysnap-hostile-');
    img = makeImage(tmp.dir, SIZE, CS, { zeroEvery: 4 });
    store = path.join(tmp.dir, 'store');
    await snapshotTo(store, img.path, 'vm', CS);
    ix = await loadIndex(new FileStore(store), 'vm');
  });
  afterEach(async () => {
    await sp?.stop();
    sp = undefined;
    for (const c of closers.splice(0).reverse()) await c();
  });
  afterAll(() => tmp.cleanup());

  /** The data chunks (zero chunks are never fetched) at these indexes of the data chunks. */
  const dataChunks = () => [...Array(ix.count).keys()].filter((c) => chunkHash(ix, c) !== null);
  const keyOf = (c: number) => chunkKey(chunkHash(ix, c)!, 'zstd');
  const socket = (name: string) => path.join(tmp.dir, 'run', `${name}.sock`);

  /**
   * Serves through `stores`, lets one peer read the poisoned chunks and another the healthy ones at
   * the same time, and checks pages, time and serve's peak RSS.
   */
  async function hostileCase(name: string, stores: string[], bad: number[], extra: string[] = []) {
    sp = await startServe(socket(name), [
      ...stores.flatMap((s) => ['--store', s]),
      '--id',
      'vm',
      '--prefetch',
      'off',
      '--fail-timeout',
      '5s',
      // Nothing stays resident after its install: the growth measured is what the objects cost.
      '--memory-budget',
      '0',
      ...extra,
    ]);
    const before = sp.rssBytes();
    const badSet = new Set(bad);
    // Twelve healthy chunks: enough to show the neighbour served beside the attack, few enough that the
    // garbage of its own fetches (collected later) does not dominate the memory measured.
    const good = dataChunks()
      .filter((c) => !badSet.has(c))
      .slice(-12);
    const t0 = performance.now();
    // The victim reads each bad chunk's pages; the neighbour reads everything else.
    const victim = startPeer(
      sp.socket,
      img.path,
      bad.flatMap((c) => ['read', c * CS, CS, 1]),
    );
    const neighbour = startPeer(
      sp.socket,
      img.path,
      good.flatMap((c) => ['read', c * CS, CS, 1]),
    );
    const [v, n] = await Promise.all([
      bounded(victim.result, 20_000, 'the victim'),
      bounded(neighbour.result, 20_000, 'the neighbour'),
    ]);
    const ms = performance.now() - t0;
    // Every page of a lying chunk poisoned (SIGBUS), none read as anything; every other page right.
    expect(v.reads.map((r) => r.sigbus)).toEqual(bad.map(() => CS / 4096));
    expect(v.reads.every((r) => r.match === 0 && r.mismatch === 0)).toBe(true);
    expect(n.reads.map((r) => r.match)).toEqual(good.map(() => CS / 4096));
    // An object that lies is not retried until the fail timeout: it fails at once.
    expect(ms).toBeLessThan(5000);
    const growth = sp.peakRssBytes() - before;
    console.log(
      `[${name}] serve peak RSS grew ${(growth / MiB).toFixed(1)} MiB (bound ${(SLOTS * CS + CONSTANT) / MiB} MiB)`,
    );
    expect(growth, `peak RSS grew ${(growth / MiB).toFixed(1)} MiB`).toBeLessThan(SLOTS * CS + CONSTANT);
    const failed = sp.logs.filter((l) => /could not be served: failing closed/.test(l.msg));
    expect(failed.map((l) => l.chunk).sort((a, b) => Number(a) - Number(b))).toEqual(bad);
    return failed;
  }

  it('zstd bombs behind an HTTP origin (48 KB each, 1.5 GiB decoded): one chunk of memory each at most', async () => {
    const bad = dataChunks().slice(0, 8);
    const keys = new Set(bad.map(keyOf));
    // Built before serve starts: compressing 1.5 GiB takes seconds of CPU (4.7 s here), and inside the
    // origin's first answer it would hold every request of both peers past the 5 s fail timeout.
    zstdBomb();
    const o = await fakeOrigin(store, (_n, url): Fault => (keys.has(url.slice(1)) ? 'bomb' : 'ok'));
    closers.push(o.close);
    const failed = await hostileCase('bomb', [o.url], bad);
    expect(String(failed[0]!.errors)).toMatch(/undecodable|zstd frame/);
    // The object's key once per attempt line, not once from the loader thread and again from the fetcher.
    const line = String((failed[0]!.errors as string[])[0]);
    const key = keyOf(Number(failed[0]!.chunk));
    expect(line.split(key).length - 1, line).toBe(1);
  });

  it('an endless HTTP body: the read stops at the largest legal object, the peer fails closed', async () => {
    const bad = dataChunks().slice(2, 4);
    const keys = new Set(bad.map(keyOf));
    const o = await fakeOrigin(store, (_n, url): Fault => (keys.has(url.slice(1)) ? 'endless' : 'ok'));
    closers.push(o.close);
    const failed = await hostileCase('endless', [o.url], bad);
    expect(String(failed[0]!.errors)).toMatch(/LAZYSNAP_INTEGRITY|longer than|too long|exceeds/i);
    expect(o.stats.endlessBytes).toBeLessThan(64 * MiB); // it hung up, it did not read a gigabyte
  });

  describe('from s3rver', () => {
    let s3: S3rverHandle;
    const env = S3RVER_ENV;
    beforeAll(async () => {
      s3 = await startS3rver('hostile');
      Object.assign(process.env, env);
      const remote = new S3Store({ bucket: 'hostile', prefix: 'p', endpoint: s3.endpoint });
      const files = new FileStore(store);
      for await (const o of files.list('')) await remote.put(o.key, await files.get(o.key));
    });
    afterAll(async () => s3.stop());

    it('a 32 MiB object in place of a chunk: refused from its length, the peer fails closed', async () => {
      const bad = [dataChunks()[5]!];
      const remote = new S3Store({ bucket: 'hostile', prefix: 'p', endpoint: s3.endpoint });
      await remote.put(keyOf(bad[0]!), Buffer.alloc(32 * MiB, 0x42));
      const failed = await hostileCase('s3', ['s3://hostile/p'], bad, ['--s3-endpoint', s3.endpoint]);
      expect(String(failed[0]!.errors)).toMatch(/LAZYSNAP_INTEGRITY|longer than|too long|exceeds/i);
    });
  });

  it("three sessions replaying a profile from a slow origin do not delay a fourth session's demand", async () => {
    // Record a profile of the first half of the image (on the directory store, untimed).
    const rec = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'record', recordIdleMs: 100 });
    const r0 = startPeer(rec.socketPath, img.path, ['read', 0, SIZE / 2, 2]);
    await bounded(r0.result, 20_000, 'the recording peer');
    await summaries(rec, 1);
    await rec.close(1000);
    // The origin takes 3 s for every chunk in the profile and answers others at once.
    const profiled = new Set(
      dataChunks()
        .filter((c) => c * CS < SIZE / 2)
        .map(keyOf),
    );
    const o = await fakeOrigin(store, (_n, url): Fault =>
      profiled.has(url.slice(1)) ? { delayMs: 3000 } : 'ok',
    );
    closers.push(o.close);
    // The replaying peers touch nothing: they only keep every prefetch slot busy.
    const server = await serve(tmp.dir, { stores: [o.url], id: 'vm', failTimeoutMs: 1000 });
    closers.push(() => server.close(500));
    const replayers = [1, 2, 3].map(() => startPeer(server.socketPath, img.path, ['wait']));
    for (const p of replayers) await p.handshake;
    await new Promise((r) => setTimeout(r, 200)); // their replays are queued and running
    const outside = dataChunks().find((c) => c * CS >= SIZE / 2 + 4 * MiB)!;
    const t0 = performance.now();
    const fourth = startPeer(server.socketPath, img.path, ['read', outside * CS, CS, 2]);
    const r = await bounded(fourth.result, 10_000, 'the fourth peer');
    const ms = performance.now() - t0;
    expect(r.reads[0]).toMatchObject({ match: CS / 4096, sigbus: 0 });
    expect(ms).toBeLessThan(1000); // its fail timeout: had it waited behind a 3 s prefetch, it would be dead
    for (const p of replayers) p.go();
  });
});
