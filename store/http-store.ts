/**
 * A read-only store on an HTTP(S) origin: typically nginx or a CDN caching the bucket, so restore
 * hosts read chunks from a nearby cache instead of S3. Objects are `GET <base>/<key>`; existence is
 * `HEAD`. Plain HTTP has no listing, so list() refuses and points at the bucket or directory.
 *
 * Every request goes through one undici Pool (keep-alive, no pipelining: a slow chunk must not
 * hold up the ones queued behind it on the same socket). A body we do not need is dumped (up to
 * 128 KiB) or destroyed, never left unread, so the connection goes back to the pool.
 *
 * Errors are sorted in one place (#statusError, #networkError): 404/410 → NotFoundError; 408, 429
 * and 5xx, timeouts, resets and truncated bodies → StoreError with `retryable`; a body longer than
 * ReadOptions.maxBytes → IntegrityError (refused on its Content-Length before it is read, or cut
 * off once more than maxBytes arrived); anything else → StoreError without. Configured headers
 * (authorization) are never put in a message or `url`.
 */
import assert from 'node:assert';
import { constants as bufferConstants } from 'node:buffer';
import { STATUS_CODES } from 'node:http';

import { Pool, type Dispatcher } from 'undici';

import {
  IntegrityError,
  InvalidArgumentError,
  InvalidUrlError,
  NotFoundError,
  StoreError,
  redactUrl,
} from '../core/errors.js';
import type { ObjectInfo, ReadOptions } from './backend.js';
import { StoreBase, tooLong } from './store-base.js';

export interface HttpStoreOptions {
  /** Concurrent connections to the origin (one undici Pool). @default 16 */
  connections?: number;
  /**
   * Time allowed until the response headers arrive; then the request fails retryable. undici
   * checks it on a coarse (~0.5 s) tick, so it fires up to about a second late. @default 10_000
   */
  headersTimeoutMs?: number;
  /** Longest silence allowed between two body chunks. @default 30_000 */
  bodyTimeoutMs?: number;
  /** Sent with every request (e.g. `authorization`); never logged nor put in errors. @default {} */
  headers?: Record<string, string>;
  /** Use this dispatcher instead of an own Pool (not closed by close()). @example new Agent({ connect: { ca } }) */
  dispatcher?: Dispatcher;
}

export interface ResolvedHttpStoreOptions {
  connections: number;
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  headers: Record<string, string>;
  dispatcher: Dispatcher | undefined;
}

const DEFAULTS = { connections: 16, headersTimeoutMs: 10_000, bodyTimeoutMs: 30_000 } as const;
/**
 * Headers the store sets itself or that would break the framing undici relies on; and Range, which
 * would turn every answer into a part of the object (a 206, refused).
 */
const RESERVED_HEADERS = new Set([
  'range',
  'accept-encoding',
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'expect',
  'content-length',
  'te',
]);
/** Error codes for which the same request will fail the same way (the rest are worth a retry). */
const PERMANENT_CODES = new Set([
  'UND_ERR_CLOSED',
  'UND_ERR_DESTROYED',
  'UND_ERR_INVALID_ARG',
  'UND_ERR_NOT_SUPPORTED',
  'ENOTFOUND',
]);
const PERMANENT_TLS = /^(CERT_|UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED|SELF_SIGNED_CERT|ERR_TLS_CERT)/;
/** A body we do not need is read to its end up to this size (the socket is reused); past it, dropping the socket is cheaper. */
const DRAIN_LIMIT = 128 * 1024;
const DRAIN_TIMEOUT_MS = 1000;

