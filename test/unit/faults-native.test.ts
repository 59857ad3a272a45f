/**
 * Failures on the restore path that are not the origin's (docs/RELIABILITY.md, "Native and kernel
 * failures"): a peer that splits its registered memory into many VMAs (mprotect, mlock), a balloon
 * before a chunk fails closed, a peer without REMOVE events, a memory budget of zero, and a fault thread
 * made to fail where the kernel cannot be (the test build of the addon). Real kernel conditions, real
 * peers (test/fixtures/uffd-peer.c), a real RestoreServer: every page is read back and classified.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { RestoreServer } from '../../runtime/restore-server.js';
import { chunkHash, type SnapshotIndex } from '../../store/manifest.js';
import { chunkKey } from '../../store/keys.js';
import { loadIndex } from '../../store/reader.js';
import { FileStore } from '../../store/file-store.js';
import { makeImage, tempDir, type TestImage } from '../helpers/images.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { bounded, startServe, until } from '../helpers/serve-process.js';
import { hasUffd, kernelHasPoison, uffdSuite } from '../helpers/skip.js';
import { startPeer } from '../helpers/uffd-peer.js';
import { memoryCgroup, type MemoryCgroup } from '../helpers/cgroup.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 512 * KiB;
const SIZE = 16 * MiB;
const PAGES = SIZE / 4096;

/** Native failures the server counted (lazysnap_native_failures_total, all labels). */
async function nativeFailures(server: RestoreServer): Promise<number> {
  const m = await server.metrics.registry.getSingleMetric('lazysnap_native_failures_total')!.get();
  return m.values.reduce((n, v) => n + v.value, 0);
}

