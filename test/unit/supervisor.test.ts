/**
 * Issue 13: a crash of the worker that serves restores loses no VM (runtime/supervisor/). Real
 * processes throughout: `lazysnap serve` through the CLI (supervisor and worker), Firecracker-exact
 * clients (test/fixtures/fc-client.c), s3rver behind a delay proxy as the S3-like origin, and SIGKILL
 * for the crashes. The decoder crash and the kill between a REMOVE and its application are test-build
 * triggers (LAZYSNAP_NATIVE_BUILD=test): a crash cannot be caused on demand otherwise.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { startDelayProxy, type DelayProxy } from '../../bench/lib/delay-proxy.js';
import { createSnapshot } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { chunkCodec, chunkHash, parseManifest } from '../../store/manifest.js';
import { closeFd, connectUnix } from '../../native/index.js';
import {
  HANDOVER_VERSION,
  ownVersions,
  type ToNew,
  type ToOld,
  type Versions,
} from '../../runtime/supervisor/handover.js';
import { Link } from '../../runtime/supervisor/link.js';
import { deniedSyscalls } from '../../runtime/supervisor/sandbox.js';
import { moduleCommand } from '../../core/worker.js';
import { chunkKey } from '../../store/keys.js';
import { S3Store } from '../../store/s3-store.js';
import { startClient, type ClientResult, type RunningClient } from '../helpers/fc-client.js';
import { makeImage, tempDir, type TestImage } from '../helpers/images.js';
import { startS3rver, useS3rverEnv, type S3rverHandle } from '../helpers/s3rver.js';
import { bounded, fdKinds, startServe, until, type FdKinds } from '../helpers/serve-process.js';
import { startFdStore } from '../helpers/fd-store.js';
import { seededRandom } from '../helpers/seeded-random.js';
import { snapshotTo } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const MiB = 1024 * 1024;
const CS = 512 * 1024;
const PAGE = 4096;
const CLIENT_BOUND_MS = 180_000;

/** What a leak would show: every descriptor kind but origin connections (TCP), which come and go. */
const held = (k: FdKinds) => ({ uffd: k.uffd, pidfd: k.pidfd, memfd: k.memfd, unix: k.unix, file: k.file });

function expectAllVerified(r: ClientResult, image: TestImage): void {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: image.bytes.length / PAGE });
}

