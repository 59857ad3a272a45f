// The cache tier's origin: nginx sends its cache misses here over loopback, and each GET or HEAD of
// /<key> becomes a signed S3 GetObject or HeadObject of the same key in one bucket.
//
// Why it exists: the bucket is encrypted with a customer KMS key, and S3 serves SSE-KMS objects
// only to requests signed with SigV4. Stock nginx cannot sign. Credentials come from the SDK's
// default chain (on the cache hosts, the instance role through IMDSv2), refreshed by the SDK.
//
// Deliberate simplifications: no Range (nginx caches whole objects, so it never sends one, and
// RFC 9110 allows ignoring it); no retries (one attempt, so a slow S3 surfaces as an error within
// nginx's proxy_read_timeout; lazysnap retries and falls back to s3:// itself); the query string is
// ignored (store keys carry none).
//
// Environment:
//   S3_ORIGIN_BUCKET     the bucket (required)
//   S3_ORIGIN_LISTEN     host:port to listen on (default 127.0.0.1:8081; port 0 picks a free one)
//   AWS_REGION           the bucket's region (else the SDK's chain)
//   AWS_ENDPOINT_URL_S3  an S3-compatible server instead of AWS (then path-style addressing)
// On start it prints one JSON line with the address it listens on; errors are JSON lines on stderr.
import http from 'node:http';
import { pipeline } from 'node:stream/promises';

import { GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';

const bucket = process.env.S3_ORIGIN_BUCKET;
const listen = process.env.S3_ORIGIN_LISTEN || '127.0.0.1:8081';
const endpoint = process.env.AWS_ENDPOINT_URL_S3 || undefined;
const listenMatch = /^(.+):(\d{1,5})$/.exec(listen);
if (!bucket || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || !listenMatch) {
  process.stderr.write(
    's3-origin: set S3_ORIGIN_BUCKET to a bucket name and S3_ORIGIN_LISTEN to host:port\n',
  );
  process.exit(2);
}

const s3 = new S3Client({
  ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
  maxAttempts: 1,
  requestHandler: { connectionTimeout: 2_000, requestTimeout: 10_000 },
  customUserAgent: 'lazysnap-cache-tier',
});

/** Headers that describe the object; everything else S3 sends stays here. */
const PASSED = [
  ['content-length', 'ContentLength'],
  ['content-type', 'ContentType'],
  ['etag', 'ETag'],
  ['last-modified', 'LastModified'],
];

function objectHeaders(out) {
  const h = {};
  for (const [name, field] of PASSED) {
    const v = out[field];
    if (v !== undefined) h[name] = v instanceof Date ? v.toUTCString() : String(v);
  }
  return h;
}

/** The status nginx should see for an SDK error: S3's own, 502 when there was no answer. */
function statusFor(e) {
  const status = e?.$metadata?.httpStatusCode;
  if (e?.name === 'NoSuchKey' || e?.name === 'NotFound') return 404;
  return Number.isInteger(status) && status >= 300 ? status : 502;
}

function logError(key, status, e) {
  // The error's name and message only: never request headers or credentials.
  process.stderr.write(
    `${JSON.stringify({ level: 'error', msg: 'S3 request failed', key, status, error: `${e?.name}: ${e?.message}` })}\n`,
  );
}

const server = http.createServer(async (req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-length': 0 }).end();
    return;
  }
  // The raw path, not a parsed URL, which would resolve "." and ".." segments into another key.
  const raw = (req.url ?? '').split('?')[0];
  let key = '';
  try {
    if (raw.startsWith('/')) key = decodeURIComponent(raw.slice(1));
  } catch {
    // malformed percent-encoding: refused below
  }
  if (key === '' || key.includes('\0') || key.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    res.writeHead(400, { 'content-length': 0 }).end();
    return;
  }
  const abort = new AbortController();
  res.once('close', () => abort.abort());
  const conditions = {
    ...(req.headers['if-none-match'] ? { IfNoneMatch: req.headers['if-none-match'] } : {}),
    ...(req.headers['if-modified-since']
      ? { IfModifiedSince: new Date(req.headers['if-modified-since']) }
      : {}),
  };
  const input = { Bucket: bucket, Key: key, ...conditions };
  let out;
  try {
    out = await s3.send(req.method === 'HEAD' ? new HeadObjectCommand(input) : new GetObjectCommand(input), {
      abortSignal: abort.signal,
    });
  } catch (e) {
    if (abort.signal.aborted) return;
    const status = statusFor(e);
    if (status === 304) {
      res.writeHead(304).end();
      return;
    }
    // A missing key is routine (a snapshot's manifest appears last); everything else is logged.
    if (status !== 404) logError(key, status, e);
    res.writeHead(status, { 'content-length': 0 }).end();
    return;
  }
  res.writeHead(200, objectHeaders(out));
  if (req.method === 'HEAD' || !out.Body) {
    res.end();
    return;
  }
  try {
    await pipeline(out.Body, res);
  } catch (e) {
    // Headers are out: the only way to tell nginx the body is short is to cut the connection,
    // which pipeline has done. nginx then neither caches nor completes the response.
    if (!abort.signal.aborted) logError(key, 502, e);
  }
});

// Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes idle connections first
// and never sends a request on one this side is closing.
server.keepAliveTimeout = 75_000;

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 10_000).unref();
  });
}

server.listen(Number(listenMatch[2]), listenMatch[1].replace(/^\[|\]$/g, ''), () => {
  const a = server.address();
  process.stdout.write(`${JSON.stringify({ msg: 'listening', address: a.address, port: a.port, bucket })}\n`);
});
