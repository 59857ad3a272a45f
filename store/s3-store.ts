/**
 * A store in an S3 bucket, or on an S3-compatible server (MinIO, Ceph, R2, s3rver), under a key
 * prefix: key K lives at `${prefix}/${K}`. Every write is one PutObject, which S3 makes atomic
 * (readers see the old object or the new one), so no temp-and-rename dance is needed: chunks are a
 * few MiB and manifests tens of MiB at most, far below the 5 GiB single-PUT limit.
 *
 * Credentials come only from the options or the SDK's standard chain (environment, shared files,
 * SSO, IMDS...), never from the URL, and never reach `url` or an error message. The AbortSignal goes
 * to the SDK, which also watches it while sleeping between retries; whatever the SDK then throws
 * (its own AbortError), the caller gets `signal.reason`.
 */
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';

import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';

import {
  InvalidArgumentError,
  InvalidUrlError,
  LazysnapError,
  NotFoundError,
  StoreError,
} from '../core/errors.js';
import type { ObjectInfo, ReadOptions, WriteOptions } from './backend.js';
import { describeError, isRetryable, nameOf, statusOf } from './s3-errors.js';
import { bucketProblem, isKey, parseS3Url, prefixProblem } from './s3-url.js';
import { StoreBase, tooLong } from './store-base.js';

export interface S3StoreOptions {
  /** The bucket, named by S3's rules (3-63 of [a-z0-9.-]). */
  bucket: string;
  /** Key prefix, e.g. 'snapshots/prod'; '' stores at the bucket root. Outer '/' are ignored. @default '' */
  prefix?: string;
  /** An S3-compatible server's URL. @default env AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, else AWS */
  endpoint?: string;
  /** The signing region. @default the SDK chain (AWS_REGION, shared config), else 'us-east-1' */
  region?: string;
  /** Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`. @default true when an endpoint is set */
  forcePathStyle?: boolean;
  /** @default the SDK's standard provider chain (env, shared files, SSO, web identity, IMDS) */
  credentials?: S3ClientConfig['credentials'];
  /** Attempts per request, the first included; the SDK backs off between them. @default 3 (the SDK's) */
  maxAttempts?: number;
  /**
   * Keep-alive connections to S3: the most requests in flight. Requests beyond it wait in the SDK's agent,
   * behind the others, so it should cover every fetch slot (the restore runtime sizes it so).
   * @default 50 (the SDK's)
   */
  connections?: number;
  /** A client to use instead of creating one; it then carries endpoint, region and credentials, and close() leaves it open. */
  client?: S3Client;
}

const CLIENT_OPTIONS = [
  'endpoint',
  'region',
  'forcePathStyle',
  'credentials',
  'maxAttempts',
  'connections',
] as const;

export class S3Store extends StoreBase {
  readonly url: string;
  readonly writable = true;
  readonly bucket: string;
  readonly prefix: string;
  readonly #client: S3Client;
  readonly #ownsClient: boolean;
  /** `${prefix}/`, or '' at the bucket root. */
  readonly #base: string;

  constructor(options: S3StoreOptions) {
    super();
    if (typeof options !== 'object' || options === null)
      throw new InvalidArgumentError('options', 'an object', options);
    const problem = bucketProblem(options.bucket);
    if (problem) throw new InvalidArgumentError('bucket', `an S3 bucket name (${problem})`, options.bucket);
    const prefix =
      typeof options.prefix === 'string' ? options.prefix.replace(/^\/+|\/+$/g, '') : (options.prefix ?? '');
    const prefixIssue = prefixProblem(prefix);
    if (prefixIssue)
      throw new InvalidArgumentError('prefix', `a key prefix (${prefixIssue})`, options.prefix);
    this.bucket = options.bucket;
    this.prefix = prefix;
    this.#base = this.prefix ? `${this.prefix}/` : '';
    this.url = `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`;
    if (options.client !== undefined) {
      // Duck-typed: a second copy of the SDK in node_modules has its own S3Client class.
      if (typeof (options.client as { send?: unknown } | null)?.send !== 'function')
        throw new InvalidArgumentError('client', 'an S3Client', options.client);
      const both = CLIENT_OPTIONS.find((k) => options[k] !== undefined);
      if (both)
        throw new InvalidArgumentError(
          both,
          'unset when a client is given (configure the client instead)',
          options[both],
        );
      this.#client = options.client;
      this.#ownsClient = false;
    } else {
      this.#client = createClient(options);
      this.#ownsClient = true;
    }
  }