export function resolveHttpStoreOptions(options: HttpStoreOptions = {}): ResolvedHttpStoreOptions {
  const known = new Set(['connections', 'headersTimeoutMs', 'bodyTimeoutMs', 'headers', 'dispatcher']);
  for (const k of Object.keys(options))
    if (!known.has(k)) throw new InvalidArgumentError(`options.${k}`, `one of ${[...known].join(', ')}`, k);
  const {
    connections = DEFAULTS.connections,
    headersTimeoutMs = DEFAULTS.headersTimeoutMs,
    bodyTimeoutMs = DEFAULTS.bodyTimeoutMs,
  } = options;
  if (!Number.isSafeInteger(connections) || connections < 1)
    throw new InvalidArgumentError('connections', 'an integer >= 1', connections);
  for (const [name, v] of [
    ['headersTimeoutMs', headersTimeoutMs],
    ['bodyTimeoutMs', bodyTimeoutMs],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 1)
      throw new InvalidArgumentError(name, 'an integer number of milliseconds >= 1', v);
  }
  const headers: Record<string, string> = {};
  if (options.headers !== undefined && (typeof options.headers !== 'object' || options.headers === null)) {
    throw new InvalidArgumentError('headers', 'an object of header name to string value', options.headers);
  }
  for (const [name, value] of Object.entries(options.headers ?? {})) {
    const lower = name.toLowerCase();
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(lower))
      throw new InvalidArgumentError('headers', 'valid HTTP header names', name);
    if (RESERVED_HEADERS.has(lower))
      throw new InvalidArgumentError(
        'headers',
        `no ${[...RESERVED_HEADERS].join('/')} header (the store sets or forbids these)`,
        name,
      );
    // The value is a secret more often than not: describe it, never echo it.
    if (typeof value !== 'string' || /[\r\n\0]/.test(value))
      throw new InvalidArgumentError(
        `headers.${lower}`,
        'a string without CR, LF or NUL',
        typeof value === 'string' ? 'a string with a control character' : value,
      );
    headers[lower] = value;
  }
  if (options.dispatcher !== undefined && typeof options.dispatcher?.request !== 'function') {
    throw new InvalidArgumentError('dispatcher', 'an undici Dispatcher', options.dispatcher);
  }
  return { connections, headersTimeoutMs, bodyTimeoutMs, headers, dispatcher: options.dispatcher };
}

export class HttpStore extends StoreBase {
  readonly url: string;
  readonly writable = false;
  readonly #origin: string;
  readonly #basePath: string;
  readonly #headers: Record<string, string>;
  readonly #opts: ResolvedHttpStoreOptions;
  readonly #dispatcher: Dispatcher;
  readonly #ownsDispatcher: boolean;
  #closed = false;