describe.skipIf(!hasUffd)(uffdSuite('supervised serve: worker crashes lose no VM'), () => {
  let tmp: ReturnType<typeof tempDir>;
  const cleanup: (() => Promise<unknown> | void)[] = [];
  beforeAll(() => {
    tmp = tempDir('lazysnap-supervisor-');
  });
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  afterAll(() => tmp.cleanup());

  /** n clients restoring `image`; with `hold`, each stays connected after its report until released. */
  const clientsOf = (
    sock: string,
    image: TestImage,
    n: number,
    extra: (i: number) => string[],
    hold = false,
  ) =>
    Array.from({ length: n }, (_, i) => {
      const c = startClient([
        '--socket',
        sock,
        '--image',
        image.path,
        '--threads',
        '2',
        '--order',
        'random',
        '--seed',
        String(i + 1),
        ...extra(i),
        ...(hold ? ['--linger'] : []),
      ]);
      cleanup.push(() => void c.child.kill('SIGKILL'));
      if (!hold) c.release();
      return c;
    });

  describe('from an S3-like origin', () => {
    let s3: S3rverHandle;
    let proxy: DelayProxy;
    /** serve of snapshot "vm" from s3rver behind the delay proxy, prefetch off: every page a fault. */
    const viaProxy = () => [
      ...['--store', 's3://snaps/prod', '--s3-endpoint', proxy.url],
      ...['--id', 'vm', '--prefetch', 'off'],
    ];
    let image: TestImage;
    let restoreEnv = () => {};
    beforeAll(async () => {
      image = makeImage(tmp.dir, 96 * MiB, CS, { zeroEvery: 7, name: 's3.bin' });
      s3 = await startS3rver('snaps');
      restoreEnv = useS3rverEnv();
      const src = await openMemoryFile(image.path);
      // "other" (the same memory under another id) is what a serve that cannot adopt "vm" serves.
      for (const id of ['vm', 'other'])
        await createSnapshot({
          source: src,
          store: new S3Store({ bucket: 'snaps', prefix: 'prod', endpoint: s3.endpoint }),
          id,
          chunkSize: CS,
        });
      await src.close();
      // S3 seen from a VM host: every answer's first byte late, every connection paced.
      const u = new URL(s3.endpoint);
      proxy = await startDelayProxy({
        target: { host: u.hostname, port: Number(u.port) },
        firstByteMs: 20,
        bytesPerSecond: 1.5e6,
      });
    }, 120_000);
    afterAll(async () => {
      await proxy?.close();
      await s3?.stop();
      restoreEnv();
    });

    it('8 clients mid-restore, the worker SIGKILLed 20 times at random moments: every page verified, ballooned pages zero, no fd left behind', async () => {
      const sock = path.join(tmp.dir, 'run-kills', 'fc.sock');
      // 20 deaths in well under a minute: answered at once, which is the point of the test.
      const sp = await startServe(sock, [...viaProxy(), '--restart-burst', '30']);
      cleanup.push(() => sp.stop());
      // The worker collected its start-up garbage before it said it was ready (core/heap.ts).
      expect(sp.logs.find((l) => l.msg === 'serving')).toMatchObject({ heapSettleMs: expect.any(Number) });
      const baseline = held(fdKinds(sp.pid));
      // Two clients balloon a range after their restore, so REMOVEs race some of the kills too.
      const clients = clientsOf(sock, image, 8, (i) =>
        i % 4 === 0 ? ['--balloon', `${8 * MiB}:${2 * MiB}`] : [],
      );
      let running = clients.length;
      for (const c of clients) void c.result.then(() => running--);

      let kills = 0;
      let lastWorker: number | undefined;
      const rng = seededRandom(13); // the kill moments are random but the same in every run
      while (kills < 20 && running > 0) {
        // The next worker must be serving (a line naming it) before it is killed in turn.
        const ok = await until(() => {
          const w = sp.workerPid();
          return w !== undefined && w !== lastWorker;
        }, 30_000);
        expect(ok, 'a worker serving again after a kill').toBe(true);
        await sleep(50 + rng() * 400);
        if (running === 0) break;
        lastWorker = sp.workerPid()!;
        process.kill(lastWorker, 'SIGKILL');
        kills++;
      }
      expect(kills, 'the clients were still restoring at the 20th kill').toBe(20);

      const results = await bounded(Promise.all(clients.map((c) => c.result)), CLIENT_BOUND_MS, 'clients');
      for (const [i, r] of results.entries()) {
        expectAllVerified(r, image);
        if (i % 4 === 0)
          expect(r.report!.balloon).toEqual({ zeroPages: 512, nonZeroPages: 0, outsideOk: true });
      }
      const deaths = sp.logs.filter((l) => l.msg.startsWith('the worker died'));
      expect(deaths).toHaveLength(20);
      expect(deaths.every((l) => l.signal === 'SIGKILL')).toBe(true);
      expect(sp.logs.filter((l) => l.msg === 'restore session adopted').length).toBeGreaterThan(0);

      // Every session ended (clients exited): the supervisor holds what it held before them.
      const settled = await until(
        () => JSON.stringify(held(fdKinds(sp.pid))) === JSON.stringify(baseline),
        10_000,
      );
      expect(held(fdKinds(sp.pid))).toEqual(baseline);
      expect(settled).toBe(true);
      // And the worker serving now holds no session's descriptors.
      expect(fdKinds(sp.workerPid()!)).toMatchObject({ uffd: 0, pidfd: 0 });
      expect(await sp.stop()).toEqual({ code: 0, signal: null });
    }, 300_000);
    it('an upgrade during 8 restores: a new serve (--take-over) takes every session, the old one exits 0, all finish verified', async () => {
      const sock = path.join(tmp.dir, 'run-upgrade', 'fc.sock');
      const args = viaProxy();
      const old = await startServe(sock, args);
      cleanup.push(() => old.stop());
      // Held after their reports, so that all 8 sessions are still open when the successor takes over
      // however long its start and warming take on a loaded machine (a client that finished first and
      // hung up would leave 7 to hand over).
      const clients = clientsOf(sock, image, 8, () => [], true);
      let finished = 0;
      for (const c of clients) void c.reported.then(() => finished++);
      await old.waitForLog(
        () => old.logs.filter((l) => l.msg === 'restore session started').length === 8,
        30_000,
        '8 sessions',
      );
      await sleep(300); // mid-restore: faults are waiting on the origin
      expect(finished, 'no client had finished before the upgrade').toBe(0);
      const neu = await startServe(sock, [...args, '--take-over']);
      cleanup.push(() => neu.stop());
      expect(await bounded(old.exited, 20_000, 'the old serve')).toEqual({ code: 0, signal: null });
      for (const c of clients) c.release();
      const results = await bounded(Promise.all(clients.map((c) => c.result)), CLIENT_BOUND_MS, 'clients');
      for (const r of results) expectAllVerified(r, image);
      expect(old.logs.some((l) => l.msg === 'handed over: exiting')).toBe(true);
      expect(neu.logs.find((l) => l.msg === 'took over')).toMatchObject({ sessions: 8 });
      expect(neu.logs.find((l) => l.msg === 'handover complete')).toMatchObject({ sessions: 8 });
      // The successor fetched what the old worker held before it took over (runtime/supervisor/warm-table.ts).
      const warmed = neu.logs.find((l) => l.msg.startsWith('warmed the chunk table'));
      expect(warmed?.chunks).toBeGreaterThan(0);
      expect(warmed?.fetched).toBeGreaterThan(0);
      expect(neu.logs.filter((l) => l.msg === 'restore session adopted')).toHaveLength(8);
      expect([...old.problems(), ...neu.problems()]).toEqual([]);
      // The socket is the new serve's now: a restore after the old one left is served.
      const [late] = clientsOf(sock, image, 1, () => []);
      expectAllVerified(await bounded(late!.result, CLIENT_BOUND_MS, 'a client after the upgrade'), image);
    }, 180_000);

    it('the control socket: versions it cannot read are refused; a successor that dies mid-handover leaves the old serve serving', async () => {
      const sock = path.join(tmp.dir, 'run-ctl', 'fc.sock');
      const sp = await startServe(sock, viaProxy());
      cleanup.push(() => sp.stop());
      const clients = clientsOf(sock, image, 2, () => []);
      await sp.waitForLog(
        () => sp.logs.filter((l) => l.msg === 'restore session started').length === 2,
        30_000,
        '2 sessions',
      );
      const talk = (hello: Versions, take: boolean) =>
        new Promise<{ got: ToNew[]; fds: number }>((resolve) => {
          const got: ToNew[] = [];
          let fds = 0;
          const link: Link<ToNew, ToOld> = new Link<ToNew, ToOld>(
            connectUnix(`${sock}.ctl`, true),
            (msg, f) => {
              got.push(msg);
              fds += f.length;
              for (const fd of f) closeFd(fd);
              if (msg.t === 'offer' && take) link.send({ t: 'take' });
              // Everything received, then gone without an 'ok': a successor that died.
              if (msg.t === 'refuse' || msg.t === 'done') {
                link.close();
                resolve({ got, fds });
              }
            },
            () => resolve({ got, fds }),
            HANDOVER_VERSION,
          );
          link.send({ t: 'hello', versions: hello, pid: process.pid });
        });
      const mine = ownVersions('vm', 'test');
      const refused = await talk({ ...mine, state: mine.state + 1 }, true);
      expect(refused.got).toEqual([
        { t: 'refuse', reason: expect.stringMatching(/session state layout/), v: HANDOVER_VERSION },
      ]);
      const dropped = await talk(mine, true);
      expect(dropped.got.map((m) => m.t)).toEqual(['offer', 'listen', 'session', 'session', 'done']);
      expect(dropped.fds).toBe(1 + 2 * 4);
      // The old serve takes its sessions back into a new worker, and they finish.
      await sp.waitForLog(
        (l) => l.msg === 'serving again after a failed handover',
        30_000,
        'a resumed serve',
      );
      for (const r of await bounded(Promise.all(clients.map((c) => c.result)), CLIENT_BOUND_MS, 'clients'))
        expectAllVerified(r, image);
      expect(sp.child.exitCode).toBe(null);
    }, 180_000);

    it('under a service manager with the fd store (Restart= after a crash of serve itself): the next instance adopts every session from LISTEN_FDS', async () => {
      const sock = path.join(tmp.dir, 'run-fdstore', 'fc.sock');
      const notifyPath = path.join(tmp.dir, 'notify.sock');
      const args = [...viaProxy(), '--fd-store'];
      const store = startFdStore(notifyPath);
      cleanup.push(() => store.close());
      await store.ready;
      const first = await startServe(sock, args, { env: { NOTIFY_SOCKET: notifyPath } });
      cleanup.push(() => first.stop());
      const clients = clientsOf(sock, image, 3, () => []);
      // Every session's four descriptors are in the store once the worker has them.
      expect(
        await until(() => store.notices.filter((n) => /FDNAME=s\d+\.uffd/.test(n)).length === 3, 30_000),
      ).toBe(true);
      expect(store.notices.some((n) => n.startsWith('READY=1'))).toBe(true);
      expect(store.notices.some((n) => n === 'FDSTORE=1|FDNAME=listen')).toBe(true);
      // serve itself (the supervisor) dies: its worker follows, nobody serves; the store keeps it all.
      const procs = first.pids();
      first.child.kill('SIGKILL');
      await first.exited;
      expect(await until(() => procs.every((p) => !existsSync(`/proc/${p}`)), 5000)).toBe(true);
      const next = await store.start([
        process.execPath,
        '--import',
        'tsx',
        'cli/bin.ts',
        'serve',
        '--socket',
        sock,
        ...args,
      ]);
      cleanup.push(() => void process.kill(next, 'SIGKILL'));
      const serving = await store.waitForLog((l) => l.msg === 'serving', 30_000);
      expect(serving).toMatchObject({ sessions: 3 });
      for (const r of await bounded(Promise.all(clients.map((c) => c.result)), CLIENT_BOUND_MS, 'clients'))
        expectAllVerified(r, image);
      expect(store.logs.filter((l) => l.msg === 'restore session adopted')).toHaveLength(3);
      // Ended sessions leave the store (FDSTOREREMOVE): what is left is the listening socket.
      expect(await until(() => store.list().length === 1, 10_000)).toBe(true);
      expect(store.list()).toEqual(['listen']);
      process.kill(next, 'SIGTERM'); // no systemd job here: a drain, and exit
      expect(
        await until(
          () => !existsSync(`/proc/${next}`) || readFileSync(`/proc/${next}/stat`, 'utf8').includes(') Z'),
          20_000,
        ),
      ).toBe(true);
    }, 180_000);

    it('a successor that cannot adopt is refused, and the running serve keeps serving', async () => {
      const sock = path.join(tmp.dir, 'run-refuse', 'fc.sock');
      const args = ['--store', 's3://snaps/prod', '--s3-endpoint', s3.endpoint, '--prefetch', 'off'];
      const old = await startServe(sock, [...args, '--id', 'vm']);
      cleanup.push(() => old.stop());
      const [before] = clientsOf(sock, image, 1, () => []);
      // A serve of another snapshot on this socket cannot adopt sessions restoring "vm".
      const refused = await startServe(sock, [...args, '--id', 'other', '--take-over']).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(refused?.message).toMatch(/handover refused: .*serves snapshot/);
      expect(old.logs.some((l) => l.msg === 'handover refused; still serving')).toBe(true);
      // Still serving: the session that was live finishes, and a new one restores.
      expectAllVerified(await bounded(before!.result, CLIENT_BOUND_MS, 'client'), image);
      const [after] = clientsOf(sock, image, 1, () => []);
      expectAllVerified(await bounded(after!.result, CLIENT_BOUND_MS, 'client'), image);
      expect(old.child.exitCode).toBe(null);
    }, 120_000);
  });

  it('the worker sandbox: execve is refused with EPERM in every thread, serving calls still work', () => {
    const { command, args } = moduleCommand(new URL('../fixtures/seccomp-probe.js', import.meta.url));
    const r = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    if (process.arch !== 'x64') {
      expect(out.confined).toMatchObject({ skipped: expect.stringMatching(/no system call list/) as string });
      return;
    }
    expect(out).toEqual({
      confined: { denied: deniedSyscalls().length },
      seccomp: '2',
      exec: 'EPERM',
      execInThread: 'EPERM',
      memfd: true,
    });
  });

  describe('test-build triggers', () => {
    let image: TestImage;
    let store: string;
    beforeAll(async () => {
      image = makeImage(tmp.dir, 24 * MiB, CS, { zeroEvery: 5, name: 'local.bin' });
      store = path.join(tmp.dir, 'store');
      await snapshotTo(store, image.path, 'vm', CS);
    });
    const TEST_BUILD = { LAZYSNAP_NATIVE_BUILD: 'test' };

    it('a balloon REMOVE the worker read, then died before applying: the next worker applies it, the pages read zero', async () => {
      const sock = path.join(tmp.dir, 'run-balloon', 'fc.sock');
      const sp = await startServe(sock, ['--store', store, '--id', 'vm'], {
        env: { ...TEST_BUILD, LAZYSNAP_TEST_DIE_ON_REMOVE: '1' },
      });
      cleanup.push(() => sp.stop());
      // Under memory pressure the kernel takes the worker (a restart) before the supervisor (an outage).
      const adj = (pid: number) => Number(readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8'));
      expect(adj(sp.workerPid()!)).toBe(Math.min(1000, adj(sp.pid) + 500));
      // The worker gave up what it does not need (sandbox.ts): no new privileges, a seccomp filter; the
      // supervisor, which parses nothing from the network, keeps neither.
      const status = (pid: number) => readFileSync(`/proc/${pid}/status`, 'utf8');
      expect(status(sp.workerPid()!)).toMatch(/NoNewPrivs:\s+1[\s\S]*Seccomp:\s+2/);
      expect(status(sp.pid)).toMatch(/Seccomp:\s+0/);
      const [c] = clientsOf(sock, image, 1, () => ['--balloon', `${4 * MiB}:${3 * MiB}`]);
      const r = await bounded(c!.result, CLIENT_BOUND_MS, 'client');
      expectAllVerified(r, image);
      expect(r.report!.balloon).toEqual({ zeroPages: (3 * MiB) / PAGE, nonZeroPages: 0, outsideOk: true });
      // The trigger fired: the worker died on the REMOVE, and the session was adopted with it.
      const death = sp.logs.find((l) => l.msg.startsWith('the worker died'));
      expect(death).toMatchObject({ signal: 'SIGKILL', sessions: 1 });
      expect(sp.logs.some((l) => l.msg === 'restore session adopted')).toBe(true);
    });

    it('a chunk that crashes the decoder every time: its session fails closed after a bounded number of restarts, the others finish', async () => {
      // Chunk 9 (not a zero chunk) is replaced by an object that crashes the test build's loader.
      const bad = 9;
      const ix = parseManifest(readFileSync(path.join(store, 'manifests', 'vm.json')));
      const file = path.join(store, chunkKey(chunkHash(ix, bad)!, chunkCodec(ix, bad)!));
      expect(existsSync(file)).toBe(true);
      const original = readFileSync(file);
      writeFileSync(file, Buffer.concat([Buffer.from('LAZYSNAP-TEST-CRASH'), original.subarray(19)]));
      cleanup.push(() => writeFileSync(file, original));

      const sock = path.join(tmp.dir, 'run-crash', 'fc.sock');
      const sp = await startServe(sock, ['--store', store, '--id', 'vm', '--fail-closed', 'kill'], {
        env: TEST_BUILD,
      });
      cleanup.push(() => sp.stop());
      const avoid = `${bad * CS}:${CS}`;
      const others = clientsOf(sock, image, 3, () => ['--avoid', avoid, '--threads', '1']);
      const victim: RunningClient = clientsOf(sock, image, 1, () => [])[0]!;
      const v = await bounded(victim.result, CLIENT_BOUND_MS, 'the client that needs the bad chunk');
      expect(v.signal).toBe('SIGKILL'); // failed closed, never left hung
      for (const o of others) {
        const r = await bounded(o.result, CLIENT_BOUND_MS, 'client');
        expect(r.stderr).toBe('');
        expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
        expect(r.report!.pagesVerified).toBe(image.bytes.length / PAGE - CS / PAGE);
      }
      const deaths = sp.logs.filter((l) => l.msg.startsWith('the worker died'));
      // Bounded: as many deaths as it takes to name the chunk (3), not a crash loop.
      expect(deaths.length).toBe(3);
      expect(deaths.every((l) => l.signal === 'SIGSEGV')).toBe(true);
      expect(deaths.at(-1)!.inFlight).toEqual([bad]);
      expect(
        sp.logs.some((l) => JSON.stringify(l).includes(`chunk ${bad} was being decoded each of the 3 times`)),
      ).toBe(true);
      // serve goes on: a new client that avoids the chunk restores.
      const [late] = clientsOf(sock, image, 1, () => ['--avoid', avoid]);
      expect((await bounded(late!.result, CLIENT_BOUND_MS, 'late client')).report).toMatchObject({
        ok: true,
      });
    });
  });
});
