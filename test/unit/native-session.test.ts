/**
 * The native fault path against the real kernel: a Firecracker-exact client process registers its
 * memory, hands the uffd over, and faults from several threads; the session resolves in C what it
 * can and forwards only absent chunks to JS. Every test verifies every byte the client read.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { SessionClosedError } from '../../core/errors.js';
import {
  ChunkTable,
  FaultSession,
  constants,
  createUffd,
  madvise,
  mmapAnonymous,
  munmap,
  installSharedSession,
  processVmRead,
  uffdApi,
  uffdCopy,
  uffdRegister,
  type SessionEvent,
  type SessionStats,
} from '../../native/index.js';
import { ChunkLoader } from '../../runtime/chunk-loader.js';
import { encodeChunk, hashChunk } from '../../store/chunk.js';
import { runClient, startClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { hasUffd, hugepageSkipReason, kernelHasPoison, presentPages, uffdSuite } from '../helpers/skip.js';

const hasPoison = kernelHasPoison();
import { Harness } from '../helpers/uffd-harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * The fault thread bumps its counters after an ioctl returns, but the ioctl already woke the client,
 * which may verify and exit first: counters read right after the client exits may lag by one fill.
 * Wait for the thread to catch up (a counter that stays wrong still fails).
 */
async function settledStats(
  a: { session: { stats(): SessionStats } },
  until: (st: SessionStats) => boolean,
): Promise<SessionStats> {
  for (let i = 0; i < 200; i++) {
    const st = a.session.stats();
    if (until(st)) return st;
    await sleep(5);
  }
  return a.session.stats();
}

/**
 * A session over memory of this process (`size` bytes, REMOVE events on): nothing here faults on it,
 * so installs need no waiter and the kernel-side reads (process_vm_readv) see what was installed.
 */
function inProcessSession(size: number, cs: number) {
  const uffd = createUffd();
  uffdApi(uffd, constants().UFFD_FEATURE_EVENT_REMOVE);
  const addr = mmapAnonymous(size);
  uffdRegister(uffd, addr, size);
  const table = new ChunkTable(size, cs);
  const events: SessionEvent[] = [];
  const session = new FaultSession(
    uffd,
    { table, pageSize: 4096, regions: [{ base: addr, size, offset: 0 }] },
    (e) => events.push(e),
  );
  const close = () => {
    session.close();
    munmap(addr, size);
  };
  return { addr, table, events, session, close };
}

