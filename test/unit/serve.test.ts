/**
 * `serve` end to end: the Firecracker-exact client restores through the server's socket and verifies
 * every byte; origins fail, lie or vanish; handshakes are malformed; clients come eight at a time.
 */
import { cpSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { closeFd, connectUnix, createUffd, recvWithFds, sendWithFds } from '../../native/index.js';
import type { RestoreServer } from '../../runtime/restore-server.js';
import { runClient, startClient } from '../helpers/fc-client.js';
import { fakeOrigin } from '../helpers/fault-origin.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, kernelHasPoison, uffdSuite } from '../helpers/skip.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;
const hasPoison = kernelHasPoison();

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** GET without keep-alive, so the test itself holds no socket afterwards. */
function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
        let body = '';
        res
          .setEncoding('utf8')
          .on('data', (d: string) => (body += d))
          .on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

async function originFetches(server: RestoreServer): Promise<number> {
  const m = await server.metrics.fetches.get();
  return m.values.filter((v) => String(v.labels.tier).startsWith('origin')).reduce((n, v) => n + v.value, 0);
}

async function originBytes(server: RestoreServer): Promise<number> {
  const m = await server.metrics.fetchBytes.get();
  return m.values.filter((v) => String(v.labels.tier).startsWith('origin')).reduce((n, v) => n + v.value, 0);
}

/** The sizes of a directory store's chunk objects. */
function objectSizes(store: string): number[] {
  const dir = path.join(store, 'chunks');
  return readdirSync(dir, { recursive: true })
    .map((f) => statSync(path.join(dir, String(f))))
    .filter((st) => st.isFile())
    .map((st) => st.size);
}

describe.skipIf(!hasUffd)(uffdSuite('lazysnap serve'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: RestoreServer | undefined;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 16 * MiB, CS, { zeroEvery: 4 });
    await snapshotTo(store, img.path, 'vm', CS);
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  it('restores every byte through the socket, two regions, with a per-session summary and metrics', async () => {
    const before = openFds();
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      cacheDir: path.join(tmp.dir, 'cache'),
      metricsPort: 0,
    });
    expect(statSync(server.socketPath).mode & 0o777).toBe(0o600);
    expect(statSync(path.dirname(server.socketPath)).mode & 0o777).toBe(0o700);
    const r = await runClient([
      '--socket',
      server.socketPath,
      '--image',
      img.path,
      '--threads',
      '4',
      '--regions',
      '12M,4M',
    ]);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 4096 });
    const [s] = await summaries(server, 1);
    const nonZero = 64 - img.zeroChunks.length;
    expect(s).toMatchObject({
      outcome: 'ended',
      fetchedChunks: nonZero,
      failedChunks: [],
      hitsByTier: { origin0: nonZero },
    });
    expect(s!.timeToFirstFaultServedMs).toBeGreaterThan(0);
    expect(s!.zeroFaults).toBeGreaterThanOrEqual(1);
    const metrics = await scrape(server.metricsPort!);
    // One origin fetch per chunk, whatever asked for it (a fault, or read-ahead after a forward step).
    const fetched = [...metrics.matchAll(/lazysnap_fetches_total\{tier="origin0",priority="\w+"\} (\d+)/g)];
    expect(fetched.reduce((n, m) => n + Number(m[1]), 0)).toBe(nonZero);
    expect(metrics).toMatch(/lazysnap_sessions_active 0/);
    expect(metrics).toMatch(/lazysnap_fetch_seconds_bucket/);
    await server.close(0);
    server = undefined;
    // The scrape's socket closes asynchronously; everything of the server's is closed by now.
    for (let i = 0; i < 100 && openFds() !== before; i++) await sleep(10);
    expect(openFds()).toBe(before);
  });

  it('serves a second restore from the disk cache and eight concurrent restores with one fetch per chunk', async () => {
    const cacheDir = path.join(tmp.dir, 'cache');
    server = await serve(tmp.dir, { stores: [store], id: 'vm', cacheDir });
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        runClient(['--socket', server!.socketPath, '--image', img.path, '--threads', '2']),
      ),
    );
    for (const r of results)
      expect({ report: r.report, code: r.code, stderr: r.stderr }).toMatchObject({
        report: { ok: true, mismatches: 0 },
        code: 0,
        stderr: '',
      });
    await summaries(server, 8);
    // Shared table + in-flight dedup: each chunk read from the store once, for eight restores, or twice: a
    // local store's chunk is kept in memory from its second load on (MemoryTier.keepLoaded), and the host
    // cache is filled from the store's objects, not from copies kept for it. Every read is a whole object:
    // a read that found the chunk resident through another thread's load is not a fetch (b4673f8).
    const nonZero = 64 - img.zeroChunks.length;
    const fetches = await originFetches(server);
    expect(fetches).toBeGreaterThanOrEqual(nonZero);
    expect(fetches).toBeLessThanOrEqual(2 * nonZero);
    const sizes = objectSizes(store);
    expect(sizes).toHaveLength(nonZero);
    const once = sizes.reduce((a, b) => a + b, 0);
    expect(await originBytes(server)).toBeGreaterThanOrEqual(once + (fetches - nonZero) * Math.min(...sizes));
    await server.close(0);
    // A new server (cold memory) finds everything in the host disk cache.
    server = await serve(tmp.dir, { stores: [store], id: 'vm', cacheDir });
    rmSync(path.join(store, 'chunks'), { recursive: true });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path]);
    expect(r.report).toMatchObject({ ok: true });
    const [s] = await summaries(server, 1);
    expect(s!.hitsByTier).toMatchObject({ disk: 64 - img.zeroChunks.length });
  });

  it('falls through to the next origin when the first lacks a chunk or serves corrupt bytes', async () => {
    const bad = path.join(tmp.dir, 'bad');
    cpSync(store, bad, { recursive: true });
    const files = readdirSync(path.join(bad, 'chunks'), { recursive: true })
      .map(String)
      .filter((f) => f.endsWith('.zstd'));
    rmSync(path.join(bad, 'chunks', files[0]!));
    writeFileSync(path.join(bad, 'chunks', files[1]!), 'not zstd at all');
    server = await serve(tmp.dir, { stores: [bad, store], id: 'vm', retries: 0 });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '4']);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
    const [s] = await summaries(server, 1);
    expect(s!.hitsByTier.origin1).toBe(2);
    expect(s!.failedChunks).toEqual([]);
  });

  it.skipIf(!hasPoison)(
    'fails closed when no origin can deliver: the client dies of SIGBUS within the bound',
    async () => {
      const empty = path.join(tmp.dir, 'empty');
      cpSync(path.join(store, 'manifests'), path.join(empty, 'manifests'), { recursive: true });
      server = await serve(tmp.dir, {
        stores: [empty],
        id: 'vm',
        failTimeoutMs: 1500,
        attemptTimeoutMs: 200,
      });
      const t0 = Date.now();
      const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
      expect({ signal: r.signal, code: r.code }).toEqual({ signal: 'SIGBUS', code: null });
      expect(Date.now() - t0).toBeLessThan(5000);
      const [s] = await summaries(server, 1);
      expect(s!.failedChunks.length).toBeGreaterThanOrEqual(1);
    },
  );

  it('fails closed with SIGKILL when told to (or where the kernel cannot poison)', async () => {
    const empty = path.join(tmp.dir, 'empty');
    cpSync(path.join(store, 'manifests'), path.join(empty, 'manifests'), { recursive: true });
    server = await serve(tmp.dir, {
      stores: [empty],
      id: 'vm',
      failTimeoutMs: 500,
      attemptTimeoutMs: 100,
      failClosed: 'kill',
    });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
    expect(r.signal).toBe('SIGKILL');
    const [s] = await summaries(server, 1);
    expect(s!.outcome).toBe('killed');
  });

  it('rejects malformed handshakes with a logged reason and keeps serving a good client', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', handshakeTimeoutMs: 300 });
    const uffd = createUffd();
    const ok = (extra = {}) => ({
      base_host_virt_addr: 0x7f0000000000,
      size: 4 * MiB,
      offset: 0,
      page_size: 4096,
      page_size_kib: 4096,
      ...extra,
    });
    const cases: [string, Buffer, number[]][] = [
      ['garbage', Buffer.from('\x00\x01garbage{'), [uffd]],
      ['not an array', Buffer.from(JSON.stringify(ok())), [uffd]],
      ['no fd', Buffer.from(JSON.stringify([ok()])), []],
      ['two fds', Buffer.from(JSON.stringify([ok()])), [uffd, uffd]],
      ['overlapping regions', Buffer.from(JSON.stringify([ok(), ok({ offset: 4 * MiB })])), [uffd]],
      [
        'page size 12345',
        Buffer.from(JSON.stringify([ok({ page_size: 12345, page_size_kib: 12345 })])),
        [uffd],
      ],
      ['region larger than the snapshot', Buffer.from(JSON.stringify([ok({ size: 32 * MiB })])), [uffd]],
      ['silence', Buffer.alloc(0), []],
    ];
    for (const [name, payload, fds] of cases) {
      const c = connectUnix(server.socketPath);
      if (payload.length) sendWithFds(c, payload, fds);
      // The server closes the connection: we read EOF.
      let eof = false;
      for (let i = 0; i < 200 && !eof; i++) {
        await sleep(5);
        const m = recvWithFds(c, 16, 0);
        eof = m !== null && m.data.length === 0;
      }
      expect(eof, name).toBe(true);
      closeFd(c);
    }
    closeFd(uffd);
    const errors = (await server.metrics.handshakeErrors.get()).values[0]!.value;
    expect(errors).toBe(cases.length);
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--payload', 'v1']);
    expect(r.report).toMatchObject({ ok: true });
  });

  it('refuses peers outside the uid allowlist: the connection is closed unread', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', allowUids: [424242] });
    const c = startClient(['--socket', server.socketPath, '--image', img.path, '--wait']);
    // Either the handshake went into the socket before the server dropped the connection (the
    // client then waits), or the drop came first and the client's sendmsg failed (EPIPE/ECONNRESET).
    const first = await Promise.race([c.ready.then(() => 'waiting'), c.result.then((r) => r.stderr)]);
    if (first !== 'waiting') expect(first).toMatch(/sendmsg|connect|Broken pipe|reset/i);
    await sleep(100);
    expect(server.sessions.size).toBe(0);
    expect((await server.metrics.handshakeErrors.get()).values[0]?.value ?? 0).toBe(0); // never read
    // A refused peer is not served at all: its faults would wait forever, so the test ends it.
    c.child.kill('SIGKILL');
    await c.result;
    expect(server.summaries).toEqual([]);
  });

  it('reports sessions as events and live per-session stats, and populates a live session on request (the SDK surface)', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'off' });
    const seen: string[] = [];
    server.on('session', (s) => seen.push(`session ${s.pid}`));
    server.on('sessionEnd', (s) => seen.push(`end ${s.pid} ${s.outcome}`));
    server.on('rejected', (r) => seen.push(`rejected ${r.reason}`));
    const bad = connectUnix(server.socketPath);
    sendWithFds(bad, Buffer.from('not json'), []);
    for (let i = 0; i < 200 && seen.length === 0; i++) await sleep(5);
    closeFd(bad);
    expect(seen).toEqual([expect.stringMatching(/^rejected invalid UFFD handshake: no file descriptor/)]);

    const c = startClient(['--socket', server.socketPath, '--image', img.path, '--wait', '--linger']);
    const pid = await c.ready;
    for (let i = 0; i < 200 && server.sessionStats().length === 0; i++) await sleep(5);
    expect(server.sessionStats()).toEqual([expect.objectContaining({ pid, fetchedChunks: 0, faults: 0 })]);
    // populate() installs every data chunk before the client touches anything: no fault reaches JS.
    await server.sessionOf(pid)!.populate();
    const nonZero = 64 - img.zeroChunks.length;
    expect(server.sessionStats()[0]).toMatchObject({ fetchedChunks: nonZero, forwardedFaults: 0 });
    c.go();
    await sleep(20);
    c.release();
    expect((await c.result).report).toMatchObject({ ok: true, mismatches: 0 });
    const [summary] = await summaries(server, 1);
    expect(summary).toMatchObject({ pid, fetchedChunks: nonZero, outcome: 'ended' });
    expect(seen.slice(1)).toEqual([`session ${pid}`, `end ${pid} ended`]);
  });

  it("populate() gives each fetch a fault's patience from when it starts: a long populate from a slow origin does not fail closed", async () => {
    // 48 data chunks, 400 ms each, fail timeout 1 s: all of them would not fit in one fault's
    // patience (48 / 16 connections x 400 ms = 1.2 s even if all were sent at once), each fits in its
    // own with 600 ms to spare (a loaded machine must not turn the margin into a failure).
    const o = await fakeOrigin(store, () => ({ delayMs: 400 }));
    server = await serve(tmp.dir, { stores: [o.url], id: 'vm', prefetch: 'off', failTimeoutMs: 1000 });
    try {
      const c = startClient(['--socket', server.socketPath, '--image', img.path, '--wait', '--linger']);
      const pid = await c.ready;
      for (let i = 0; i < 200 && !server.sessionOf(pid); i++) await sleep(5);
      await server.sessionOf(pid)!.populate();
      expect(server.sessionStats()[0]).toMatchObject({
        fetchedChunks: 64 - img.zeroChunks.length,
        forwardedFaults: 0,
      });
      c.go();
      await sleep(20);
      c.release();
      expect((await c.result).report).toMatchObject({ ok: true, mismatches: 0 });
      expect((await summaries(server, 1))[0]).toMatchObject({ failedChunks: [], outcome: 'ended' });
    } finally {
      await server.close(0);
      server = undefined;
      await o.close();
    }
  });

  it('shuts down gracefully: stops accepting, lets a live session finish, then stops', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm' });
    const c = startClient(['--socket', server.socketPath, '--image', img.path, '--wait', '--linger']);
    await c.ready;
    await sleep(50);
    const closing = server.close(10_000);
    await sleep(50);
    expect(() => connectUnix(server!.socketPath)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    c.go();
    await sleep(20);
    c.release();
    const r = await c.result;
    expect(r.report).toMatchObject({ ok: true });
    await closing;
    expect(server.summaries.map((s) => s.outcome)).toEqual(['ended']);
    server = undefined;
  });

  it("warms its fault path before listening without touching anything a peer sees: no resident chunk, no origin request, the snapshot's bytes", async () => {
    const requests: string[] = [];
    const o = await fakeOrigin(store, (_n, url) => (requests.push(url), 'ok'));
    try {
      const sessionsSeen: string[] = [];
      server = await serve(tmp.dir, { stores: [o.url], id: 'vm', prefetch: 'off' });
      server.on('session', (s) => sessionsSeen.push(s.restoreId));
      expect(server.warmUpMs).toBeGreaterThan(0);
      // The warm-up ran a whole RestoreSession of its own (serve can create userfaultfds here)...
      expect(server.warmUpSession).toBe(true);
      // ...in which a thread of serve's own faulted, and the fault took the demand path a peer's first
      // fault takes (crossed into JS, fetched, installed), not only populate's.
      expect(server.warmUpFault).toBe(true);
      // ...which nobody can see: no chunk resident, no request, no session counted, ended or summarized.
      expect(server.stats()).toMatchObject({ residentBytes: 0, sessions: 0 });
      expect(requests.filter((u) => u.startsWith('/chunks/'))).toEqual([]);
      expect(server.summaries).toEqual([]);
      const metrics = await server.metrics.registry.metrics();
      expect(metrics).not.toMatch(/^lazysnap_sessions_total\{/m);
      expect(metrics).not.toMatch(/^lazysnap_fetches_total\{/m);
      const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
      expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
      const [s] = await summaries(server, 1);
      expect(sessionsSeen).toEqual([s!.restoreId]);
      expect(s!.restoreId).not.toBe('warm-up');
    } finally {
      await o.close();
    }
  });
});
