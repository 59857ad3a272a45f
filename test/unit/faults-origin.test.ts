/**
 * Origin faults under a real `lazysnap serve` process and Firecracker-exact clients: 500 / 503,
 * slow and stalled answers, bodies cut short, corrupted chunks (a flipped bit in flight, a corrupt
 * file behind nginx), and nginx killed mid-restore, restarted or not. Each case: no wrong byte,
 * bounded time, exactly one warn/error line naming the fault (docs/RELIABILITY.md, "Faults").
 */
import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeAll, afterAll, describe, expect, it } from 'vitest';

import { startClient } from '../helpers/fc-client.js';
import { fakeOrigin, type Fault } from '../helpers/fault-origin.js';
import {
  CLIENT_BOUND_MS,
  expectFailedClosed,
  expectOneProblem,
  expectRestored,
  restore,
  smallSnapshot,
  type Snapshot,
} from '../helpers/fault-case.js';
import { tempDir } from '../helpers/images.js';
import { nginxSkipReason, startNginx, type NginxServer } from '../helpers/nginx.js';
import { bounded, startServe, type ServeProcess } from '../helpers/serve-process.js';
import { hasUffd, kernelHasPoison, uffdSuite } from '../helpers/skip.js';

const canPoison = kernelHasPoison();

/** Injects `fault` into the first request for a chunk (the manifest and profile requests pass). */
function firstChunk(fault: Fault): (n: number, url: string) => Fault {
  let chunks = 0;
  return (_n, url) => (url.startsWith('/chunks/') && ++chunks === 1 ? fault : 'ok');
}