describe.skipIf(!hasUffd)(uffdSuite('native fault session'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let harness: Harness | undefined;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => {
    harness?.close();
    harness = undefined;
    tmp.cleanup();
  });

  it('serves every byte to 8 threads faulting at once, mixing zero, resident and fetched chunks', async () => {
    const cs = 256 * KiB;
    const img = makeImage(tmp.dir, 32 * MiB, cs, { zeroEvery: 5 });
    const resident = [...Array(128).keys()].filter((i) => i % 3 === 0 && !img.zeroChunks.includes(i));
    harness = new Harness({
      dir: tmp.dir,
      image: img.bytes,
      chunkSize: cs,
      zeroChunks: img.zeroChunks,
      residentChunks: resident,
    });
    const r = await runClient([
      '--socket',
      harness.socketPath,
      '--image',
      img.path,
      '--threads',
      '8',
      '--order',
      'random',
    ]);
    expect(r.stderr).toBe('');
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 8192 });
    const a = await harness.session();
    const st = a.session.stats();
    const absent = 128 - img.zeroChunks.length - resident.length;
    // Each absent chunk crossed into JS exactly once; zero and resident chunks never did.
    expect(st.forwardedFaults).toBe(absent);
    expect(new Set(harness.needSeen).size).toBe(harness.needSeen.length);
    expect(harness.needSeen.filter((i) => img.zeroChunks.includes(i) || resident.includes(i))).toEqual([]);
    expect(st.zeroFaults).toBeGreaterThanOrEqual(1);
    expect(st.residentFaults).toBeGreaterThanOrEqual(1);
    // Every requested chunk was installed, by the install command or by a concurrent fault that found
    // its bytes already put in the shared table (then the command has nothing left to do).
    const allInstalled = () => {
      const installed = new Set(a.events.flatMap((e) => [...e.installed]));
      return harness!.needSeen.every((i) => installed.has(i));
    };
    for (let i = 0; i < 200 && !allInstalled(); i++) await sleep(5); // the last batch may be in flight
    expect(allInstalled()).toBe(true);
    expect(st.installs).toBeLessThanOrEqual(absent);
  });

  it('resolves zero chunks natively: with every other chunk resident nothing reaches JS', async () => {
    const cs = 512 * KiB;
    const img = makeImage(tmp.dir, 16 * MiB, cs, { zeroEvery: 2 });
    harness = new Harness({
      dir: tmp.dir,
      image: img.bytes,
      chunkSize: cs,
      zeroChunks: img.zeroChunks,
      residentChunks: [...Array(32).keys()].filter((i) => i % 2 === 1),
    });
    const r = await runClient(['--socket', harness.socketPath, '--image', img.path, '--threads', '4']);
    expect(r.report).toMatchObject({ ok: true, pagesVerified: 4096 });
    const st = await settledStats(await harness.session(), (x) => x.bytesZeroed + x.bytesCopied >= 32 * cs);
    expect(harness.needSeen).toEqual([]);
    expect(st.forwardedFaults).toBe(0);
    expect(st.zeroFaults).toBeGreaterThanOrEqual(1);
    expect(st.bytesZeroed).toBe(16 * cs);
    expect(st.bytesCopied).toBe(16 * cs);
  });

  it('wakes every thread waiting in a chunk with one install (one request per chunk however many faults)', async () => {
    const cs = 2 * MiB;
    const img = makeImage(tmp.dir, 8 * MiB, cs);
    // Hold each install back so that all 8 threads are asleep in the kernel on 4 chunks at once.
    harness = new Harness({
      dir: tmp.dir,
      image: img.bytes,
      chunkSize: cs,
      onNeed: (chunks, a, h) => {
        const list = Uint32Array.from(chunks);
        setTimeout(() => {
          for (const i of list) h.putChunk(i);
          a.session.install(list);
        }, 150);
      },
    });
    const r = await runClient(['--socket', harness.socketPath, '--image', img.path, '--threads', '8']);
    expect(r.report).toMatchObject({ ok: true, pagesVerified: 2048 });
    const a = await harness.session();
    const st = a.session.stats();
    expect(st.forwardedFaults).toBe(4);
    expect(st.faults).toBeGreaterThanOrEqual(8); // pigeonhole: 8 first touches over 4 chunks
    // Each chunk is installed once: by its install command, or by a fault that found it already put
    // (the command then has nothing left to do, and still reports the chunk installed).
    // (The last batch of events may still be on its way to JS when the client exits.)
    const installed = () => new Set(a.events.flatMap((e) => [...e.installed]));
    for (let i = 0; i < 200 && installed().size < 4; i++) await sleep(5);
    expect([...installed()].sort()).toEqual([0, 1, 2, 3]);
    expect(st.installs).toBeLessThanOrEqual(4);
  });

  it('installs a chunk whose pages are partly present: copies the rest, overwrites nothing', async () => {
    const cs = 256 * KiB;
    const img = makeImage(tmp.dir, 4 * MiB, cs);
    harness = new Harness({ dir: tmp.dir, image: img.bytes, chunkSize: cs, residentChunks: [] });
    const c = startClient(['--socket', harness.socketPath, '--image', img.path, '--wait', '--linger']);
    const pid = await c.ready;
    const a = await harness.session();
    const base = a.regions[0]!.base;
    const page = (chunk: number, p: number) =>
      img.bytes.subarray(chunk * cs + p * 4096, chunk * cs + (p + 1) * 4096);
    // Pages 1 and 5 of chunk 2, and the last page of chunk 3, arrive first (as a racing fault would).
    for (const [chunk, p] of [
      [2, 1],
      [2, 5],
      [3, 63],
    ] as const) {
      uffdCopy(a.uffd, base + BigInt(chunk * cs + p * 4096), page(chunk, p));
    }
    expect(presentPages(pid, base + BigInt(2 * cs), 2 * cs).filter(Boolean)).toHaveLength(3);
    harness.putChunk(2);
    harness.putChunk(3);
    a.session.install(Uint32Array.of(2, 3));
    await Promise.all([a.installed(2), a.installed(3)]);
    const st = a.session.stats();
    expect(st.pagesPresent).toBe(3);
    expect(st.bytesCopied).toBe(2 * cs - 3 * 4096);
    // Every page of both chunks is now present in the client, before it touches anything.
    expect(presentPages(pid, base + BigInt(2 * cs), 2 * cs).every(Boolean)).toBe(true);
    expect(presentPages(pid, base + BigInt(4 * cs), cs).some(Boolean)).toBe(false);
    c.go();
    c.release();
    const r = await c.result;
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 1024 });
  });

  it('UFFD_EVENT_REMOVE: a ballooned range reads zero afterwards and the rest keeps its bytes', async () => {
    const cs = 512 * KiB;
    const img = makeImage(tmp.dir, 8 * MiB, cs, { zeroChunks: [15] });
    harness = new Harness({
      dir: tmp.dir,
      image: img.bytes,
      chunkSize: cs,
      zeroChunks: img.zeroChunks,
      residentChunks: 'all',
    });
    // 768 KiB straddling chunks 2 and 3, after every page has been restored once.
    const r = await runClient([
      '--socket',
      harness.socketPath,
      '--image',
      img.path,
      '--balloon',
      `${cs + cs / 2}:${768 * KiB}`,
    ]);
    expect(r.report?.ok).toBe(true);
    expect(r.report?.balloon).toEqual({ zeroPages: 192, nonZeroPages: 0, outsideOk: true });
    const st = await settledStats(await harness.session(), (x) => x.removedFaults >= 192);
    expect(st.removes).toBeGreaterThanOrEqual(1);
    expect(st.removedFaults).toBe(192);
  });

  it.skipIf(!hasPoison)(
    `poisons what cannot be served: the client dies of SIGBUS instead of hanging${hasPoison ? '' : ' [SKIPPED: kernel < 6.6]'}`,
    async () => {
      const cs = 512 * KiB;
      const img = makeImage(tmp.dir, 4 * MiB, cs);
      harness = new Harness({
        dir: tmp.dir,
        image: img.bytes,
        chunkSize: cs,
        residentChunks: [0, 1, 2, 3, 4, 5, 6],
        onNeed: (chunks, a) => a.session.poison(chunks),
      });
      const r = await runClient([
        '--socket',
        harness.socketPath,
        '--image',
        img.path,
        '--order',
        'seq',
        '--threads',
        '1',
      ]);
      expect({ signal: r.signal, code: r.code, stderr: r.stderr }).toEqual({
        signal: 'SIGBUS',
        code: null,
        stderr: '',
      });
      const st = await settledStats(await harness.session(), (x) => x.poisons >= 1);
      expect(st.poisons).toBe(1);
      expect(st.bytesPoisoned).toBe(cs);
    },
  );

  it('serves two regions with a chunk straddling the boundary, for every handshake payload shape', async () => {
    const cs = 2 * MiB;
    const img = makeImage(tmp.dir, 16 * MiB, cs, { zeroChunks: [7] });
    harness = new Harness({ dir: tmp.dir, image: img.bytes, chunkSize: cs, zeroChunks: img.zeroChunks });
    for (const payload of ['v1', 'v7', 'v12']) {
      const r = await runClient([
        '--socket',
        harness.socketPath,
        '--image',
        img.path,
        '--regions',
        '13M,3M',
        '--payload',
        payload,
        '--threads',
        '4',
      ]);
      expect(r.report, payload).toMatchObject({ ok: true, pagesVerified: 4096 });
    }
    const first = await harness.session(0);
    const third = await harness.session(2);
    expect(third.regions.map((x) => [x.size, x.offset])).toEqual([
      [13 * MiB, 0],
      [3 * MiB, 13 * MiB],
    ]);
    // The first restore fetched the 7 non-zero chunks once each (chunk 6 spans both regions: one
    // request fills both halves); later restores of the same snapshot find them in the shared table.
    expect(first.session.stats().forwardedFaults).toBe(7);
    expect(third.session.stats()).toMatchObject({ forwardedFaults: 0, installs: 0 });
    // Counted just after the copy that wakes the client, so it may land after the client is gone.
    expect((await settledStats(third, (st) => st.residentFaults >= 1)).residentFaults).toBeGreaterThanOrEqual(
      1,
    );
  });

  it('reports an install whose bytes were evicted first as missing, and serves it once re-put', async () => {
    const cs = 512 * KiB;
    const img = makeImage(tmp.dir, 2 * MiB, cs);
    let evictions = 0;
    harness = new Harness({
      dir: tmp.dir,
      image: img.bytes,
      chunkSize: cs,
      onNeed: (chunks, a, h) => {
        for (const i of chunks) {
          h.putChunk(i);
          if (evictions < 2) evictions += h.table.evict(i) > 0 ? 1 : 0;
        }
        a.session.install(Uint32Array.from(chunks));
      },
    });
    const r = await runClient(['--socket', harness.socketPath, '--image', img.path, '--threads', '2']);
    expect(r.report).toMatchObject({ ok: true, pagesVerified: 512 });
    const a = await harness.session();
    expect(a.session.stats().missing).toBe(2);
    expect(a.events.flatMap((e) => [...e.missing])).toHaveLength(2);
  });

  it('reports the peer gone (ESRCH) when it dies with faults outstanding', async () => {
    const cs = 512 * KiB;
    const img = makeImage(tmp.dir, 2 * MiB, cs);
    let needed: Uint32Array | undefined;
    harness = new Harness({
      dir: tmp.dir,
      image: img.bytes,
      chunkSize: cs,
      onNeed: (chunks) => (needed = Uint32Array.from(chunks)),
    });
    const c = startClient(['--socket', harness.socketPath, '--image', img.path, '--threads', '1']);
    const a = await harness.session();
    while (!needed) await sleep(5);
    c.child.kill('SIGKILL');
    expect((await c.result).signal).toBe('SIGKILL');
    harness.putChunk(needed[0]!);
    a.session.install(needed);
    const exited = await new Promise<SessionEvent>((res) => {
      const poll = setInterval(() => {
        const e = a.events.find((x) => x.exited);
        if (e) {
          res(e);
          clearInterval(poll);
        }
      }, 5);
    });
    expect(exited.exited).toBe(true);
    expect(a.session.stats().installs).toBe(0);
  });

  it('keeps pages removed before their chunk is installed zero (in-process, kernel-side reads)', async () => {
    const cs = 64 * KiB;
    const size = 4 * cs;
    const img = makeImage(tmp.dir, size, cs);
    const c = constants();
    const { addr, table, events, session, close } = inProcessSession(size, cs);
    try {
      // madvise blocks until the fault thread has read the REMOVE; no JS is needed for that.
      madvise(addr + BigInt(cs + 2 * 4096), 3 * 4096, c.MADV_DONTNEED);
      table.put(1, img.bytes.subarray(cs, 2 * cs));
      session.install(1);
      while (!events.some((e) => e.installed.includes(1))) await sleep(2);
      const got = Buffer.alloc(cs);
      // process_vm_readv reads from the kernel; every page is present now, so nothing faults.
      expect(processVmRead(process.pid, addr + BigInt(cs), got)).toBe(cs);
      const want = Buffer.from(img.bytes.subarray(cs, 2 * cs));
      want.fill(0, 2 * 4096, 5 * 4096);
      expect(got.equals(want)).toBe(true);
      expect(session.stats()).toMatchObject({
        removes: 1,
        bytesZeroed: 3 * 4096,
        bytesCopied: cs - 3 * 4096,
      });
    } finally {
      close();
    }
  });

  it('installs a staged chunk from its stage before it reaches its slot, and from the slot after', async () => {
    const cs = 64 * KiB;
    const size = 4 * cs;
    const img = makeImage(tmp.dir, size, cs);
    const { addr, table, events, session, close } = inProcessSession(size, cs);
    try {
      const plain = img.bytes.subarray(cs, 2 * cs);
      const stage = table.reserveStaged(1)!;
      expect(stage.byteOffset).toBeGreaterThanOrEqual(table.stats().arenaBytes);
      stage.set(plain);
      table.commit(1, true);
      // The slot is still empty: whatever the peer gets now comes from the stage.
      expect(table.slot(1).every((b) => b === 0)).toBe(true);
      session.install(1);
      while (!events.some((e) => e.installed.includes(1))) await sleep(2);
      const got = Buffer.alloc(cs);
      expect(processVmRead(process.pid, addr + BigInt(cs), got)).toBe(cs);
      expect(got.equals(Buffer.from(plain))).toBe(true);
      while (table.settle(1, 16 * KiB) > 0);
      expect(Buffer.from(table.slot(1)).equals(Buffer.from(plain))).toBe(true);
      expect(table.stats()).toMatchObject({ stagedChunks: 0, busyStages: 0, residentChunks: 1 });
      // Evicted while staged and settled: the install finds it missing, as for any evicted chunk.
      table.reserveStaged(2)!.set(img.bytes.subarray(2 * cs, 3 * cs));
      table.commit(2, true);
      table.evict(2);
      while (table.settle(2, cs) > 0);
      session.install(2);
      while (!events.some((e) => e.missing.includes(2))) await sleep(2);
      expect(session.stats()).toMatchObject({ installs: 1, missing: 1, bytesCopied: cs });
    } finally {
      close();
    }
  });

  it('a loader thread installs a chunk it verified for the sessions named in the job, JS installing nothing', async () => {
    const cs = 64 * KiB;
    const size = 4 * cs;
    const img = makeImage(tmp.dir, size, cs);
    const { addr, table, events, session, close } = inProcessSession(size, cs);
    const loader = await ChunkLoader.start({ table, workers: 1 });
    try {
      const id = session.share();
      expect(session.share()).toBe(id);
      const plain = img.bytes.subarray(2 * cs, 3 * cs);
      /** Loads `bytes` as chunk `chunk` (checked against `hash`), naming `installTo` for the install. */
      const job = (chunk: number, bytes: Uint8Array, installTo: number[], hash = hashChunk(bytes)) =>
        loader.load({
          table: loader.tableId,
          chunk,
          key: `k${chunk}`,
          hash,
          codec: 'zstd',
          length: cs,
          from: 'bytes',
          bytes: encodeChunk('zstd', bytes),
          maxBytes: 2 * cs,
          priority: 'demand',
          installTo,
        });
      await job(2, plain, [id]);
      while (!events.some((e) => e.installed.includes(2))) await sleep(2);
      const got = Buffer.alloc(cs);
      expect(processVmRead(process.pid, addr + BigInt(2 * cs), got)).toBe(cs);
      expect(got.equals(Buffer.from(plain))).toBe(true);
      expect(session.stats()).toMatchObject({ installs: 1, bytesCopied: cs });
      // The loader copies the chunk from its stage to its slot by itself, after the install.
      for (let i = 0; i < 500 && table.stats().stagedChunks > 0; i++) await sleep(2);
      expect(table.stats()).toMatchObject({ stagedChunks: 0, busyStages: 0 });
      expect(Buffer.from(table.slot(2)).equals(Buffer.from(plain))).toBe(true);
      // A load that fails verification installs nothing, even with the session named.
      const other = img.bytes.subarray(3 * cs, 4 * cs);
      await expect(job(3, other, [id], hashChunk(plain) /* not other's */)).rejects.toMatchObject({
        failure: 'integrity',
      });
      await sleep(20);
      expect(events.some((e) => e.installed.includes(3))).toBe(false);
      expect(table.state(3)).toBe('absent');
      // Once the session is closed its id reaches nobody (and never a later session).
      session.close();
      expect(installSharedSession(id, 1)).toBe(false);
      await job(1, img.bytes.subarray(cs, 2 * cs), [id]);
      expect(table.state(1)).toBe('resident');
    } finally {
      close();
      await loader.close();
    }
  });

  it('direct mode: an absent chunk goes to an attached loader through the table queue, not to JS; with no loader, to JS', async () => {
    const cs = 256 * KiB;
    const img = makeImage(tmp.dir, 8 * MiB, cs, { zeroEvery: 4 });
    const absent = 32 - img.zeroChunks.length;
    const client = ['--image', img.path, '--threads', '4', '--order', 'random'];
    const open = () =>
      new Harness({
        dir: tmp.dir,
        image: img.bytes,
        chunkSize: cs,
        zeroChunks: img.zeroChunks,
        direct: true,
      });
    // No loader attached to the table: direct mode changes nothing, every absent chunk is a `need`.
    harness = open();
    let r = await runClient(['--socket', harness.socketPath, ...client]);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 2048 });
    let st = (await harness.session()).session.stats();
    expect(st).toMatchObject({ forwardedFaults: absent, directFaults: 0 });
    expect(new Set(harness.needSeen).size).toBe(absent);
    harness.close();

    // This thread attached as the loader: it takes each chunk from the queue, puts its bytes and queues
    // the install by the session's share id, as a loader thread does; JS's `need` sees nothing.
    harness = open();
    const h = harness;
    const taken: { session: number; chunk: number }[] = [];
    h.table.directAttach(() => {
      for (let it = h.table.directTake(); it; it = h.table.directTake()) {
        taken.push(it);
        h.putChunk(it.chunk);
        expect(installSharedSession(it.session, it.chunk)).toBe(true);
      }
    });
    r = await runClient(['--socket', h.socketPath, ...client]);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 2048 });
    const a = await h.session();
    st = a.session.stats();
    expect(st).toMatchObject({ forwardedFaults: absent, directFaults: absent });
    // Installed by the command, or by a fault on it that found its bytes put first (then nothing is left).
    expect(st.installs).toBeLessThanOrEqual(absent);
    expect(h.needSeen).toEqual([]);
    // Each absent chunk once, under the session's id; the session heard of each as claimed.
    expect(new Set(taken.map((x) => x.chunk)).size).toBe(absent);
    expect(taken.every((x) => x.chunk < 32 && !img.zeroChunks.includes(x.chunk))).toBe(true);
    expect(new Set(taken.map((x) => x.session))).toEqual(new Set([a.session.share()]));
    for (let i = 0; i < 200 && a.events.flatMap((e) => [...e.claimed]).length < absent; i++) await sleep(5);
    expect(new Set(a.events.flatMap((e) => [...e.claimed]))).toEqual(new Set(taken.map((x) => x.chunk)));
    expect(a.events.every((e) => e.claimed.length === e.claimedAt.length)).toBe(true);
  });

  it('close() stops the thread, closes the uffd, and later calls fail with a typed error', async () => {
    const table = new ChunkTable(1 * MiB, 64 * KiB);
    const uffd = createUffd();
    uffdApi(uffd, 0n);
    const addr = mmapAnonymous(1 * MiB);
    const s = new FaultSession(
      uffd,
      { table, pageSize: 4096, regions: [{ base: addr, size: 1 * MiB, offset: 0 }] },
      () => {},
    );
    const { readlinkSync } = await import('node:fs');
    expect(readlinkSync(`/proc/self/fd/${uffd}`)).toContain('userfaultfd');
    s.close();
    s.close();
    expect(() => readlinkSync(`/proc/self/fd/${uffd}`)).toThrow();
    expect(() => s.install(0)).toThrow(SessionClosedError);
    munmap(addr, 1 * MiB);
  });
});

