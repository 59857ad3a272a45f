import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';

import { startDelayProxy, type DelayProxy, type DelayProxyOptions } from '../../bench/lib/delay-proxy.js';
import { InvalidArgumentError } from '../../core/errors.js';

// Timing assertions are lower bounds (the proxy guarantees them by construction, and proxy and test
// share one performance.now() clock) plus loose sanity ceilings: this machine is noisy.
const SIZE = 4 * 1024 * 1024;
const BODY = randomBytes(SIZE);
const FIRST_BYTE_MS = 50;
const RATE = 20e6;
/** More than the proxy's idle burst (64 KiB), so the bound doesn't depend on its exact value. */
const BURST_ALLOWANCE = 128 * 1024;
/** Least time for one paced body after its first byte. */
const PACED_MS = ((SIZE - BURST_ALLOWANCE) / RATE) * 1000;

let origin: http.Server;
let originPort = 0;
let streamed = 0; // bytes /stream handed to the kernel, for the backpressure test
const proxies: DelayProxy[] = [];

beforeAll(async () => {
  origin = http.createServer((req, res) => {
    if (req.url !== '/stream') return void res.end(BODY);
    // 256 MiB in 1 MiB writes, only as fast as the socket accepts them.
    const chunk = BODY.subarray(0, 1024 * 1024);
    let left = 256;
    const more = (): void => {
      while (left > 0 && !res.destroyed) {
        left--;
        streamed += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', more);
      }
      res.end();
    };
    more();
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as net.AddressInfo).port;
});

afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});

afterAll(async () => {
  origin.closeAllConnections();
  await new Promise((r) => origin.close(r));
});

async function proxy(extra: Partial<DelayProxyOptions> = {}): Promise<DelayProxy> {
  const p = await startDelayProxy({
    target: { host: '127.0.0.1', port: originPort },
    firstByteMs: FIRST_BYTE_MS,
    bytesPerSecond: RATE,
    ...extra,
  });
  proxies.push(p);
  return p;
}

interface Timed {
  body: Buffer;
  ttfb: number;
  total: number;
  socket: net.Socket;
}

/** GET `url`, timing first byte (headers) and last byte from just before the request is sent. */
async function get(url: string, agent: http.Agent | false = false): Promise<Timed> {
  const t0 = performance.now();
  const req = http.get(url, { agent });
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  const ttfb = performance.now() - t0;
  const parts: Buffer[] = [];
  for await (const part of res) parts.push(part as Buffer);
  return { body: Buffer.concat(parts), ttfb, total: performance.now() - t0, socket: res.socket };
}