describe.skipIf(!hasUffd)(uffdSuite('faults: origins'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let snap: Snapshot;
  let serve: ServeProcess | undefined;
  const closers: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    tmp = tempDir('lazysnap-faults-');
    snap = await smallSnapshot(tmp.dir);
  });
  afterEach(async () => {
    await serve?.stop(); // SIGTERM: a SIGKILLed serve would leave its socket for the next case to replace
    serve = undefined;
    for (const c of closers.splice(0).reverse()) await c();
  });
  afterAll(() => tmp.cleanup());

  const socket = () => path.join(tmp.dir, 'run', 'fc.sock');
  const origin = async (plan: (n: number, url: string) => Fault) => {
    const o = await fakeOrigin(snap.store, plan);
    closers.push(o.close);
    return o;
  };
  const start = async (stores: string[], extra: string[] = []) =>
    (serve = await startServe(socket(), [
      ...stores.flatMap((s) => ['--store', s]),
      '--id',
      snap.id,
      ...extra,
    ]));

  for (const [name, fault, match] of [
    ['origin 500', '500', /HTTP 500/],
    ['origin 503', '503', /HTTP 503/],
    ['truncated body', 'truncate', /truncated body|other side closed/],
  ] as const) {
    it(`${name}: retried on the same origin, restored whole, one warn line`, async () => {
      const o = await origin(firstChunk(fault));
      const s = await start([o.url]);
      expectRestored(await restore(s.socket, snap), snap);
      const line = await expectOneProblem(s, 1, match);
      expect(line).toMatchObject({ level: 40, msg: 'chunk fetched from origin0 after 1 failed attempt' });
      expect(o.requests.filter((u) => u.startsWith('/chunks/'))).toHaveLength(12 + 1);
    });
  }

  it('slow response past the attempt timeout: retried, restored whole, one warn line', async () => {
    const o = await origin(firstChunk({ delayMs: 3000 }));
    const s = await start([o.url], ['--attempt-timeout', '500ms']);
    expectRestored(await restore(s.socket, snap), snap);
    await expectOneProblem(s, 1, /no answer within 500 ms/);
  });

  it('corrupted chunk (one bit flipped in flight): falls through to the next origin, restored whole, one warn line', async () => {
    const o = await origin(firstChunk('corrupt'));
    const s = await start([o.url, snap.store]);
    expectRestored(await restore(s.socket, snap), snap);
    const line = await expectOneProblem(s, 1, /undecodable|LAZYSNAP_INTEGRITY|integrity|hash/i);
    expect(line).toMatchObject({ tier: 'origin1' });
  });

  it('origin stalls on every chunk: retried until the fail timeout, then fails closed, one error line', async () => {
    const o = await origin((_n, url) => (url.startsWith('/chunks/') ? 'stall' : 'ok'));
    const s = await start([o.url], ['--attempt-timeout', '300ms', '--fail-timeout', '2s']);
    const t0 = Date.now();
    expectFailedClosed(await restore(s.socket, snap), canPoison);
    const line = await expectOneProblem(s, 1, /no answer within 300 ms/);
    expect(line).toMatchObject({ level: 50, action: canPoison ? 'poison' : 'kill' });
    // Passes of three attempts (the first and two retries) until the 2 s deadline: more than one pass.
    expect((line.errors as string[]).length).toBeGreaterThan(3);
    expect((line.errors as string[]).every((e) => /no answer within \d+ ms/.test(e))).toBe(true);
    expect(Date.now() - t0).toBeLessThan(CLIENT_BOUND_MS);
  });

  it('origin stalls, --fail-closed kill: the peer is SIGKILLed, one error line (not one per step)', async () => {
    const o = await origin((_n, url) => (url.startsWith('/chunks/') ? 'stall' : 'ok'));
    const s = await start(
      [o.url],
      ['--attempt-timeout', '300ms', '--fail-timeout', '1s', '--fail-closed', 'kill'],
    );
    expectFailedClosed(await restore(s.socket, snap), false);
    const line = await expectOneProblem(s, 1, /no answer within 300 ms/);
    expect(line).toMatchObject({
      level: 50,
      action: 'kill',
      msg: expect.stringMatching(/failing closed \(kill\)/),
    });
    expect(s.logs.find((l) => l.msg === 'restore session summary')).toMatchObject({ outcome: 'killed' });
  });

  describe.skipIf(!!nginxSkipReason)(
    `behind nginx${nginxSkipReason ? ` [SKIPPED: ${nginxSkipReason}]` : ''}`,
    () => {
      /** A copy of the store with one chunk file's middle byte flipped on disk. */
      function corruptCopy(): string {
        const bad = path.join(tmp.dir, `bad-${Date.now()}`);
        cpSync(snap.store, bad, { recursive: true });
        const file = readdirSync(path.join(bad, 'chunks'), { recursive: true })
          .map(String)
          .find((f) => f.endsWith('.zstd'))!;
        const p = path.join(bad, 'chunks', file);
        const b = readFileSync(p);
        b[b.length >> 1]! ^= 0x01;
        writeFileSync(p, b);
        return bad;
      }

      it('corrupted chunk on the origin disk, one origin: fails closed (no wrong byte), one error line', async () => {
        const nginx = await startNginx(corruptCopy());
        closers.push(() => nginx.stop());
        const s = await start([nginx.url]);
        expectFailedClosed(await restore(s.socket, snap), canPoison);
        const line = await expectOneProblem(s, 1, /undecodable|integrity|hash/i);
        expect(line.msg).toMatch(/could not be served: failing closed/);
      });

      it('corrupted chunk on the origin disk, a second origin: falls through, restored whole, one warn line', async () => {
        const nginx = await startNginx(corruptCopy());
        closers.push(() => nginx.stop());
        const s = await start([nginx.url, snap.store]);
        expectRestored(await restore(s.socket, snap), snap);
        await expectOneProblem(s, 1, /chunk fetched from origin1 after 1 failed attempt/);
      });

      it('origin killed mid-restore and restarted within the fail timeout: the fetch rides it out with default settings, restored whole, one warn line', async () => {
        let nginx: NginxServer = await startNginx(snap.store);
        closers.push(() => nginx.stop());
        // Defaults: 2 retries per pass (~150 ms), but passes go on until the 10 s fail timeout.
        const s = await start([nginx.url]);
        const c = startClient(['--socket', s.socket, '--image', snap.image.path, '--threads', '1', '--wait']);
        await bounded(c.ready, CLIENT_BOUND_MS, 'handshake');
        await nginx.stop('SIGKILL');
        c.go();
        c.release();
        await sleep(700); // the client faults against a dead origin meanwhile
        nginx = await startNginx(snap.store, { port: nginx.port });
        expectRestored(await bounded(c.result, CLIENT_BOUND_MS, 'fc-client'), snap);
        const line = await expectOneProblem(s, 1, /ECONNREFUSED|closed|refused/i);
        expect((line.errors as string[]).length).toBeGreaterThanOrEqual(2);
      });

      it('origin killed mid-restore and not back within the fail timeout: fails closed, one error line', async () => {
        const nginx = await startNginx(snap.store);
        closers.push(() => nginx.stop());
        const s = await start([nginx.url], ['--fail-timeout', '1500ms']);
        const c = startClient(['--socket', s.socket, '--image', snap.image.path, '--threads', '1', '--wait']);
        await bounded(c.ready, CLIENT_BOUND_MS, 'handshake');
        await nginx.stop('SIGKILL');
        c.go();
        c.release();
        expectFailedClosed(await bounded(c.result, CLIENT_BOUND_MS, 'fc-client'), canPoison);
        const line = await expectOneProblem(s, 1, /ECONNREFUSED/);
        expect(line.msg).toMatch(/could not be served: failing closed/);
      });
    },
  );
});