const hugeReason = hasUffd ? hugepageSkipReason(16) : 'needs userfaultfd';
describe.skipIf(hugeReason !== '')(
  `native fault session on 2 MiB hugetlb pages${hugeReason ? ` [SKIPPED: ${hugeReason}]` : ''}`,
  () => {
    it('copies whole huge pages and zero-fills zero chunks by copy (no ZEROPAGE on hugetlbfs)', async () => {
      const tmp = tempDir();
      const cs = 4 * MiB;
      const img = makeImage(tmp.dir, 16 * MiB, cs, { zeroChunks: [1] });
      const harness = new Harness({
        dir: tmp.dir,
        image: img.bytes,
        chunkSize: cs,
        zeroChunks: img.zeroChunks,
      });
      try {
        const r = await runClient([
          '--socket',
          harness.socketPath,
          '--image',
          img.path,
          '--page-size',
          '2097152',
          '--threads',
          '4',
        ]);
        expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({
          code: 0,
          signal: null,
          stderr: '',
        });
        expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
        const st = await settledStats(await harness.session(), (x) => x.bytesCopied >= 16 * MiB);
        expect(st.bytesZeroed).toBe(0);
        expect(st.bytesCopied).toBe(16 * MiB);
        expect(st.forwardedFaults).toBe(3);
      } finally {
        harness.close();
        tmp.cleanup();
      }
    });
  },
);