  /** A store for `s3://bucket[/prefix]`. Credentials never go in the URL: they come from `options` or the SDK chain. */
  static fromUrl(url: string, options: Omit<S3StoreOptions, 'bucket' | 'prefix'> = {}): S3Store {
    return new S3Store({ ...options, ...parseS3Url(url) });
  }

  protected async doGet(
    key: string,
    { maxBytes = Infinity, signal, onAnswer }: ReadOptions,
  ): Promise<Buffer> {
    return this.#call('GET', key, signal, async (abortSignal) => {
      const res = await this.#client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.#base + key }),
        { abortSignal },
      );
      const body = res.Body as Body | undefined;
      if (res.ContentLength !== undefined && res.ContentLength > maxBytes) {
        // Refused on the header, before a byte of the body is read: destroying the stream drops
        // the connection instead of reading (or keeping) what a tampered bucket would send.
        body?.destroy?.();
        throw tooLong(key, maxBytes, res.ContentLength, true);
      }
      onAnswer?.();
      const bytes = await readBody(key, body, res.ContentLength, maxBytes, signal);
      if (res.ContentLength !== undefined && bytes.length !== res.ContentLength) {
        throw new StoreError(
          this.url,
          key,
          `truncated response: ${bytes.length} of ${res.ContentLength} bytes`,
          { retryable: true },
        );
      }
      return bytes;
    });
  }

  protected async doPut(key: string, body: Buffer, { signal }: WriteOptions): Promise<void> {
    const ContentType = key.endsWith('.json') ? 'application/json' : 'application/octet-stream';
    await this.#call('PUT', key, signal, (abortSignal) =>
      this.#client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.#base + key,
          Body: body,
          ContentLength: body.length,
          ContentType,
        }),
        { abortSignal },
      ),
    );
  }

  protected async doHas(key: string, signal?: AbortSignal): Promise<boolean> {
    return this.#call('HEAD', key, signal, async (abortSignal) => {
      try {
        await this.#client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.#base + key }), {
          abortSignal,
        });
        return true;
      } catch (e) {
        if (statusOf(e) === 404) return false; // HEAD has no body: a missing bucket looks the same
        throw e;
      }
    });
  }

  protected async doDelete(key: string, signal?: AbortSignal): Promise<void> {
    await this.#call('DELETE', key, signal, async (abortSignal) => {
      try {
        await this.#client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.#base + key }), {
          abortSignal,
        });
      } catch (e) {
        // S3 answers 204 for a missing key; some compatible servers answer 404 NoSuchKey.
        if (!(statusOf(e) === 404 && nameOf(e) !== 'NoSuchBucket')) throw e;
      }
    });
  }

  protected async *doList(prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      const page = await this.#call(`LIST ${JSON.stringify(prefix)}`, undefined, signal, (abortSignal) =>
        this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.#base + prefix,
            ContinuationToken: token,
          }),
          { abortSignal },
        ),
      );
      for (const obj of page.Contents ?? []) {
        const key = obj.Key?.startsWith(this.#base) ? obj.Key.slice(this.#base.length) : undefined;
        // Skip what no lazysnap key names (console "folder" markers, foreign objects): callers could
        // not pass it back to get() or delete() anyway.
        if (key === undefined || !isKey(key)) continue;
        yield { key, size: obj.Size ?? 0, mtimeMs: obj.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  override async close(): Promise<void> {
    if (this.#ownsClient) this.#client.destroy();
  }

  /** Runs one request and turns whatever it throws into the caller's abort reason or a store error. */
  async #call<T>(
    op: string,
    key: string | undefined,
    signal: AbortSignal | undefined,
    run: (signal?: AbortSignal) => Promise<T>,
  ): Promise<T> {
    try {
      return await run(signal);
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (e instanceof LazysnapError) throw e;
      const status = statusOf(e);
      const name = nameOf(e);
      if (key !== undefined && (name === 'NoSuchKey' || (status === 404 && name !== 'NoSuchBucket')))
        throw new NotFoundError(this.url, key, e);
      throw new StoreError(this.url, key, `${op} failed: ${describeError(e, status)}`, {
        cause: e,
        status,
        retryable: isRetryable(e, status),
      });
    }
  }
}

type Body = AsyncIterable<Uint8Array> & { destroy?(error?: Error): void };

/**
 * The whole body in one Buffer, allocated once when the length is known (the common case). Without
 * a length, the read stops as soon as more than maxBytes have arrived, so at most maxBytes plus one
 * network read is held. On any failure (an abort included) the stream is destroyed, so the socket is
 * dropped rather than left holding an unread body: for-await does that for Node streams already,
 * but not when the failure comes before the loop, nor for an injected client's stream.
 */
async function readBody(
  key: string,
  body: Body | undefined,
  length: number | undefined,
  maxBytes: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  if (!body) return Buffer.alloc(0);
  const onAbort = (): void => body.destroy?.(signal?.reason as Error | undefined);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (length === undefined) {
      const parts: Uint8Array[] = [];
      let n = 0;
      for await (const part of body) {
        parts.push(part);
        n += part.length;
        if (n > maxBytes) throw tooLong(key, maxBytes, n, false);
      }
      return Buffer.concat(parts, n);
    }
    const out = Buffer.allocUnsafe(length);
    let n = 0;
    for await (const part of body) {
      if (n + part.length > length) throw new Error(`the body is longer than its Content-Length ${length}`);
      out.set(part, n);
      n += part.length;
    }
    return out.subarray(0, n);
  } catch (e) {
    body.destroy?.();
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

function createClient(o: S3StoreOptions): S3Client {
  const env = process.env;
  // Read here rather than left to the SDK, because an endpoint also switches on path-style.
  const fromEnv =
    env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS === 'true'
      ? undefined
      : env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined;
  const endpoint = o.endpoint ?? fromEnv;
  if (endpoint !== undefined) assertEndpoint(endpoint);
  if (o.forcePathStyle !== undefined && typeof o.forcePathStyle !== 'boolean')
    throw new InvalidArgumentError('forcePathStyle', 'a boolean', o.forcePathStyle);
  if (o.region !== undefined && (typeof o.region !== 'string' || !/^[a-z0-9-]{1,64}$/.test(o.region))) {
    throw new InvalidArgumentError('region', 'an AWS region name such as "eu-west-1"', o.region);
  }
  if (o.maxAttempts !== undefined && !(Number.isSafeInteger(o.maxAttempts) && o.maxAttempts >= 1)) {
    throw new InvalidArgumentError('maxAttempts', 'an integer >= 1', o.maxAttempts);
  }
  if (o.connections !== undefined && !(Number.isSafeInteger(o.connections) && o.connections >= 1)) {
    throw new InvalidArgumentError('connections', 'an integer >= 1', o.connections);
  }
  return new S3Client({
    endpoint,
    forcePathStyle: o.forcePathStyle ?? endpoint !== undefined,
    region: o.region ?? regionFromChain(),
    credentials: o.credentials,
    maxAttempts: o.maxAttempts,
    // With the default region a bucket elsewhere answers 301; follow it instead of failing.
    followRegionRedirects: endpoint === undefined,
    customUserAgent: 'lazysnap',
    ...(o.connections !== undefined
      ? {
          requestHandler: {
            httpAgent: new HttpAgent({ keepAlive: true, maxSockets: o.connections }),
            httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: o.connections }),
          },
        }
      : {}),
  });
}

/** The SDK's own region chain (env, shared config), asked once, lazily; 'us-east-1' where it finds none. */
function regionFromChain(): () => Promise<string> {
  let region: Promise<string> | undefined;
  return () =>
    (region ??= (async () => {
      const probe = new S3Client({});
      try {
        return await probe.config.region();
      } catch {
        return 'us-east-1';
      } finally {
        probe.destroy();
      }
    })());
}

function assertEndpoint(endpoint: unknown): asserts endpoint is string {
  if (typeof endpoint !== 'string') throw new InvalidArgumentError('endpoint', 'an http(s) URL', endpoint);
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    throw new InvalidUrlError(
      endpoint,
      'the S3 endpoint must be an http(s) URL such as http://127.0.0.1:9000',
    );
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new InvalidUrlError(endpoint, `the S3 endpoint must be http or https, not ${u.protocol}`);
  if (u.username || u.password)
    throw new InvalidUrlError(
      endpoint,
      'credentials do not belong in the endpoint URL: use the AWS credential chain',
    );
  if (u.search || u.hash)
    throw new InvalidUrlError(endpoint, 'the S3 endpoint takes no query string or fragment');
}

export { bucketProblem, parseS3Url } from './s3-url.js';
