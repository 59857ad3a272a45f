/**
 * Process faults: a client killed mid-session, `serve` told to stop (SIGTERM) during restores, and
 * `serve` killed outright (SIGKILL) with a supervisor that restarts it. What the peers of a killed
 * serve see is found out here for real, and written down in docs/RELIABILITY.md.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { runClient, startClient, type RunningClient } from '../helpers/fc-client.js';
import { fakeOrigin } from '../helpers/fault-origin.js';
import {
  CLIENT_BOUND_MS,
  expectOneProblem,
  expectRestored,
  restore,
  smallSnapshot,
  type Snapshot,
} from '../helpers/fault-case.js';
import { repoRoot } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/images.js';
import { bounded, startServe, until, type ServeProcess } from '../helpers/serve-process.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

/** What each thread of a process is blocked in (/proc/<pid>/task/<tid>/wchan). */
function wchans(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).map((t) => {
    try {
      return readFileSync(`/proc/${pid}/task/${t}/wchan`, 'utf8');
    } catch {
      return 'gone';
    }
  });
}

describe.skipIf(!hasUffd)(uffdSuite('faults: processes'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let snap: Snapshot;
  let serve: ServeProcess | undefined;
  const cleanup: (() => Promise<unknown> | void)[] = [];
  beforeAll(async () => {
    tmp = tempDir('lazysnap-faults-proc-');
    snap = await smallSnapshot(tmp.dir);
  });
  afterEach(async () => {
    await serve?.stop();
    serve = undefined;
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  afterAll(() => tmp.cleanup());

  const socket = () => path.join(tmp.dir, 'run', 'fc.sock');
  const client = (extra: string[]): RunningClient => {
    const c = startClient(['--socket', socket(), '--image', snap.image.path, '--threads', '1', ...extra]);
    cleanup.push(() => void c.child.kill('SIGKILL')); // a no-op once it exited
    return c;
  };

  it('client killed mid-session (a fault waiting on a fetch): session ended, its fds closed, one warn line, serve goes on', async () => {
    let chunkRequests = 0;
    const o = await fakeOrigin(snap.store, (_n, url) =>
      url.startsWith('/chunks/') && ++chunkRequests === 1 ? { delayMs: 1500 } : 'ok',
    );
    cleanup.push(o.close);
    const s = (serve = await startServe(socket(), ['--store', o.url, '--id', snap.id]));
    const before = s.fdKinds();
    const c = client([]);
    c.release();
    expect(await until(() => chunkRequests === 1)).toBe(true); // its first fault now waits on the slow fetch
    c.child.kill('SIGKILL');
    expect((await bounded(c.result, CLIENT_BOUND_MS, 'client')).signal).toBe('SIGKILL');
    const line = await expectOneProblem(s, 1, /the peer went away with faults on 1 chunk\(s\) still waiting/);
    expect(line.waiting).toEqual([expect.any(Number)]);
    // uffd, pidfd and the connection are closed as the session ends (asynchronously: poll).
    const settled = () => {
      const now = s.fdKinds();
      return now.uffd === 0 && now.pidfd === 0 && now.unix === before.unix;
    };
    expect(await until(settled)).toBe(true);
    expectRestored(await restore(s.socket, snap), snap);
  });

  it('serve SIGTERM during restores: stops accepting at once, lets them finish, exits 0, no warn line', async () => {
    const o = await fakeOrigin(snap.store, (_n, url) =>
      url.startsWith('/chunks/') ? { delayMs: 100 } : 'ok',
    );
    cleanup.push(o.close);
    const s = (serve = await startServe(socket(), [
      '--store',
      o.url,
      '--id',
      snap.id,
      '--shutdown-grace',
      '20s',
    ]));
    const clients = Array.from({ length: 4 }, () => client(['--order', 'random']));
    for (const c of clients) c.release();
    await s.waitForLog(
      () => s.logs.filter((l) => l.msg === 'restore session started').length === 4,
      10_000,
      '4 sessions',
    );
    s.child.kill('SIGTERM');
    expect(await until(() => !existsSync(s.socket), 5000)).toBe(true); // no new restores from here on
    expect((await runClient(['--socket', s.socket, '--image', snap.image.path])).stderr).toMatch(/connect/);
    for (const c of clients) expectRestored(await bounded(c.result, CLIENT_BOUND_MS, 'client'), snap);
    expect(await bounded(s.exited, CLIENT_BOUND_MS, 'serve exit')).toEqual({ code: 0, signal: null });
    expect(s.logs.find((l) => l.msg === 'draining sessions')).toMatchObject({ sessions: 4, graceMs: 20_000 });
    expect(s.logs.filter((l) => l.msg === 'restore session summary').map((l) => l.outcome)).toEqual([
      'ended',
      'ended',
      'ended',
      'ended',
    ]);
    expect(s.problems()).toEqual([]);
  });

  it('serve SIGTERM with a session outliving the grace period: the peer is killed (not left hung), exit 0, one error line', async () => {
    const s = (serve = await startServe(socket(), [
      '--store',
      snap.store,
      '--id',
      snap.id,
      '--shutdown-grace',
      '500ms',
    ]));
    const c = client(['--wait']);
    await bounded(c.ready, CLIENT_BOUND_MS, 'handshake');
    s.child.kill('SIGTERM');
    // The client sits between faults, as a VM does for long stretches. Once the grace is over, its
    // next fault on a page it lacks would find no one to answer it: serve kills it instead.
    expect((await bounded(c.result, CLIENT_BOUND_MS, 'client')).signal).toBe('SIGKILL');
    expect(await bounded(s.exited, CLIENT_BOUND_MS, 'serve exit')).toEqual({ code: 0, signal: null });
    await expectOneProblem(s, 1, /outlived the 500 ms grace period/);
    expect(s.logs.find((l) => l.msg === 'restore session summary')).toMatchObject({ outcome: 'killed' });
  });

  it('serve SIGTERM with a handshake not yet read (serve stopped, the connection in its backlog): served, then failed closed, not dropped', async () => {
    const s = (serve = await startServe(socket(), [
      '--store',
      snap.store,
      '--id',
      snap.id,
      '--shutdown-grace',
      '500ms',
    ]));
    s.child.kill('SIGSTOP'); // a busy serve: the kernel still completes the connect and queues the handshake
    cleanup.push(() => void s.child.kill('SIGCONT'));
    const c = client(['--wait']);
    await bounded(c.ready, CLIENT_BOUND_MS, 'handshake sent');
    s.child.kill('SIGTERM');
    s.child.kill('SIGCONT');
    // Dropped unread, the client's uffd would have no reader: it would hang on its first fault.
    expect((await bounded(c.result, CLIENT_BOUND_MS, 'client')).signal).toBe('SIGKILL');
    expect(await bounded(s.exited, CLIENT_BOUND_MS, 'serve exit')).toEqual({ code: 0, signal: null });
    await expectOneProblem(s, 1, /outlived the 500 ms grace period/);
  });

  it('serve SIGKILL: restored pages stay, faults on missing ones wait (killable) forever; a supervisor restart serves new clients', async () => {
    // A supervisor, as systemd's Restart=always: whenever serve exits, start it again.
    const starts: ServeProcess[] = [];
    let supervising = true;
    const supervise = async (): Promise<void> => {
      const s = await startServe(socket(), ['--store', snap.store, '--id', snap.id]);
      starts.push(s);
      void s.exited.then(() => (supervising ? supervise() : undefined));
    };
    cleanup.push(async () => {
      supervising = false;
      for (const s of starts) await s.stop();
    });
    await supervise();
    const first = starts[0]!;
    const done = client(['--linger']); // restores everything, reports, then waits to be let go
    const midway = client(['--wait']); // handshake done, not a page touched yet
    await bounded(midway.ready, CLIENT_BOUND_MS, 'handshake');
    expect(await bounded(done.reported, CLIENT_BOUND_MS, 'first client report')).toMatchObject({
      ok: true,
      mismatches: 0,
    });
    // SIGKILL of serve is of its supervisor: the worker it started sees the link close and exits.
    const procs = first.pids();
    first.child.kill('SIGKILL');
    await first.exited;
    expect(await until(() => procs.every((p) => !existsSync(`/proc/${p}`)), 5000)).toBe(true);
    midway.go();
    // Every toucher thread of the client blocks in the kernel's userfaultfd handler: its uffd is
    // alive (the client keeps its copy, as Firecracker does) but nobody reads it any more.
    expect(
      await until(() => wchans(midway.child.pid!).filter((w) => w === 'handle_userfault').length === 1, 5000),
    ).toBe(true);
    await sleep(1000);
    expect(midway.child.exitCode).toBe(null);
    expect(wchans(midway.child.pid!)).toContain('handle_userfault');
    // A client that had all its pages is unaffected: it exits normally with every byte verified.
    done.release();
    expectRestored(await bounded(done.result, CLIENT_BOUND_MS, 'client with every page'), snap);
    // The supervisor's new serve replaces the stale socket (one warn line) and serves new clients.
    expect(
      await until(() => starts.length === 2 && starts[1]!.logs.some((l) => l.msg === 'serving'), 20_000),
    ).toBe(true);
    const second = starts[1]!;
    expectRestored(await restore(socket(), snap), snap);
    await expectOneProblem(second, 1, /replaced a stale socket/);
    // The hung client cannot be taken over (the handshake happens once); it dies at once when killed.
    midway.child.kill('SIGKILL');
    expect((await bounded(midway.result, 5000, 'killing the hung client')).signal).toBe('SIGKILL');
  });

  it('kernel fact: once the last reference to a uffd is closed, its memory reads as zeros (why clients keep their copy)', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/uffd-release.ts'], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    cleanup.push(() => void child.kill('SIGKILL'));
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const [code] = (await bounded(once(child, 'exit'), 20_000, 'uffd-release fixture')) as [number];
    expect(code).toBe(0);
    expect(JSON.parse(out)).toEqual({ bytesRead: 4 * 4096, allZero: true });
  });
});