describe.skipIf(!hasUffd)(uffdSuite('faults: native and kernel'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let img: TestImage;
  let store: string;
  let ix: SnapshotIndex;
  let server: RestoreServer | undefined;

  beforeAll(async () => {
    tmp = tempDir('lazysnap-native-');
    img = makeImage(tmp.dir, SIZE, CS, { zeroEvery: 4 });
    store = path.join(tmp.dir, 'store');
    await snapshotTo(store, img.path, 'vm', CS);
    ix = await loadIndex(new FileStore(store), 'vm');
  });
  afterEach(async () => {
    await server?.close(1000);
    server = undefined;
  });
  afterAll(() => tmp.cleanup());

  it('serves a peer whose memory is split into hundreds of VMAs before it faults: every page right', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off' });
    const p = startPeer(server.socketPath, img.path, ['split', 0, SIZE, 16, 'read', 0, SIZE, 4]);
    const r = await bounded(p.result, 30_000, 'the split peer to finish');
    expect(r.code, r.stderr).toBe(0);
    expect(r.reads[0]).toMatchObject({ pages: PAGES, match: PAGES, mismatch: 0, sigbus: 0 });
    const [s] = await summaries(server, 1);
    expect(s).toMatchObject({ outcome: 'ended', failedChunks: [] });
    // Served by narrowing: no page was refused (a refused page would be woken and re-faulted one at a
    // time, which restores too, but page by page and with a warning each).
    expect(await nativeFailures(server)).toBe(0);
  });

  it('serves a peer that splits its memory while it faults, and one that mlocks a hot range', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off' });
    const during = startPeer(server.socketPath, img.path, ['readsplit', 0, SIZE, 4, 8]);
    const mlocked = startPeer(server.socketPath, img.path, ['mlock', 3 * MiB, 2 * MiB, 'read', 0, SIZE, 2]);
    for (const p of [during, mlocked]) {
      const r = await bounded(p.result, 30_000, 'the peer to finish');
      expect(r.code, r.stderr).toBe(0);
      expect(r.reads[0]).toMatchObject({ pages: PAGES, match: PAGES, mismatch: 0, sigbus: 0 });
    }
    const all = await summaries(server, 2);
    expect(all.every((s) => s.outcome === 'ended' && s.failedChunks.length === 0)).toBe(true);
    expect(await nativeFailures(server)).toBe(0);
  });

  it.skipIf(!kernelHasPoison())(
    'a chunk that fails closed after a balloon: its removed pages read zero, the others raise SIGBUS, nothing hangs',
    async () => {
      // Chunk 1 is data; its object is gone from the store, so it can only fail closed (poison).
      const c = 1;
      const hash = chunkHash(ix, c)!;
      const lost = path.join(tmp.dir, 'store-lost');
      const { cpSync } = await import('node:fs');
      cpSync(store, lost, { recursive: true });
      rmSync(path.join(lost, ...chunkKey(hash, 'zstd').split('/')));
      server = await serve(tmp.dir, { stores: [lost], id: 'vm', prefetch: 'off', failTimeoutMs: 300 });
      // The peer balloons the second half of chunk 1 before touching it, then reads all of chunk 1.
      const p = startPeer(server.socketPath, img.path, ['dontneed', CS + CS / 2, CS / 2, 'read', CS, CS, 2]);
      const r = await bounded(p.result, 20_000, 'the peer to finish');
      expect(r.code, r.stderr).toBe(0);
      expect(r.reads[0]).toMatchObject({ pages: 128, zero: 64, sigbus: 64, mismatch: 0, match: 0 });
      expect(r.reads[0]!.firstSigbus).toBe(CS);
    },
  );

  it('refuses a peer whose userfaultfd has no REMOVE events, naming the fix, and keeps serving others', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off' });
    const rejected = new Promise<string>((res) => server!.once('rejected', (i) => res(i.reason)));
    const bad = startPeer(server.socketPath, img.path, ['touch', 0], ['--no-remove-events']);
    expect(await bounded(rejected, 10_000, 'the rejection')).toMatch(/UFFD_FEATURE_EVENT_REMOVE/);
    bad.child.kill('SIGKILL'); // its fault would never be served: nobody holds its uffd
    const good = startPeer(server.socketPath, img.path, ['read', 0, SIZE, 2]);
    const r = await bounded(good.result, 20_000, 'the good peer');
    expect(r.reads[0]).toMatchObject({ mismatch: 0, sigbus: 0 });
  });

  it('restores whole with a memory budget of zero: installs never evict each other', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off', memoryBudgetBytes: 0 });
    const peers = [1, 2, 3].map((seed) =>
      startPeer(server!.socketPath, img.path, ['read', 0, SIZE, 4], ['--seed', String(seed)]),
    );
    for (const p of peers) {
      const r = await bounded(p.result, 30_000, 'a peer to finish');
      expect(r.reads[0]).toMatchObject({ pages: PAGES, match: PAGES, mismatch: 0, sigbus: 0 });
    }
    // Chunks loaded once are let go of from their stages when the loaders go idle (memory-tier admission).
    await until(() => server!.stats().residentBytes === 0, 5_000);
    expect(server.stats().residentBytes).toBe(0);
    const all = await summaries(server, 3);
    expect(all.every((s) => s.outcome === 'ended' && s.failedChunks.length === 0)).toBe(true);
  });

  const cg = memoryCgroup('lazysnap-test-peer', 8 * MiB);
  const cgReason = 'reason' in cg ? cg.reason : '';
  if ('remove' in cg) afterAll(() => cg.remove());
  it.skipIf(cgReason !== '')(
    `a peer in a memory cgroup too small for its memory is killed, never hung; serve goes on${cgReason ? ` [SKIPPED: ${cgReason}]` : ''}`,
    async () => {
      const group = cg as MemoryCgroup;
      server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off', failTimeoutMs: 2000 });
      // The peer joins the group after its handshake and before its first fault: every page lazysnap
      // installs is charged to the group, and 16 MiB do not fit in 8.
      const p = startPeer(server.socketPath, img.path, ['wait', 'read', 0, SIZE, 4]);
      group.add(await p.handshake);
      p.go();
      const r = await bounded(p.result, 20_000, 'the cgrouped peer to end');
      expect(r.signal).toBe('SIGKILL'); // the kernel's OOM killer or lazysnap's fail-closed kill
      expect(r.reads).toHaveLength(0);
      const other = startPeer(server.socketPath, img.path, ['read', 0, SIZE, 2]);
      const o = await bounded(other.result, 20_000, 'a peer outside the group');
      expect(o.reads[0]).toMatchObject({ pages: PAGES, match: PAGES });
    },
  );

  const cgNoOom = memoryCgroup('lazysnap-test-nooom', 8 * MiB);
  if ('remove' in cgNoOom) afterAll(() => cgNoOom.remove());
  const noOomReason =
    'reason' in cgNoOom
      ? cgNoOom.reason
      : cgNoOom.disableOomKiller()
        ? ''
        : 'this cgroup version cannot turn its OOM killer off (v1 memory.oom_control)';
  it.skipIf(noOomReason !== '')(
    `with the group's OOM killer off, the kernel refuses the copy (ENOMEM) and lazysnap kills the peer${noOomReason ? ` [SKIPPED: ${noOomReason}]` : ''}`,
    async () => {
      const group = cgNoOom as MemoryCgroup;
      server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off' });
      const p = startPeer(server.socketPath, img.path, ['wait', 'read', 0, SIZE, 4]);
      group.add(await p.handshake);
      p.go();
      const r = await bounded(p.result, 20_000, 'the peer to be killed');
      expect(r.signal).toBe('SIGKILL');
      expect(await nativeFailures(server)).toBeGreaterThan(0);
      const m = await server.metrics.registry.getSingleMetric('lazysnap_native_failures_total')!.get();
      expect(m.values.some((v) => v.labels.code === 'ENOMEM' && v.labels.action === 'kill')).toBe(true);
    },
  );

  for (const kind of ['event-read', 'out-of-memory'] as const) {
    it(`a fault thread that stops (${kind}, injected in the test build) kills its peer instead of leaving it hung`, async () => {
      const sock = path.join(tmp.dir, 'run', `inject-${kind}.sock`);
      const sp = await startServe(sock, ['--store', store, '--id', 'vm', '--prefetch', 'off'], {
        env: { LAZYSNAP_NATIVE_BUILD: 'test', LAZYSNAP_INJECT: `${kind}:3` },
      });
      try {
        const p = startPeer(sock, img.path, ['read', 0, SIZE, 4]);
        const r = await bounded(p.result, 20_000, 'the peer to be killed');
        expect(r.signal).toBe('SIGKILL');
        const line = await sp.waitForLog((l) => l.msg.includes('killing the peer'), 10_000, 'the kill line');
        expect(line.reason).toMatch(
          kind === 'event-read' ? /reading the userfaultfd failed/ : /report .* was lost/,
        );
      } finally {
        await sp.stop();
      }
    });
  }
});