  constructor(baseUrl: string, options: HttpStoreOptions = {}) {
    super();
    let u: URL;
    try {
      u = new URL(baseUrl);
    } catch {
      throw new InvalidUrlError(String(baseUrl), 'not a URL; expected http(s)://host[:port][/path]');
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      throw new InvalidUrlError(baseUrl, `scheme ${u.protocol} is not http: or https:`);
    if (u.search || u.hash || baseUrl.includes('?') || baseUrl.includes('#')) {
      throw new InvalidUrlError(
        baseUrl,
        'a query string or fragment cannot be combined with object keys; give the base path only',
      );
    }
    this.#opts = resolveHttpStoreOptions(options);
    this.#headers = { ...this.#opts.headers, 'accept-encoding': 'identity' };
    if (u.username || u.password) {
      if (this.#headers.authorization !== undefined)
        throw new InvalidUrlError(
          baseUrl,
          'credentials in the URL and an authorization header: give one of them',
        );
      const basic = `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`;
      this.#headers.authorization = `Basic ${Buffer.from(basic).toString('base64')}`;
    }
    this.#origin = u.origin;
    this.#basePath = u.pathname.replace(/\/+$/, '');
    this.url = redactUrl(baseUrl).replace(/\/+$/, '');
    this.#ownsDispatcher = this.#opts.dispatcher === undefined;
    this.#dispatcher =
      this.#opts.dispatcher ??
      new Pool(this.#origin, {
        connections: this.#opts.connections,
        pipelining: 1,
        headersTimeout: this.#opts.headersTimeoutMs,
        bodyTimeout: this.#opts.bodyTimeoutMs,
      });
  }

  protected async doGet(
    key: string,
    { maxBytes = Infinity, signal, onAnswer }: ReadOptions,
  ): Promise<Buffer> {
    const res = await this.#request('GET', key, this.#headers, signal);
    const { statusCode: status, body } = res;
    if (status !== 200) {
      // An error page is small: drain it in the background so the socket is reused (dump destroys
      // the body past 128 KiB); the caller does not wait for a slow one.
      this.#drain(body, signal);
      // Never asked for (no Range is sent): a part of the object is not the object.
      const what = '206 Partial Content to a request without Range';
      if (status === 206) throw new StoreError(this.url, key, `origin answered ${what}`, { status });
      throw this.#statusError(key, status, 'GET');
    }
    try {
      const encoding = headerOf(res, 'content-encoding');
      if (encoding && encoding !== 'identity')
        throw new StoreError(
          this.url,
          key,
          `origin sent Content-Encoding ${encoding} though identity was asked for`,
          { status },
        );
      const length = parseLength(headerOf(res, 'content-length'));
      // Refused before a byte of the body is read; the catch below destroys a big body unread.
      if (length !== undefined && length > maxBytes) throw tooLong(key, maxBytes, length, true);
      if (length !== undefined && length > bufferConstants.MAX_LENGTH)
        throw new StoreError(this.url, key, `object of ${length} bytes exceeds the largest Buffer`, {
          status,
        });
      onAnswer?.();
      return await this.#readBody(key, body, length, maxBytes);
    } catch (e) {
      this.#drain(body, undefined); // drained if small and intact (socket reused), else destroyed
      throw this.#networkError(key, e, signal);
    }
  }

  /** HEAD. undici closes the socket after every HEAD (nodejs/undici#258), so keep has() off hot paths. */
  protected async doHas(key: string, signal?: AbortSignal): Promise<boolean> {
    const { statusCode: status, body } = await this.#request('HEAD', key, this.#headers, signal);
    this.#drain(body, signal); // HEAD: nothing to read; completes the request
    if (status === 200) return true;
    if (status === 404 || status === 410) return false;
    throw this.#statusError(key, status, 'HEAD');
  }

  protected async doPut(): Promise<void> {
    assert.fail('unreachable: StoreBase refuses writes to read-only stores');
  }

  protected async doDelete(): Promise<void> {
    assert.fail('unreachable: StoreBase refuses writes to read-only stores');
  }

  // A generator that yields nothing, so the failure comes on iteration as every backend's does.
  // eslint-disable-next-line require-yield
  protected async *doList(prefix: string): AsyncIterable<ObjectInfo> {
    throw new StoreError(
      this.url,
      prefix || undefined,
      'an HTTP origin cannot list objects; list through the bucket (s3://bucket/prefix) or the store directory instead',
      { retryable: false },
    );
  }

  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsDispatcher) await this.#dispatcher.close();
  }

  async #request(
    method: 'GET' | 'HEAD',
    key: string,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
  ): Promise<Dispatcher.ResponseData> {
    if (this.#closed) throw new StoreError(this.url, key, 'the store is closed', { retryable: false });
    try {
      const res = await this.#dispatcher.request({
        origin: this.#origin,
        path: `${this.#basePath}/${key.split('/').map(encodeURIComponent).join('/')}`,
        method,
        headers,
        signal,
        headersTimeout: this.#opts.headersTimeoutMs,
        bodyTimeout: this.#opts.bodyTimeoutMs,
      });
      // Body errors reach readers through for-await or dump(); a body destroyed on purpose
      // (undici then emits RequestAbortedError) must not become an uncaught exception.
      res.body.on('error', noop);
      return res;
    } catch (e) {
      throw this.#networkError(key, e, signal);
    }
  }

  /**
   * Reads an unwanted body to its end in the background, so its socket goes back to the pool, but
   * only up to DRAIN_LIMIT bytes and DRAIN_TIMEOUT_MS: a stalled drain would otherwise hold the
   * socket, and close() (which waits for requests in flight), until bodyTimeoutMs.
   */
  #drain(body: Dispatcher.ResponseData['body'], signal: AbortSignal | undefined): void {
    const timeout = AbortSignal.timeout(DRAIN_TIMEOUT_MS);
    void body
      .dump({ limit: DRAIN_LIMIT, signal: signal ? AbortSignal.any([signal, timeout]) : timeout })
      .catch(noop);
  }

  /**
   * Reads the body into one Buffer: preallocated when the length is known (no concat copy of a
   * 512 KiB chunk). Without a length (chunked), stops as soon as more than maxBytes have arrived,
   * so at most maxBytes plus one network read is held: leaving the loop destroys the body, and
   * with it the connection, rather than reading on whatever the origin still wants to send.
   */
  async #readBody(
    key: string,
    body: Dispatcher.ResponseData['body'],
    length: number | undefined,
    maxBytes: number,
  ): Promise<Buffer> {
    const out = length !== undefined ? Buffer.allocUnsafe(length) : undefined;
    const parts: Buffer[] = [];
    let received = 0;
    for await (const chunk of body as AsyncIterable<Buffer>) {
      if (out) {
        // undici frames the body by Content-Length; checked anyway, as copy() would silently clip.
        if (received + chunk.length > out.length)
          throw new StoreError(this.url, key, `body longer than its Content-Length ${length}`);
        chunk.copy(out, received);
      } else parts.push(chunk);
      received += chunk.length;
      if (received > maxBytes) throw tooLong(key, maxBytes, received, false);
    }
    if (length !== undefined && received !== length) {
      throw new StoreError(this.url, key, `truncated body: ${received} of ${length} bytes (Content-Length)`, {
        retryable: true,
      });
    }
    return out ?? Buffer.concat(parts, received);
  }

  #statusError(key: string, status: number, method: string): NotFoundError | StoreError {
    if (status === 404 || status === 410) return new NotFoundError(this.url, key);
    const retryable = status >= 500 || status === 429 || status === 408;
    const hint = status >= 300 && status < 400 ? ' (redirects are not followed: give the final URL)' : '';
    return new StoreError(
      this.url,
      key,
      `${method} answered HTTP ${status} ${STATUS_CODES[status] ?? ''}${hint}`.trimEnd(),
      { status, retryable },
    );
  }

  /** Our own errors pass through; an abort becomes signal.reason; the rest are network errors. */
  #networkError(key: string, e: unknown, signal: AbortSignal | undefined): unknown {
    if (signal?.aborted) return signal.reason;
    // IntegrityError included: wrapped, it would read as a retryable network error, and a lying
    // origin would be asked again instead of passed over.
    if (e instanceof StoreError || e instanceof NotFoundError || e instanceof IntegrityError) return e;
    const raw = (e as { code?: unknown }).code;
    const code = typeof raw === 'string' || typeof raw === 'number' ? String(raw) : '';
    if (this.#closed && (code === 'UND_ERR_CLOSED' || code === 'UND_ERR_DESTROYED')) {
      return new StoreError(this.url, key, 'the store is closed', { retryable: false, cause: e });
    }
    const retryable = !PERMANENT_CODES.has(code) && !PERMANENT_TLS.test(code);
    const what =
      code === 'UND_ERR_HEADERS_TIMEOUT'
        ? `no response headers within ${this.#opts.headersTimeoutMs} ms`
        : code === 'UND_ERR_BODY_TIMEOUT'
          ? `body stalled for ${this.#opts.bodyTimeoutMs} ms`
          : (e as Error).message;
    return new StoreError(this.url, key, `${what}${code ? ` (${code})` : ''}`, { retryable, cause: e });
  }
}

function noop(): void {}

function headerOf(res: Dispatcher.ResponseData, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function parseLength(v: string | undefined): number | undefined {
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
}
