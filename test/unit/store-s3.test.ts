import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

vi.hoisted(() => {
  // Before the SDK loads: silence its Node-20 notice, and keep the host's endpoint settings out.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  delete process.env.AWS_ENDPOINT_URL_S3;
  delete process.env.AWS_ENDPOINT_URL;
});

import { S3Client } from '@aws-sdk/client-s3';

import {
  IntegrityError,
  InvalidArgumentError,
  InvalidUrlError,
  NotFoundError,
  StoreError,
} from '../../core/errors.js';
import { S3Store, type S3StoreOptions } from '../../store/s3-store.js';
import { S3RVER_CREDENTIALS, startS3rver, type S3rverHandle } from '../helpers/s3rver.js';
import { storeContract } from '../helpers/store-contract.js';

let s3: S3rverHandle;
beforeAll(async () => {
  s3 = await startS3rver();
});
afterAll(async () => {
  await s3?.stop();
});
afterEach(() => {
  vi.unstubAllEnvs();
});

const uniq = (): string => `t-${randomBytes(6).toString('hex')}`;
const open: S3Store[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

function s3Store(opts: Partial<S3StoreOptions> = {}): S3Store {
  const store = new S3Store({
    bucket: s3.bucket,
    prefix: uniq(),
    endpoint: s3.endpoint,
    region: 'us-east-1',
    credentials: S3RVER_CREDENTIALS,
    ...opts,
  });
  open.push(store);
  return store;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}
const keysOf = async (it: AsyncIterable<{ key: string }>): Promise<string[]> =>
  (await collect(it)).map((o) => o.key).sort();

/** A plain HTTP server that answers every request with `handler`; closed after the test. */
async function fakeServer(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  fakes.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
const fakes: http.Server[] = [];
afterEach(async () => {
  for (const server of fakes.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

/** Waits (up to 5 s) until `done()` holds. */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; !done() && i < 500; i++) await new Promise((r) => setTimeout(r, 10));
  expect(done()).toBe(true);
}

const s3ErrorXml = (code: string): string =>
  `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code} here</Message></Error>`;

storeContract('s3 (s3rver)', async () => {
  const store = s3Store();
  return { store, seed: (k, b) => store.put(k, b), cleanup: () => store.close() };
});

describe('s3 store specifics', () => {
  it('puts once per object and reads it whole with one plain GET (no Range)', async () => {
    const store = s3Store();
    const body = randomBytes(10_000);
    s3.reset();
    await store.put('chunks/ab/obj', body);
    expect(s3.requests.map((r) => r.method)).toEqual(['PUT']);
    s3.reset();
    expect((await store.get('chunks/ab/obj', { maxBytes: 10_000 })).equals(body)).toBe(true);
    expect(s3.requests).toHaveLength(1);
    expect(s3.requests[0]).toMatchObject({
      method: 'GET',
      path: `/${s3.bucket}/${store.prefix}/chunks/ab/obj?x-id=GetObject`,
    });
    expect(s3.requests[0]!.headers).not.toHaveProperty('range');
  });

  it('refuses an object longer than maxBytes on its ContentLength, before the body is read, and does not retry', async () => {
    const store = s3Store();
    const size = 32 * 1024 * 1024;
    await store.put('chunks/ab/big', Buffer.alloc(size, 1));
    s3.reset();
    const e = await store.get('chunks/ab/big', { maxBytes: 1024 * 1024 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(IntegrityError);
    expect(e).toMatchObject({
      code: 'LAZYSNAP_INTEGRITY',
      key: 'chunks/ab/big',
      expected: `at most ${1024 * 1024} bytes`,
      actual: `${size} bytes`,
    });
    // One GET: an IntegrityError is not retried (the SDK never sees it, the store does not retry).
    expect(s3.requests.map((r) => r.method)).toEqual(['GET']);
    const [get] = s3.requests;
    await until(() => get!.closed);
    // The stream was destroyed on the header: the proxy handed over what socket buffers took
    // (a few MiB on loopback), not the object.
    expect(get!.bytesOut).toBeLessThan(size / 2);
  });

  it('without a ContentLength (chunked), stops reading once more than maxBytes arrived', async () => {
    const GiB = 1024 * 1024 * 1024;
    const exact = randomBytes(100_000);
    let sent = 0;
    let gone = false;
    const endpoint = await fakeServer((req, res) => {
      res.writeHead(200, { 'last-modified': new Date().toUTCString() }); // no Content-Length
      res.on('close', () => (gone = true));
      if (req.url?.includes('exact')) {
        for (let i = 0; i < exact.length; i += 30_000) res.write(exact.subarray(i, i + 30_000));
        return void res.end();
      }
      // Up to 1 GiB, as fast as the client takes it.
      const piece = Buffer.alloc(64 * 1024, 0x5a);
      const pump = (): void => {
        while (sent < GiB && !res.destroyed) {
          sent += piece.length;
          if (!res.write(piece)) return void res.once('drain', pump);
        }
        if (sent >= GiB) res.end();
      };
      pump();
    });
    const store = s3Store({ endpoint, maxAttempts: 1 });
    expect((await store.get('chunks/ab/exact', { maxBytes: 100_000 })).equals(exact)).toBe(true);
    await expect(store.get('chunks/ab/exact', { maxBytes: 99_999 })).rejects.toMatchObject({
      code: 'LAZYSNAP_INTEGRITY',
      actual: '100000 bytes or more',
    });

    const t0 = performance.now();
    const e = await store.get('chunks/ab/flood', { maxBytes: 100_000 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(IntegrityError);
    const got = Number(/^(\d+) bytes or more$/.exec((e as IntegrityError).actual ?? '')?.[1]);
    expect(got).toBeGreaterThan(100_000);
    expect(got).toBeLessThanOrEqual(100_000 + 1024 * 1024);
    await until(() => gone);
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    expect(performance.now() - t0).toBeLessThan(5_000);
  });

  it('stores keys under the prefix, without double slashes, and lists only its own prefix', async () => {
    const base = uniq();
    const store = s3Store({ prefix: `${base}/snaps/` });
    const sibling = s3Store({ prefix: `${base}/snaps2` });
    expect(store.url).toBe(`s3://${s3.bucket}/${base}/snaps`);
    await store.put('manifests/m.json', Buffer.from('{}'));
    await store.put('chunks/00/c', Buffer.alloc(3));
    await sibling.put('chunks/00/d', Buffer.alloc(1));

    const root = s3Store({ prefix: '' });
    expect(root.url).toBe(`s3://${s3.bucket}`);
    expect(await keysOf(root.list(`${base}/`))).toEqual([
      `${base}/snaps/chunks/00/c`,
      `${base}/snaps/manifests/m.json`,
      `${base}/snaps2/chunks/00/d`,
    ]);
    expect(await keysOf(store.list(''))).toEqual(['chunks/00/c', 'manifests/m.json']);
    const [info] = await collect(store.list('chunks/'));
    expect(info).toMatchObject({ key: 'chunks/00/c', size: 3 });
    expect(Math.abs(info!.mtimeMs - Date.now())).toBeLessThan(60_000);
  });

  it('follows list pagination and skips objects no store key names', async () => {
    // s3rver cannot paginate here (its continuation tokens use DES, which OpenSSL 3 dropped), so a
    // scripted server plays S3. Pages: 2 keys + a token, then 1 key + a "folder" marker + a foreign key.
    const seen: string[] = [];
    const endpoint = await fakeServer((req, res) => {
      const q = new URL(req.url ?? '', 'http://x').searchParams;
      seen.push(`${q.get('prefix')}|${q.get('continuation-token') ?? ''}`);
      const item = (key: string, size: number): string =>
        `<Contents><Key>${key}</Key><LastModified>2024-05-01T10:00:00.000Z</LastModified><Size>${size}</Size></Contents>`;
      const page =
        q.get('continuation-token') === 'page-2'
          ? `${item('p/profiles/c', 3)}${item('p/profiles/', 0)}${item('p/profiles/with space', 1)}<IsTruncated>false</IsTruncated>`
          : `${item('p/profiles/a', 1)}${item('p/profiles/b', 2)}<IsTruncated>true</IsTruncated><NextContinuationToken>page-2</NextContinuationToken>`;
      res.writeHead(200, { 'content-type': 'application/xml' });
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>${page}</ListBucketResult>`,
      );
    });
    const store = s3Store({ endpoint, prefix: 'p' });
    expect(await collect(store.list('profiles/'))).toEqual([
      { key: 'profiles/a', size: 1, mtimeMs: Date.parse('2024-05-01T10:00:00Z') },
      { key: 'profiles/b', size: 2, mtimeMs: Date.parse('2024-05-01T10:00:00Z') },
      { key: 'profiles/c', size: 3, mtimeMs: Date.parse('2024-05-01T10:00:00Z') },
    ]);
    expect(seen).toEqual(['p/profiles/|', 'p/profiles/|page-2']);
  });

  it('leaves an injected client open on close()', async () => {
    const client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: S3RVER_CREDENTIALS,
    });
    try {
      const store = new S3Store({ bucket: s3.bucket, prefix: uniq(), client });
      await store.put('profiles/p', Buffer.from('x'));
      await store.close();
      expect(await store.has('profiles/p')).toBe(true);
    } finally {
      client.destroy();
    }
  });

  it('parses s3:// URLs and rejects bad ones with InvalidUrlError', () => {
    const opts = { endpoint: s3.endpoint, region: 'us-east-1', credentials: S3RVER_CREDENTIALS };
    const a = S3Store.fromUrl('s3://my-bucket', opts);
    const b = S3Store.fromUrl('s3://my.bucket-2/a/b/', opts);
    open.push(a, b);
    expect([a.url, a.bucket, a.prefix]).toEqual(['s3://my-bucket', 'my-bucket', '']);
    expect([b.url, b.bucket, b.prefix]).toEqual(['s3://my.bucket-2/a/b', 'my.bucket-2', 'a/b']);
    for (const bad of [
      's3://',
      's3:///prefix',
      'http://bucket/x',
      'bucket/x',
      's3://ab',
      `s3://${'b'.repeat(64)}`,
      's3://Upper',
      's3://under_score',
      's3://-dash',
      's3://a..b',
      's3://192.168.1.10',
      's3://xn--punycode',
      's3://bucket?versionId=1',
      's3://bucket/p#frag',
      's3://bucket/a//b',
      's3://bucket/a/../b',
      's3://bucket/with space',
      's3://bucket:9000/p',
      's3://AKIAKEY:hunter2@bucket/p',
    ]) {
      let err: unknown;
      try {
        S3Store.fromUrl(bad, opts);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(InvalidUrlError);
      expect(err, bad).toMatchObject({ code: 'LAZYSNAP_INVALID_URL' });
      expect((err as Error).message).not.toContain('hunter2');
    }
  });

  it('validates constructor options', () => {
    const base = { bucket: 'ok-bucket', credentials: S3RVER_CREDENTIALS, region: 'us-east-1' };
    expect(() => new S3Store({ ...base, bucket: 'Bad' })).toThrow(InvalidArgumentError);
    expect(() => new S3Store({ ...base, prefix: 'a/../b' })).toThrow(InvalidArgumentError);
    expect(() => new S3Store({ ...base, endpoint: 'ftp://host' })).toThrow(InvalidUrlError);
    expect(() => new S3Store({ ...base, endpoint: 'http://u:hunter2@host' })).toThrow(
      /credentials do not belong/,
    );
    expect(() => new S3Store({ ...base, maxAttempts: 0 })).toThrow(InvalidArgumentError);
    const client = new S3Client({ region: 'us-east-1' });
    try {
      expect(() => new S3Store({ bucket: 'ok-bucket', client, endpoint: 'http://127.0.0.1:1' })).toThrow(
        /endpoint must be unset when a client is given/,
      );
    } finally {
      client.destroy();
    }
  });

  it('takes the endpoint from AWS_ENDPOINT_URL_S3 (before AWS_ENDPOINT_URL), path-style, and the region from the chain', async () => {
    vi.stubEnv('AWS_ENDPOINT_URL_S3', s3.endpoint);
    vi.stubEnv('AWS_ENDPOINT_URL', 'http://127.0.0.1:9');
    vi.stubEnv('AWS_CONFIG_FILE', '/nonexistent/lazysnap-test');
    vi.stubEnv('AWS_PROFILE', undefined);
    vi.stubEnv('AWS_REGION', undefined);
    const prefix = uniq();
    const store = S3Store.fromUrl(`s3://${s3.bucket}/${prefix}`, { credentials: S3RVER_CREDENTIALS });
    open.push(store);
    s3.reset();
    await store.put('vmstate/v', Buffer.from('state'));
    expect((await store.get('vmstate/v')).toString()).toBe('state');
    expect(s3.requests.map((r) => `${r.method} ${r.path.split('?')[0]}`)).toEqual([
      `PUT /${s3.bucket}/${prefix}/vmstate/v`,
      `GET /${s3.bucket}/${prefix}/vmstate/v`,
    ]);
    // The SigV4 credential scope names the signing region: no region anywhere, so us-east-1...
    expect(s3.requests[0]!.headers.authorization).toContain('/us-east-1/s3/aws4_request');
    // ...and AWS_REGION when it is set.
    vi.stubEnv('AWS_REGION', 'eu-central-1');
    const regional = S3Store.fromUrl(`s3://${s3.bucket}/${prefix}`, { credentials: S3RVER_CREDENTIALS });
    open.push(regional);
    s3.reset();
    expect(await regional.has('vmstate/v')).toBe(true);
    expect(s3.requests[0]!.headers.authorization).toContain('/eu-central-1/s3/aws4_request');
  });

  it('reports a stopped server as a retryable StoreError, quickly', async () => {
    const gone = await startS3rver();
    await gone.stop();
    const store = s3Store({ endpoint: gone.endpoint, maxAttempts: 1 });
    const t0 = performance.now();
    const err = await store.get('chunks/ab/x').catch((e: unknown) => e);
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(err).toBeInstanceOf(StoreError);
    expect(err).toMatchObject({
      code: 'LAZYSNAP_STORE_ERROR',
      retryable: true,
      key: 'chunks/ab/x',
      store: store.url,
    });
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
  });

  it('classifies HTTP failures: 5xx/throttling retryable, other 4xx not, a missing bucket is not a missing key', async () => {
    let status = 503;
    let code = 'SlowDown';
    const endpoint = await fakeServer((_req, res) => {
      res.writeHead(status, { 'content-type': 'application/xml' }).end(s3ErrorXml(code));
    });
    const store = s3Store({ endpoint, maxAttempts: 1 });
    await expect(store.get('chunks/ab/x')).rejects.toMatchObject({
      code: 'LAZYSNAP_STORE_ERROR',
      status: 503,
      retryable: true,
    });
    [status, code] = [500, 'InternalError'];
    await expect(store.put('chunks/ab/x', Buffer.alloc(1))).rejects.toMatchObject({
      status: 500,
      retryable: true,
    });
    [status, code] = [403, 'AccessDenied'];
    await expect(store.get('chunks/ab/x')).rejects.toMatchObject({
      status: 403,
      retryable: false,
      message: expect.stringMatching(/AccessDenied/),
    });
    await expect(store.has('chunks/ab/x')).rejects.toMatchObject({ status: 403, retryable: false });

    const noBucket = s3Store({ bucket: 'no-such-bucket-here' });
    const err = await noBucket.get('chunks/ab/x').catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(NotFoundError);
    expect(err).toMatchObject({ code: 'LAZYSNAP_STORE_ERROR', status: 404, retryable: false });
  });

  it('reports a body cut short as a retryable StoreError', async () => {
    const endpoint = await fakeServer((_req, res) => {
      res.writeHead(200, { 'content-length': '1000', 'last-modified': new Date().toUTCString() });
      res.write(Buffer.alloc(10));
      setTimeout(() => res.socket?.destroy(), 20);
    });
    const store = s3Store({ endpoint, maxAttempts: 1 });
    await expect(store.get('chunks/ab/x')).rejects.toMatchObject({
      code: 'LAZYSNAP_STORE_ERROR',
      retryable: true,
    });
  });

  it('rejects with the signal reason when aborted mid-request: waiting for headers, body, or a retry', async () => {
    const stall = await fakeServer(() => {}); // never answers
    const halfBody = await fakeServer((_req, res) => {
      res.writeHead(200, { 'content-length': '1000' });
      res.write(Buffer.alloc(10)); // ...and never the rest
    });
    let hits = 0;
    const busy = await fakeServer((_req, res) => {
      hits++;
      res.writeHead(503, { 'content-type': 'application/xml' }).end(s3ErrorXml('SlowDown'));
    });
    for (const [endpoint, maxAttempts] of [
      [stall, 1],
      [halfBody, 1],
      [busy, 10],
    ] as const) {
      const store = s3Store({ endpoint, maxAttempts });
      const ac = new AbortController();
      const reason = new Error(`stop ${endpoint}`);
      let hitsAtAbort = -1;
      setTimeout(() => {
        hitsAtAbort = hits;
        ac.abort(reason);
      }, 150);
      const got = store.get('chunks/ab/x', { signal: ac.signal });
      await expect(got).rejects.toBe(reason);
      // At once, even while the SDK sleeps before a retry (it does not watch the signal then): the
      // rejection came before the SDK's next attempt reached the server, not after it.
      expect(hits).toBe(hitsAtAbort);
    }
    expect(hits).toBeGreaterThan(0);
  });

  it('never puts the secret key in url, error messages or the store object', async () => {
    const secret = 'lazysnapTESTsecret/0123456789abcdefXYZ';
    const credentials = { accessKeyId: 'S3RVER', secretAccessKey: secret }; // s3rver knows the key id only
    // s3rver does not check SigV4 signatures, so a scripted server refuses them as S3 would.
    const denied = await fakeServer((_req, res) => {
      res.writeHead(403, { 'content-type': 'application/xml' }).end(s3ErrorXml('SignatureDoesNotMatch'));
    });
    const gone = await startS3rver();
    await gone.stop();
    const wrongKey = s3Store({ credentials, endpoint: denied });
    const refused = s3Store({ credentials, endpoint: gone.endpoint, maxAttempts: 1 });
    const fromUrl = S3Store.fromUrl(`s3://${s3.bucket}/p`, {
      credentials,
      endpoint: s3.endpoint,
      region: 'us-east-1',
    });
    open.push(fromUrl);
    const errors = [
      await wrongKey.get('chunks/ab/x').catch((e: unknown) => e),
      await wrongKey.put('chunks/ab/x', Buffer.alloc(1)).catch((e: unknown) => e),
      await refused.get('chunks/ab/x').catch((e: unknown) => e),
      await collect(refused.list('')).catch((e: unknown) => e),
      await fromUrl.get('chunks/ab/missing').catch((e: unknown) => e),
    ];
    expect(errors[0]).toMatchObject({ code: 'LAZYSNAP_STORE_ERROR', status: 403, retryable: false });
    expect(errors[4]).toBeInstanceOf(NotFoundError);
    for (const e of errors) {
      expect(e).toMatchObject({ code: expect.stringMatching(/^LAZYSNAP_(STORE_ERROR|NOT_FOUND)$/) });
      const err = e as Error;
      for (const text of [
        err.message,
        err.stack ?? '',
        String(err),
        JSON.stringify(err),
        inspect(err, { depth: 4 }),
      ]) {
        expect(text).not.toContain(secret);
      }
    }
    for (const store of [wrongKey, refused, fromUrl]) {
      expect(store.url).not.toContain(secret);
      expect(inspect(store, { depth: 6 })).not.toContain(secret);
    }
  });
});
