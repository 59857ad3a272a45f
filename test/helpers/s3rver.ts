/**
 * s3rver (the real S3 HTTP protocol, files on disk) in-process on 127.0.0.1, behind a tiny
 * counting proxy so tests can assert how many requests of each method an operation caused.
 * Both listen on ephemeral ports; stop() closes every socket so vitest can exit.
 * s3rver accepts only the dummy key pair S3RVER / S3RVER (it checks signatures).
 */
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';

import { tempDir } from './images.js';

/** The part of s3rver's (untyped, CommonJS) API used here. */
interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: http.Server;
}
type S3rverCtor = new (options: Record<string, unknown>) => S3rverInstance;

export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

/** What the AWS SDK's default chain reads to reach s3rver (for a child process's environment). */
export const S3RVER_ENV = {
  AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
  AWS_REGION: 'us-east-1',
} as const;

/**
 * Puts S3RVER_ENV in this process's environment (for code under test that uses the SDK's default
 * chain); returns what puts the previous values back.
 */
export function useS3rverEnv(): () => void {
  const saved = Object.fromEntries(Object.keys(S3RVER_ENV).map((k) => [k, process.env[k]]));
  Object.assign(process.env, S3RVER_ENV);
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

export interface S3rverHandle {
  /** The proxy's URL: point clients here. */
  endpoint: string;
  bucket: string;
  /**
   * Every request the proxy forwarded, in arrival order; `path` includes the query string.
   * `bytesOut` counts the response body bytes the proxy handed to the client's socket so far, and
   * `closed` turns true once the response is finished or its connection gone.
   */
  requests: {
    method: string;
    path: string;
    headers: http.IncomingHttpHeaders;
    bytesOut: number;
    closed: boolean;
  }[];
  /** Forgets the request log. */
  reset(): void;
  stop(): Promise<void>;
}

export async function startS3rver(bucket = 'lazysnap-test'): Promise<S3rverHandle> {
  const S3rver = createRequire(import.meta.url)('s3rver') as S3rverCtor;
  const tmp = tempDir('lazysnap-s3rver-');
  const s3 = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory: tmp.dir,
    configureBuckets: [{ name: bucket }],
  });
  const { port: s3Port } = await s3.run();

  const requests: S3rverHandle['requests'] = [];
  const agent = new http.Agent({ keepAlive: true });
  const proxy = http.createServer((req, res) => {
    const record = {
      method: req.method ?? '',
      path: req.url ?? '',
      headers: req.headers,
      bytesOut: 0,
      closed: false,
    };
    requests.push(record);
    // Node's server already answered any `Expect: 100-continue`; the header is unsigned (SigV4).
    const { expect: _expect, ...headers } = req.headers;
    const up = http.request(
      { host: '127.0.0.1', port: s3Port, method: req.method, path: req.url, headers, agent },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        // Counted as piped: pipe() stops reading upstream while the client's socket is full.
        upRes.on('data', (chunk: Buffer) => (record.bytesOut += chunk.length));
        upRes.pipe(res);
        upRes.on('error', () => res.destroy());
      },
    );
    up.on('error', () => res.destroy());
    // The body is forwarded once it has all arrived, as S3 stores an object only when its upload is
    // complete. s3rver writes a PUT's body to the object's file as it arrives and serves whatever is
    // there: a client killed mid-upload left a truncated object that HEAD reported present, so a
    // rerun skipped it (faults-snapshot.test.ts, when its kill landed mid-PUT).
    const body: Buffer[] = [];
    req.on('data', (chunk: Buffer) => body.push(chunk));
    req.on('end', () => up.end(Buffer.concat(body)));
    res.on('close', () => {
      record.closed = true;
      if (!res.writableFinished) up.destroy();
    });
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  const { port } = proxy.address() as AddressInfo;

  let stopped = false;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    requests,
    reset: () => void requests.splice(0),
    async stop() {
      if (stopped) return;
      stopped = true;
      const closed = new Promise<void>((resolve) => proxy.close(() => resolve()));
      proxy.closeAllConnections();
      await closed;
      agent.destroy();
      s3.httpServer?.closeAllConnections();
      await s3.close();
      tmp.cleanup();
    },
  };
}
