/**
 * The fetch pipeline against origins that fail in ways nginx or s3rver cannot be made to: a small
 * node:http origin in front of a directory store injects 503s, stalls and wrong bytes on request.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { FetchError } from '../../core/errors.js';
import { ChunkTable } from '../../native/index.js';
import { ChunkLoader } from '../../runtime/chunk-loader.js';
import { ChunkFetcher, type FetcherOptions, type FetchEvent } from '../../runtime/fetcher.js';
import { encodeChunk, hashChunk } from '../../store/chunk.js';
import { FileStore } from '../../store/file-store.js';
import { HttpStore } from '../../store/http-store.js';
import { chunkKey } from '../../store/keys.js';
import { fakeOrigin, type Fault } from '../helpers/fault-origin.js';
import { tempDir } from '../helpers/images.js';

describe('chunk fetcher', () => {
  let tmp: ReturnType<typeof tempDir>;
  let root: string;
  const CS = 64 * 1024;
  const bytes = Buffer.alloc(CS, 0x5a);
  const ref = { chunk: 0, hash: hashChunk(bytes), codec: 'zstd' as const, length: bytes.length };
  const closers: (() => Promise<void>)[] = [];
  beforeEach(async () => {
    tmp = tempDir();
    root = path.join(tmp.dir, 'store');
    await new FileStore(root).put(chunkKey(ref.hash, 'zstd'), encodeChunk('zstd', bytes));
  });
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
    tmp.cleanup();
  });
  /** Chunks 0..n-1 of a table like fetcher()'s, stored uncompressed under `dir`: chunk i is all bytes i + 1. */
  const plainChunks = (dir: string, n: number) =>
    Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const b = Buffer.alloc(CS, i + 1);
        const r = { chunk: i, hash: hashChunk(b), codec: 'none' as const, length: CS };
        await new FileStore(dir).put(chunkKey(r.hash, 'none'), b);
        return r;
      }),
    );
  /** A fetcher over a table of 64 chunks of 64 KiB, with two loader threads: a fetch fills a slot. */
  const fetcher = async (o: Omit<FetcherOptions, 'table' | 'loader'>) => {
    const table = new ChunkTable(64 * CS, CS);
    const loader = await ChunkLoader.start({ table, workers: 2 });
    closers.push(() => loader.close());
    return Object.assign(new ChunkFetcher({ ...o, table, loader }), {
      // Through a pin: a loaded chunk may still be in its stage, not yet copied to its slot.
      bytesOf: (c: number) => table.read(c) ?? Buffer.alloc(0),
    });
  };
  const http = async (plan: (n: number, url: string) => Fault) => {
    const o = await fakeOrigin(root, plan);
    const store = new HttpStore(o.url, { headersTimeoutMs: 5000 });
    closers.push(async () => (await store.close(), await o.close()));
    return { o, store };
  };

  it('retries a 503 on the same origin with backoff, then serves verified bytes', async () => {
    const { o, store } = await http((n) => (n <= 2 ? '503' : 'ok'));
    const events: FetchEvent[] = [];
    const f = await fetcher({
      origins: [store],
      retries: 2,
      backoffMs: 5,
      onFetch: (e) => events.push(e),
    });
    const got = await f.fetch(ref, 'demand');
    expect(f.bytesOf(0).equals(bytes)).toBe(true);
    expect(got.tier).toBe('origin0');
    expect(o.requests).toHaveLength(3);
    expect(events).toMatchObject([{ tier: 'origin0', priority: 'demand', misses: 0 }]);
    expect(events[0]!.errors).toEqual([expect.stringMatching(/HTTP 503/), expect.stringMatching(/HTTP 503/)]); // what serve logs, once
    expect(events[0]!.errors[0]!.split(o.url)).toHaveLength(2); // the origin named once, not twice
  });

  it('with patience, goes over the origins again while they fail transiently, and stops at once when they only lack the chunk', async () => {
    // Eight 503s: a single pass (3 attempts) cannot get past them; passes until the deadline do.
    const { o, store } = await http((n) => (n <= 8 ? '503' : 'ok'));
    const events: FetchEvent[] = [];
    const f = await fetcher({
      origins: [store],
      retries: 2,
      backoffMs: 5,
      onFetch: (e) => events.push(e),
    });
    await expect(f.fetch(ref, 'demand')).rejects.toThrow(FetchError); // one pass: 3 attempts, gives up
    expect(o.requests).toHaveLength(3);
    await f.fetch(ref, 'demand', { patienceMs: 5000 });
    expect(f.bytesOf(0).equals(bytes)).toBe(true);
    expect(o.requests).toHaveLength(9);
    // One event for the recovered fetch, naming every failed attempt of every pass.
    expect(events[1]).toMatchObject({
      tier: 'origin0',
      errors: Array(5).fill(expect.stringMatching(/HTTP 503/)),
    });

    // An origin that does not have the chunk is not asked again, however long the caller could wait.
    const dir = new FileStore(path.join(tmp.dir, 'empty'));
    let gets = 0;
    // A directory store is read by the loader threads: count the lookups of the object's path.
    const empty = Object.assign(Object.create(dir) as FileStore, {
      localPath: (k: string) => (gets++, dir.localPath(k)),
    });
    const f2 = await fetcher({ origins: [empty] });
    await expect(
      f2.fetch({ ...ref, hash: 'f'.repeat(64) }, 'demand', { patienceMs: 10_000 }),
    ).rejects.toThrow(/not found/);
    expect(gets).toBe(1);
  });

  it('falls through to the next origin on a stall (attempt timeout) and on lying bytes, at once', async () => {
    const stall = await http(() => 'stall');
    const liar = await http(() => 'lie');
    const good = await http(() => 'ok');
    const f = await fetcher({
      origins: [stall.store, liar.store, good.store],
      attemptTimeoutMs: 200,
      retries: 3,
      backoffMs: 5,
    });
    const t0 = Date.now();
    const got = await f.fetch(ref, 'demand');
    expect(got.tier).toBe('origin2');
    expect(f.bytesOf(0).equals(bytes)).toBe(true);
    expect(liar.o.requests).toHaveLength(1); // a hash mismatch is not retried on the same origin
    expect(Date.now() - t0).toBeLessThan(4 * 200 + 1000);
  });

  it('says what a lying store holds: the hash expected and the one it got, the key once', async () => {
    // A well-formed object of the right length under the chunk's key, holding other bytes.
    const dir = path.join(tmp.dir, 'liar');
    const file = path.join(dir, ...chunkKey(ref.hash, 'zstd').split('/'));
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, encodeChunk('zstd', Buffer.alloc(bytes.length, 0x17)));
    const f = await fetcher({ origins: [new FileStore(dir)] });
    const e = (await f.fetch(ref, 'demand').catch((x: unknown) => x)) as { errors: string[] };
    const line = e.errors.find((l) => l.includes('content hash mismatch'));
    // Built in a loader thread, rebuilt here with its fields: not "key: key: ..." and not without them.
    expect(line).toMatch(new RegExp(`content hash mismatch \\(expected ${ref.hash}, got [0-9a-f]{64}\\)`));
    expect(line!.split(chunkKey(ref.hash, 'zstd')).length - 1).toBe(1);
  });

  it('gives one FetchError naming every failed attempt when nothing delivers', async () => {
    const a = await http(() => '503');
    const f = await fetcher({
      origins: [a.store, new FileStore(path.join(tmp.dir, 'empty'))],
      retries: 1,
      backoffMs: 1,
    });
    const e = await f.fetch(ref, 'demand').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(FetchError);
    expect((e as FetchError).errors).toHaveLength(3);
    expect((e as FetchError).message).toMatch(/503/);
    expect((e as FetchError).message).toMatch(/not found/);
  });

  it('fetches a chunk once however many ask at once', async () => {
    const { o, store } = await http(() => 'ok');
    const f = await fetcher({ origins: [store] });
    const all = await Promise.all(
      Array.from({ length: 20 }, (_, i) => f.fetch(ref, i % 2 ? 'demand' : 'prefetch')),
    );
    expect(all.every((r) => r.tier === 'origin0' || r.tier === 'memory')).toBe(true);
    expect(f.bytesOf(0).equals(bytes)).toBe(true);
    expect(o.requests).toHaveLength(1);
  });

  it('runs demand fetches before queued prefetches, and a demand promotes a queued prefetch', async () => {
    const order: string[] = [];
    const root2 = path.join(tmp.dir, 'many');
    const refs = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const b = Buffer.alloc(CS, i);
        const r = { chunk: i, hash: hashChunk(b), codec: 'none' as const, length: CS };
        await new FileStore(root2).put(chunkKey(r.hash, 'none'), b);
        return r;
      }),
    );
    // Prefetched chunks are answered 50 ms late, the demanded ones at once: how many prefetches precede
    // a demand then depends on the queues, not on how fast a loaded runner turns requests around (a
    // clean-clone run saw 4 precede refs[20] when every answer came at once).
    const wanted = [refs[35]!.hash, refs[20]!.hash];
    const o = await fakeOrigin(root2, (_n, url) => {
      order.push(url);
      return wanted.some((h) => url.includes(h)) ? 'ok' : { delayMs: 50 };
    });
    const store = new HttpStore(o.url);
    closers.push(async () => (await store.close(), await o.close()));
    const f = await fetcher({ origins: [store], concurrency: 1, prefetchConcurrency: 1 });
    const jobs = refs.slice(0, 30).map((r) => f.fetch(r, 'prefetch'));
    expect(f.pending().prefetch).toBe(29);
    const demand = f.fetch(refs[35]!, 'demand');
    const promoted = f.fetch(refs[20]!, 'demand'); // queued as prefetch, now wanted by a fault
    await Promise.all([...jobs, demand, promoted]);
    const pos = (r: { hash: string }) => order.findIndex((u) => u.includes(r.hash));
    // The demands take the demand slot one after the other while the prefetch slot keeps going: at
    // most a few prefetches precede them, never the 29 queued.
    expect(pos(refs[35]!)).toBeLessThanOrEqual(2);
    expect(pos(refs[20]!)).toBeLessThanOrEqual(3);
    expect(order).toHaveLength(31);
  });

  it('keeps slots for demand: prefetches holding every prefetch slot on a stalled origin do not delay a demand', async () => {
    const root2 = path.join(tmp.dir, 'slots');
    const refs = await plainChunks(root2, 9);
    const wanted = refs[8]!;
    // The origin holds every prefetched chunk for 1.5 s, and answers the demanded one at once.
    const o = await fakeOrigin(root2, (_n, url) => (url.includes(wanted.hash) ? 'ok' : { delayMs: 1500 }));
    const store = new HttpStore(o.url, { connections: 16 });
    closers.push(async () => (await store.close(), await o.close()));
    const f = await fetcher({
      origins: [store],
      concurrency: 4,
      prefetchConcurrency: 4,
      attemptTimeoutMs: 60_000,
    });
    const slow = refs.slice(0, 8).map((r) => f.fetch(r, 'prefetch'));
    await expect.poll(() => f.running().prefetch).toBe(4);
    expect(f.pending().prefetch).toBe(4);
    await f.fetch(wanted, 'demand');
    expect(f.bytesOf(wanted.chunk).readUInt8(0)).toBe(9);
    expect(f.running().prefetch).toBe(4); // still held: the demand did not wait for any of them
    await Promise.all(slow);
  });

  it("counts a demand's patience from when its fetch starts, not while it is queued", async () => {
    // One demand slot, held by a fetch that takes 600 ms; the next demand (patience 400 ms) waits in
    // the queue longer than its patience but is served, because its clock starts when its fetch does.
    const root2 = path.join(tmp.dir, 'patience');
    const a = Buffer.alloc(CS, 1);
    const b = Buffer.alloc(CS, 2);
    const ra = { chunk: 1, hash: hashChunk(a), codec: 'none' as const, length: CS };
    const rb = { chunk: 2, hash: hashChunk(b), codec: 'none' as const, length: CS };
    await new FileStore(root2).put(chunkKey(ra.hash, 'none'), a);
    await new FileStore(root2).put(chunkKey(rb.hash, 'none'), b);
    const o = await fakeOrigin(root2, (_n, url) => (url.includes(ra.hash) ? { delayMs: 600 } : 'ok'));
    const store = new HttpStore(o.url);
    closers.push(async () => (await store.close(), await o.close()));
    const f = await fetcher({ origins: [store], concurrency: 1 });
    const first = f.fetch(ra, 'demand', { patienceMs: 5000 });
    const second = f.fetch(rb, 'demand', { patienceMs: 400 });
    expect((await second).tier).toBe('origin0');
    expect(f.bytesOf(2).equals(b)).toBe(true);
    expect((await first).tier).toBe('origin0');
    expect(f.bytesOf(1).equals(a)).toBe(true);
  });

  it('asks the next origin when the first does not answer, instead of spending the patience retrying it', async () => {
    // Found by the chaos soak: a silent first origin was retried (3 attempts x the attempt timeout)
    // past the fault's patience while a healthy second origin was never asked.
    const silent = await http(() => 'stall');
    const good = await http(() => 'ok');
    const f = await fetcher({ origins: [silent.store, good.store], attemptTimeoutMs: 300, retries: 2 });
    const t0 = performance.now();
    const got = await f.fetch(ref, 'demand', { patienceMs: 1000 });
    expect(got.tier).toBe('origin1');
    expect(performance.now() - t0).toBeLessThan(900);
    expect(silent.o.requests).toHaveLength(1);
  });

  it('tells a caller whose patience ran out what failed so far, while the fetch goes on for a later one', async () => {
    // The chaos soak's case: a session joins a fetch another started, with more patience; the first
    // one's fail-closed line must still say what the origins did, not only that time ran out.
    const a = await http(() => 'stall');
    const f = await fetcher({ origins: [a.store], attemptTimeoutMs: 200 });
    // Patience of several attempt timeouts: the first attempt can start late (a loader thread that
    // is still starting on a loaded runner), and it must have timed out before the patience ends.
    const first = f.fetch(ref, 'demand', { patienceMs: 1200 }).catch((x: unknown) => x);
    await new Promise((r) => setTimeout(r, 100));
    const second = f.fetch(ref, 'demand', { patienceMs: 3000 }).catch((x: unknown) => x);
    const e = await first;
    expect(e).toBeInstanceOf(FetchError);
    expect((e as FetchError).errors.at(-1)).toBe('no verified chunk within 1200 ms');
    expect((e as FetchError).errors.some((l) => /no answer within \d+ ms/.test(l))).toBe(true);
    expect(await second).toBeInstanceOf(FetchError); // the origin never answers: it fails in its own time
  });

  it("hedges a demand request that outlasts the origin's p95: a second request answers, the slow one is aborted", async () => {
    const root2 = path.join(tmp.dir, 'hedge');
    const refs = await plainChunks(root2, 24);
    const slow = refs[23]!;
    const run = async (hedge: boolean) => {
      let seen = 0;
      // The first request for `slow` takes 2 s; every other answer comes at once.
      const o = await fakeOrigin(root2, (_n, url) =>
        url.includes(slow.hash) && seen++ === 0 ? { delayMs: 2000 } : 'ok',
      );
      const store = new HttpStore(o.url);
      closers.push(async () => (await store.close(), await o.close()));
      const hedges: string[] = [];
      const f = await fetcher({ origins: [store], hedge, onHedge: (h) => hedges.push(h) });
      for (const r of refs.slice(0, 23)) await f.fetch(r, 'demand'); // the origin's p95, learned
      hedges.length = 0; // a priming request past the p95 may have been hedged too: only `slow` counts
      await f.fetch(slow, 'demand');
      expect(f.bytesOf(slow.chunk).readUInt8(0)).toBe(24);
      return { hedges, requests: o.requests.filter((u) => u.includes(slow.hash)).length };
    };
    const on = await run(true);
    expect(on.hedges).toEqual(['won']);
    // The hedge answered while the first was still held back: it won. A second hedge is possible: the
    // first, on a new connection, may outlast twice the p95 of bodies over warm ones (a few ms here).
    expect(on.requests).toBeGreaterThanOrEqual(2);
    expect(on.requests).toBeLessThanOrEqual(3);
    const off = await run(false);
    expect(off.hedges).toEqual([]);
    expect(off.requests).toBe(1); // without hedging the fetch waited the whole 2 s for its only request
  });

  it('hedges a demand request its origin has not answered by the p95 of its answers, not of its bodies', async () => {
    // Every answer comes at once and its body 250 ms later: the p95 of whole bodies is ≥ 250 ms, that of
    // answers a few ms. The request for `slow` gets no answer for 2 s: hedged on answers, its hedge goes
    // out within a few ms; hedged on bodies alone, no sooner than 250 ms.
    const root2 = path.join(tmp.dir, 'hedge-answer');
    const refs = await plainChunks(root2, 24);
    const slow = refs[23]!;
    let seen = 0;
    const o = await fakeOrigin(root2, (_n, url) =>
      url.includes(slow.hash) ? (seen++ === 0 ? { delayMs: 2000 } : 'ok') : { bodyDelayMs: 250 },
    );
    const store = new HttpStore(o.url);
    closers.push(async () => (await store.close(), await o.close()));
    const hedges: string[] = [];
    const f = await fetcher({ origins: [store], onHedge: (h) => hedges.push(h) });
    // Learned concurrently: no hedge meanwhile (20 whole bodies are needed before any).
    await Promise.all(refs.slice(0, 23).map((r) => f.fetch(r, 'demand')));
    expect(hedges).toEqual([]);
    await f.fetch(slow, 'demand');
    expect(f.bytesOf(slow.chunk).readUInt8(0)).toBe(24);
    expect(hedges).toEqual(['won']);
    const at = o.requests.flatMap((u, i) => (u.includes(slow.hash) ? [o.arrivals[i]!] : []));
    expect(at).toHaveLength(2);
    expect(at[1]! - at[0]!).toBeLessThan(200);
  });
});