describe('startDelayProxy', () => {
  it('holds the first byte and paces the body, bytes intact', async () => {
    const p = await proxy();
    const direct: number[] = [];
    for (let i = 0; i < 3; i++) direct.push((await get(`http://127.0.0.1:${originPort}/`)).ttfb);
    const r = await get(`${p.url}/`);
    expect(r.body.equals(BODY)).toBe(true);
    expect(r.ttfb).toBeGreaterThanOrEqual(FIRST_BYTE_MS);
    expect(Math.min(...direct)).toBeLessThan(25); // the delay is the proxy's, not the origin's
    expect(r.total).toBeGreaterThanOrEqual(FIRST_BYTE_MS + PACED_MS);
    expect(r.total).toBeLessThan(10_000);
    expect(p.stats()).toMatchObject({ connections: 1, requests: 1, bytesDown: expect.any(Number) });
    expect(p.stats().bytesDown).toBeGreaterThan(SIZE);
    expect(p.stats().bytesUp).toBeGreaterThan(0);
  });

  it('delays every response on a keep-alive connection', async () => {
    const p = await proxy();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const a = await get(`${p.url}/`, agent);
      const b = await get(`${p.url}/`, agent);
      expect(b.socket).toBe(a.socket);
      for (const r of [a, b]) {
        expect(r.body.equals(BODY)).toBe(true);
        expect(r.ttfb).toBeGreaterThanOrEqual(FIRST_BYTE_MS);
        expect(r.total).toBeGreaterThanOrEqual(FIRST_BYTE_MS + PACED_MS);
      }
      expect(p.stats()).toMatchObject({ connections: 1, requests: 2 });
    } finally {
      agent.destroy();
    }
  });

  // That each connection has its own bandwidth is an upper bound on time, so it is checked where time is
  // measured: bench/cold-start.bench.ts asserts that its floor download (one connection per chunk)
  // moves more than one connection's budget could.

  // Retried: a fast answer stalled 90 ms by a busy machine would read as a slow one.
  it('holds a seeded fraction of responses tailFactor times longer', { retry: 2 }, async () => {
    // Fast bodies, so that only the first-byte delay shows; one keep-alive connection, so the
    // responses begin in request order and the seed fixes which of them are slow.
    const TAIL = { firstByteMs: 10, tailFactor: 10, bytesPerSecond: 10e9 };
    const pattern = async (tailSeed: number): Promise<boolean[]> => {
      const p = await proxy({ ...TAIL, tailFraction: 0.3, tailSeed });
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const slow: boolean[] = [];
        for (let i = 0; i < 24; i++) {
          const r = await get(`${p.url}/`, agent);
          expect(r.body.equals(BODY)).toBe(true);
          expect(r.ttfb).toBeGreaterThanOrEqual(TAIL.firstByteMs);
          // The two delays are 10 and 100 ms: anything past 100 ms had the tail's (a lower bound).
          slow.push(r.ttfb >= TAIL.firstByteMs * TAIL.tailFactor);
        }
        expect(p.stats().tailResponses).toBe(slow.filter(Boolean).length);
        return slow;
      } finally {
        agent.destroy();
      }
    };
    const a = await pattern(7);
    expect(a.filter(Boolean).length).toBeGreaterThan(0);
    expect(a.filter(Boolean).length).toBeLessThan(a.length);
    expect(await pattern(7)).toEqual(a);
  });

  it('has no tail unless asked for one', async () => {
    const p = await proxy({ firstByteMs: 1, bytesPerSecond: 10e9 });
    for (let i = 0; i < 5; i++) await get(`${p.url}/`);
    expect(p.stats()).toMatchObject({ requests: 5, tailResponses: 0 });
  });

  it('stops reading upstream while the client does not read', async () => {
    const p = await proxy({ firstByteMs: 0, bytesPerSecond: 10e9 });
    const client = net.connect(p.port, p.host);
    client.pause(); // never read: only kernel buffers and the proxy's bounded queue can fill
    await once(client, 'connect');
    streamed = 0;
    client.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 500));
    // Kernel socket buffers on the two loopback hops hold some MiB; without backpressure the proxy
    // would have swallowed all 256 MiB by now.
    expect(streamed).toBeLessThan(96 * 1024 * 1024);
    client.destroy();
  });

  it('close() destroys live connections and stops listening', async () => {
    const p = await startDelayProxy({ target: { host: '127.0.0.1', port: originPort }, firstByteMs: 0 });
    const client = net.connect(p.port, p.host);
    await once(client, 'connect');
    const closed = once(client, 'close');
    await p.close();
    await closed;
    const refused = net.connect(p.port, p.host);
    const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ECONNREFUSED');
    await p.close(); // idempotent
  });

  it('tears the pair down when the upstream refuses', async () => {
    const dead = net.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const deadPort = (dead.address() as net.AddressInfo).port;
    await new Promise((r) => dead.close(r));
    const p = await proxy({ target: { host: '127.0.0.1', port: deadPort } });
    const client = net.connect(p.port, p.host);
    client.on('error', () => {});
    await once(client, 'close');
  });

  it('validates options', async () => {
    const target = { host: '127.0.0.1', port: 1 };
    const bad: unknown[] = [
      undefined,
      {},
      { target: { host: '127.0.0.1', port: 0 } },
      { target, firstByteMs: -1 },
      { target, bytesPerSecond: 0 },
      { target, bytesPerSecond: Number.POSITIVE_INFINITY },
      { target, port: 70000 },
      { target, tailFraction: 1.5 },
      { target, tailFraction: Number.NaN },
      { target, tailFactor: 0.5 },
      { target, tailSeed: -1 },
      { target, tailSeed: 1.5 },
    ];
    for (const o of bad) {
      await expect(startDelayProxy(o as DelayProxyOptions)).rejects.toMatchObject({
        code: 'LAZYSNAP_INVALID_ARGUMENT',
      });
    }
    await expect(startDelayProxy({ target, firstByteMs: -1 })).rejects.toThrow(InvalidArgumentError);
    await expect(startDelayProxy({ target, firstByteMs: -1 })).rejects.toThrow(
      /firstByteMs must be .*received -1/,
    );
  });

  it('has the documented shape', () => {
    expectTypeOf(startDelayProxy).parameter(0).toEqualTypeOf<DelayProxyOptions>();
    expectTypeOf<ReturnType<DelayProxy['stats']>>().toEqualTypeOf<{
      connections: number;
      requests: number;
      bytesDown: number;
      bytesUp: number;
      tailResponses: number;
    }>();
  });
});
