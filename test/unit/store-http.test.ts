import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  IntegrityError,
  InvalidArgumentError,
  InvalidUrlError,
  NotFoundError,
  StoreError,
} from '../../core/errors.js';
import { FileStore } from '../../store/file-store.js';
import { HttpStore, type HttpStoreOptions } from '../../store/http-store.js';
import { tempDir } from '../helpers/images.js';
import { nginxSkipReason, startNginx, type NginxServer } from '../helpers/nginx.js';
import { storeContract } from '../helpers/store-contract.js';

// One nginx for the file; each test gets its own subdirectory of the served root.
let nginx: NginxServer | undefined;
let served: { dir: string; cleanup: () => void } | undefined;
let seq = 0;

beforeAll(async () => {
  if (nginxSkipReason) return;
  served = tempDir('lazysnap-http-');
  nginx = await startNginx(served.dir);
});

afterAll(async () => {
  await nginx?.stop();
  served?.cleanup();
});

/** A fresh directory under the nginx root, a FileStore writing it and its URL path. */
function area(): { sub: string; dir: string; files: FileStore; cleanup: () => void } {
  const sub = `t${++seq}-${randomBytes(3).toString('hex')}`;
  const dir = path.join(served!.dir, sub);
  mkdirSync(dir);
  return {
    sub,
    dir,
    files: new FileStore(dir),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

storeContract(
  'http (nginx)',
  async () => {
    const a = area();
    const store = new HttpStore(`${nginx!.url}/${a.sub}`);
    return {
      store,
      canList: false,
      seed: (k, b) => a.files.put(k, b),
      cleanup: async () => {
        await store.close();
        a.cleanup();
      },
    };
  },
  { skip: nginxSkipReason },
);

/** Access-log lines for paths under /<sub>/, waiting until `count` are in (nginx logs after sending). */
async function logLines(sub: string, count: number): Promise<string[][]> {
  for (let i = 0; ; i++) {
    const lines = readFileSync(nginx!.accessLog, 'utf8')
      .split('\n')
      .map((l) => l.split(' '))
      .filter((f) => f[4]?.startsWith(`/${sub}/`));
    if (lines.length >= count || i > 100) return lines;
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.skipIf(!!nginxSkipReason)(
  `http store against nginx${nginxSkipReason ? ` [SKIPPED: ${nginxSkipReason}]` : ''}`,
  () => {
    it('reads an object of maxBytes whole with one plain GET (200, no Range), refuses one byte less', async () => {
      const a = area();
      const store = new HttpStore(`${nginx!.url}/${a.sub}`);
      try {
        const body = randomBytes(300_000);
        await a.files.put('chunks/ab/obj', body);
        const got = await store.get('chunks/ab/obj', { maxBytes: 300_000 });
        expect(got.equals(body)).toBe(true);
        const [line] = await logLines(a.sub, 1);
        expect(line?.slice(2, 7)).toEqual(['200', 'GET', `/${a.sub}/chunks/ab/obj`, '"-"', '300000']);

        const e = await store.get('chunks/ab/obj', { maxBytes: 299_999 }).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(IntegrityError);
        expect(e).toMatchObject({ code: 'LAZYSNAP_INTEGRITY', actual: '300000 bytes' });
      } finally {
        await store.close();
        a.cleanup();
      }
    });

    it('resolves keys under a base path (with or without a trailing slash)', async () => {
      const a = area();
      const body = Buffer.from('{"format":"lazysnap/1"}');
      await a.files.put('manifests/snap-1.json', body);
      // nginx serves the whole root under /cache/ as well: the store is at /cache/<sub>.
      for (const base of [`${nginx!.url}/cache/${a.sub}`, `${nginx!.url}/cache/${a.sub}/`]) {
        const store = new HttpStore(base);
        try {
          expect(store.url).toBe(`${nginx!.url}/cache/${a.sub}`);
          expect((await store.get('manifests/snap-1.json')).equals(body)).toBe(true);
          expect(await store.has('manifests/snap-1.json')).toBe(true);
          await expect(store.get('manifests/snap-2.json')).rejects.toBeInstanceOf(NotFoundError);
        } finally {
          await store.close();
        }
      }
      a.cleanup();
    });

    it('reuses keep-alive connections and opens no more than `connections`', async () => {
      const a = area();
      const store = new HttpStore(`${nginx!.url}/${a.sub}`, { connections: 4 });
      try {
        const bodies = Array.from({ length: 8 }, () => randomBytes(4096));
        for (const [i, b] of bodies.entries()) await a.files.put(`chunks/cd/obj${i}`, b);
        const read = async (i: number) =>
          expect((await store.get(`chunks/cd/obj${i % 8}`, { maxBytes: 4096 })).equals(bodies[i % 8]!)).toBe(
            true,
          );
        const n = 40;
        for (let i = 0; i < n; i++) await read(i);
        const sequential = await logLines(a.sub, n);
        expect(sequential).toHaveLength(n);
        // undici hands a finished connection back one event-loop turn later (pipelining 1), so
        // back-to-back requests alternate between two sockets: never one per request.
        expect(new Set(sequential.map((f) => f[0])).size).toBeLessThanOrEqual(2);

        await Promise.all(Array.from({ length: 32 }, (_, i) => read(i)));
        const all = await logLines(a.sub, n + 32);
        expect(new Set(all.map((f) => f[0])).size).toBeLessThanOrEqual(4);
      } finally {
        await store.close();
        a.cleanup();
      }
    });

    const BIG = 32 * 1024 * 1024;
    it('a refused small body is drained (the connection is kept), a refused big one is destroyed unread', async () => {
      const a = area();
      const store = new HttpStore(`${nginx!.url}/${a.sub}`, { connections: 4 });
      try {
        await a.files.put('chunks/ef/small', randomBytes(4096));
        await a.files.put('chunks/ef/big', Buffer.alloc(BIG, 1));
        const refuse = async (key: string, count: number) => {
          for (let i = 0; i < count; i++)
            await expect(store.get(key, { maxBytes: 4095 })).rejects.toBeInstanceOf(IntegrityError);
        };
        const n = 5;
        await refuse('chunks/ef/small', n);
        const small = await logLines(a.sub, n);
        // The drain runs in the background, so a request may find its socket still busy, but
        // connections stay within the pool: far from one per refusal.
        expect(new Set(small.map((f) => f[0])).size).toBeLessThanOrEqual(4);

        await refuse('chunks/ef/big', n);
        const big = (await logLines(a.sub, 2 * n)).slice(n);
        // Reading 32 MiB to its end would keep the socket; dropping it costs a new connection each.
        expect(new Set(big.map((f) => f[0])).size).toBe(n);
        // nginx got rid of what the socket buffers took (a few MiB on loopback), never the whole object.
        for (const f of big) expect(Number(f[6])).toBeLessThan(BIG / 2);
      } finally {
        await store.close();
        a.cleanup();
      }
    });
  },
);

// ---------------------------------------------------------------------------------------------
// Faults nginx cannot produce, from a small node:http origin.

interface FakeOrigin {
  url: string;
  /** Request headers seen, in order. */
  seen: http.IncomingHttpHeaders[];
  /** Request paths seen, in order. */
  urls: string[];
  close(): Promise<void>;
}

async function fakeOrigin(
  handler: (req: http.IncomingMessage, res: http.ServerResponse) => void,
): Promise<FakeOrigin> {
  const seen: http.IncomingHttpHeaders[] = [];
  const urls: string[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    urls.push(req.url ?? '');
    handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    urls,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** Runs f against a store on a fake origin and closes both. */
async function withOrigin(
  handler: (req: http.IncomingMessage, res: http.ServerResponse) => void,
  f: (store: HttpStore, origin: FakeOrigin) => Promise<void>,
  opts: HttpStoreOptions & { path?: string } = {},
): Promise<void> {
  const origin = await fakeOrigin(handler);
  const { path: base = '/base', ...storeOpts } = opts;
  const store = new HttpStore(`${origin.url}${base}`, storeOpts);
  try {
    await f(store, origin);
  } finally {
    await store.close();
    await origin.close();
  }
}

const status = (code: number) => (_req: http.IncomingMessage, res: http.ServerResponse) =>
  res.writeHead(code, { 'content-type': 'text/plain' }).end(`status ${code}`);
const silent = () => {};
const GiB = 1024 * 1024 * 1024;

/**
 * Writes `total` bytes in 64 KiB pieces as fast as the client takes them (honouring backpressure)
 * until done or the connection goes; resolves with the bytes the socket accepted by then.
 */
function stream(res: http.ServerResponse, total: number): Promise<number> {
  const piece = Buffer.alloc(64 * 1024, 0x5a);
  let offered = 0;
  let accepted = 0;
  return new Promise((resolve) => {
    res.on('close', () => resolve(accepted));
    const pump = (): void => {
      while (offered < total && !res.destroyed) {
        const n = Math.min(piece.length, total - offered);
        offered += n;
        const more = res.write(piece.subarray(0, n), (err) => {
          if (!err) accepted += n;
        });
        if (!more) return void res.once('drain', pump);
      }
      if (offered >= total) res.end();
    };
    pump();
  });
}

describe('http store faults (fake origin)', () => {
  it.each([
    [500, true],
    [503, true],
    [429, true],
    [408, true],
    [403, false],
    [400, false],
    [301, false],
  ])('HTTP %i → StoreError with status, retryable %s (GET and HEAD)', async (code, retryable) => {
    await withOrigin(status(code), async (store) => {
      for (const op of [() => store.get('chunks/ab/x'), () => store.has('chunks/ab/x')]) {
        const e = await op().catch((x: unknown) => x);
        expect(e).toBeInstanceOf(StoreError);
        expect(e).toMatchObject({
          code: 'LAZYSNAP_STORE_ERROR',
          status: code,
          retryable,
          key: 'chunks/ab/x',
        });
      }
    });
  });

  it('an error status whose body stalls rejects at once (the body drains in the background)', async () => {
    await withOrigin(
      (_req, res) => (res.writeHead(502, { 'content-length': 1000 }), res.write('bad gateway')),
      async (store) => {
        const t0 = Date.now();
        await expect(store.get('chunks/ab/x')).rejects.toMatchObject({ status: 502, retryable: true });
        expect(Date.now() - t0).toBeLessThan(1000);
      },
    );
  });

  it('HTTP 404 and 410 → NotFoundError (has() → false)', async () => {
    for (const code of [404, 410]) {
      await withOrigin(status(code), async (store) => {
        await expect(store.get('chunks/ab/x')).rejects.toMatchObject({
          code: 'LAZYSNAP_NOT_FOUND',
          key: 'chunks/ab/x',
        });
        expect(await store.has('chunks/ab/x')).toBe(false);
      });
    }
  });

  it('requests <base path>/<key> with identity encoding and no Range', async () => {
    await withOrigin(
      (_req, res) => res.writeHead(200, { 'content-length': 10 }).end(Buffer.alloc(10, 7)),
      async (store, origin) => {
        expect(await store.get('chunks/ab/x')).toEqual(Buffer.alloc(10, 7));
        expect(origin.seen[0]).toMatchObject({ 'accept-encoding': 'identity' });
        expect(origin.seen[0]).not.toHaveProperty('range');
        expect(origin.urls).toEqual(['/a/b/chunks/ab/x']);
      },
      { path: '/a/b/' },
    );
  });

  it('a body shorter than Content-Length → retryable StoreError', async () => {
    await withOrigin(
      (_req, res) => {
        res.writeHead(200, { 'content-length': 100 });
        res.write(Buffer.alloc(50), () => res.socket?.destroy());
      },
      async (store) => {
        const e = await store.get('chunks/ab/x').catch((x: unknown) => x);
        expect(e).toBeInstanceOf(StoreError);
        expect(e).toMatchObject({ retryable: true });
      },
    );
  });

  it('a 206 (never asked for: no Range is sent) → StoreError, not retryable', async () => {
    await withOrigin(
      (_req, res) =>
        res.writeHead(206, { 'content-range': 'bytes 0-9/100', 'content-length': 10 }).end(Buffer.alloc(10)),
      async (store) => {
        const e = await store.get('chunks/ab/x').catch((x: unknown) => x);
        expect(e).toBeInstanceOf(StoreError);
        expect(e).toMatchObject({ status: 206, retryable: false });
        expect((e as Error).message).toMatch(/206 Partial Content to a request without Range/);
      },
    );
  });

  it('a Content-Length beyond maxBytes is refused before the body is read: 1 GiB is destroyed, not drained', async () => {
    let sent: Promise<number> | undefined;
    await withOrigin(
      (_req, res) => {
        res.writeHead(200, { 'content-length': GiB });
        sent = stream(res, GiB);
      },
      async (store) => {
        const t0 = Date.now();
        const e = await store.get('chunks/ab/x', { maxBytes: 4096 }).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(IntegrityError);
        expect(e).not.toBeInstanceOf(StoreError); // nothing to retry: the origin lies
        expect(e).toMatchObject({
          code: 'LAZYSNAP_INTEGRITY',
          key: 'chunks/ab/x',
          expected: 'at most 4096 bytes',
          actual: `${GiB} bytes`,
        });
        // The origin notices the connection go at once, with most of its GiB unsent.
        expect(await sent).toBeLessThan(64 * 1024 * 1024);
        expect(Date.now() - t0).toBeLessThan(5000);
      },
    );
  });

  it('a chunked body (no Content-Length) is cut off once more than maxBytes arrived; the rest is never read', async () => {
    let sent: Promise<number> | undefined;
    await withOrigin(
      (_req, res) => {
        res.writeHead(200); // no Content-Length: Node sends the body chunked
        sent = stream(res, GiB);
      },
      async (store) => {
        const maxBytes = 100_000;
        const t0 = Date.now();
        const e = await store.get('chunks/ab/x', { maxBytes }).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(IntegrityError);
        expect(e).not.toBeInstanceOf(StoreError);
        expect(e).toMatchObject({ code: 'LAZYSNAP_INTEGRITY', expected: `at most ${maxBytes} bytes` });
        // Stopped at the first network read past the cap, not at the end of the body.
        const got = Number(/^(\d+) bytes or more$/.exec((e as IntegrityError).actual ?? '')?.[1]);
        expect(got).toBeGreaterThan(maxBytes);
        expect(got).toBeLessThanOrEqual(maxBytes + 1024 * 1024);
        // What the origin got rid of is bounded by socket buffers, far from the GiB it meant to send.
        expect(await sent).toBeLessThan(64 * 1024 * 1024);
        expect(Date.now() - t0).toBeLessThan(5000);
      },
    );
  });

  it('a chunked body of exactly maxBytes reads whole; one byte more fails', async () => {
    const body = randomBytes(100_000);
    await withOrigin(
      (_req, res) => {
        res.writeHead(200);
        // Several chunks, so the count crosses the cap mid-stream rather than at a single write.
        for (let i = 0; i < body.length; i += 30_000) res.write(body.subarray(i, i + 30_000));
        res.end();
      },
      async (store) => {
        expect((await store.get('chunks/ab/x', { maxBytes: 100_000 })).equals(body)).toBe(true);
        expect((await store.get('chunks/ab/x')).equals(body)).toBe(true);
        await expect(store.get('chunks/ab/x', { maxBytes: 99_999 })).rejects.toMatchObject({
          code: 'LAZYSNAP_INTEGRITY',
          actual: '100000 bytes or more',
        });
      },
    );
  });

  it('an origin that never answers → retryable StoreError after headersTimeoutMs', async () => {
    await withOrigin(
      silent,
      async (store) => {
        const t0 = Date.now();
        const e = await store.get('chunks/ab/x').catch((x: unknown) => x);
        const elapsed = Date.now() - t0;
        expect(e).toBeInstanceOf(StoreError);
        expect(e).toMatchObject({ retryable: true });
        expect((e as Error).message).toMatch(/300 ms/);
        expect(elapsed).toBeGreaterThanOrEqual(250);
        expect(elapsed).toBeLessThan(3000);
      },
      { headersTimeoutMs: 300 },
    );
  });

  it('a connection refused → retryable StoreError', async () => {
    const origin = await fakeOrigin(silent);
    await origin.close(); // the port is now closed
    const store = new HttpStore(origin.url);
    try {
      await expect(store.get('chunks/ab/x')).rejects.toMatchObject({
        code: 'LAZYSNAP_STORE_ERROR',
        retryable: true,
      });
    } finally {
      await store.close();
    }
  });

  it('aborting mid-request (before headers, mid-body) rejects with the signal reason', async () => {
    const stallAfterHeaders = (_req: http.IncomingMessage, res: http.ServerResponse) => {
      res.writeHead(200, { 'content-length': 100 });
      res.write(Buffer.alloc(10));
    };
    for (const handler of [silent, stallAfterHeaders]) {
      await withOrigin(handler, async (store) => {
        const reason = new Error('caller gave up');
        const ac = new AbortController();
        setTimeout(() => ac.abort(reason), 100);
        await expect(store.get('chunks/ab/x', { signal: ac.signal })).rejects.toBe(reason);
        if (handler === silent) {
          const reason2 = new Error('has gave up');
          await expect(store.has('chunks/ab/x', { signal: abortSoon(reason2) })).rejects.toBe(reason2);
        }
      });
    }
  });

  it('sends configured headers but never puts them in errors or the URL', async () => {
    const SECRET = 'SECRET123';
    let mode = 0;
    const handler = (_req: http.IncomingMessage, res: http.ServerResponse) => {
      const m = mode++;
      if (m === 0) res.writeHead(500).end(`echo: Bearer ${SECRET}`);
      else if (m === 1) res.writeHead(403).end(`echo: Bearer ${SECRET}`);
      else if (m === 2) {
        res.writeHead(200, { 'content-length': 100 });
        res.write(Buffer.alloc(5), () => res.socket?.destroy());
      } else if (m === 3)
        res.writeHead(206, { 'content-range': 'bytes 0-0/1', 'content-length': 1 }).end('x');
      // m >= 4: never answer (timeout)
    };
    await withOrigin(
      handler,
      async (store, origin) => {
        const errors = [
          await store.get('chunks/ab/x').catch((x: unknown) => x),
          await store.get('chunks/ab/x').catch((x: unknown) => x),
          await store.get('chunks/ab/x').catch((x: unknown) => x),
          await store.get('chunks/ab/x').catch((x: unknown) => x),
          await store.get('chunks/ab/x').catch((x: unknown) => x),
        ];
        expect(origin.seen.map((h) => h.authorization)).toEqual(Array(5).fill(`Bearer ${SECRET}`));
        for (const e of errors) {
          expect(e).toBeInstanceOf(StoreError);
          const text = `${(e as Error).message}\n${(e as Error).stack}\n${inspect(e, { depth: 4 })}`;
          expect(text).not.toContain(SECRET);
        }
        expect(store.url).not.toContain(SECRET);
      },
      { headers: { Authorization: `Bearer ${SECRET}` }, headersTimeoutMs: 300 },
    );
  });

  it('turns URL credentials into Basic auth and keeps them out of url and errors', async () => {
    const origin = await fakeOrigin(status(500));
    const store = new HttpStore(origin.url.replace('http://', 'http://alice:pw%40secret@') + '/base');
    try {
      expect(store.url).toBe(origin.url.replace('http://', 'http://redacted@') + '/base');
      const e = await store.get('chunks/ab/x').catch((x: unknown) => x);
      expect(e).toMatchObject({ status: 500, retryable: true });
      expect(inspect(e, { depth: 4 })).not.toMatch(/secret|alice/);
      expect(origin.seen[0]?.authorization).toBe(
        `Basic ${Buffer.from('alice:pw@secret').toString('base64')}`,
      );
    } finally {
      await store.close();
      await origin.close();
    }
  });
});

function abortSoon(reason: Error): AbortSignal {
  const ac = new AbortController();
  setTimeout(() => ac.abort(reason), 50);
  return ac.signal;
}

describe('http store validation and refusals', () => {
  it.each([
    ['ftp://host/x', /scheme ftp:/],
    ['not a url', /not a URL/],
    ['http://host/base?sig=abc', /query string/],
    ['http://host/base#frag', /fragment/],
    ['http://host/base?', /query string/],
  ])('refuses %s with InvalidUrlError', (url, msg) => {
    const e = (() => {
      try {
        return new HttpStore(url);
      } catch (x) {
        return x;
      }
    })();
    expect(e).toBeInstanceOf(InvalidUrlError);
    expect((e as Error).message).toMatch(msg);
    expect((e as Error).message).not.toContain('sig=abc');
  });

  it('validates options at the boundary without echoing header values', () => {
    const bad: HttpStoreOptions[] = [
      { connections: 0 },
      { connections: 1.5 },
      { headersTimeoutMs: -1 },
      { bodyTimeoutMs: Number.NaN },
      { headers: { range: 'bytes=0-1' } },
      { headers: { 'bad name': 'x' } },
      { headers: { 'x-token': 'SECRET\r\ninjected: 1' } },
      { timeout: 5 } as HttpStoreOptions,
    ];
    for (const o of bad) {
      expect(() => new HttpStore('http://127.0.0.1:1', o), JSON.stringify(o)).toThrow(InvalidArgumentError);
    }
    try {
      new HttpStore('http://127.0.0.1:1', bad[6]);
    } catch (e) {
      expect((e as Error).message).not.toContain('SECRET');
    }
    expect(() => new HttpStore('http://u:p@127.0.0.1:1', { headers: { authorization: 'x' } })).toThrow(
      InvalidUrlError,
    );
  });

  it('refuses to list, writes and use after close', async () => {
    const store = new HttpStore('http://127.0.0.1:1/base/');
    expect(store.writable).toBe(false);
    expect(store.url).toBe('http://127.0.0.1:1/base');
    const it = store.list('chunks/')[Symbol.asyncIterator]();
    const e = await it.next().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(StoreError);
    expect(e).toMatchObject({ retryable: false });
    expect((e as Error).message).toMatch(/cannot list.*s3:\/\//);
    await expect(store.put('chunks/aa/x', Buffer.alloc(1))).rejects.toMatchObject({
      code: 'LAZYSNAP_STORE_READ_ONLY',
    });
    await store.close();
    await store.close();
    await expect(store.get('chunks/aa/x')).rejects.toMatchObject({
      code: 'LAZYSNAP_STORE_ERROR',
      retryable: false,
      message: expect.stringMatching(/closed/),
    });
  });
});
