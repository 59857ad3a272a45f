/**
 * The shared front of every backend: validates keys and read options, honours AbortSignals on
 * entry, refuses writes to read-only stores. Backends implement the do* methods and may assume a
 * valid key.
 */
import { IntegrityError, InvalidArgumentError, StoreReadOnlyError } from '../core/errors.js';
import type { ObjectInfo, ReadOptions, StoreBackend, WriteOptions } from './backend.js';
import { assertKey } from './keys.js';

export abstract class StoreBase implements StoreBackend {
  abstract readonly url: string;
  abstract readonly writable: boolean;

  protected abstract doGet(key: string, options: ReadOptions): Promise<Buffer>;
  protected abstract doPut(key: string, body: Buffer, options: WriteOptions): Promise<void>;
  protected abstract doHas(key: string, signal?: AbortSignal): Promise<boolean>;
  protected abstract doDelete(key: string, signal?: AbortSignal): Promise<void>;
  protected abstract doList(prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo>;

  async get(key: string, options: ReadOptions = {}): Promise<Buffer> {
    assertKey(key);
    options.signal?.throwIfAborted();
    const { maxBytes } = options;
    if (maxBytes !== undefined && !(Number.isSafeInteger(maxBytes) && maxBytes >= 0))
      throw new InvalidArgumentError('maxBytes', 'a safe integer >= 0', maxBytes);
    return this.doGet(key, options);
  }

  async put(key: string, body: Buffer, options: WriteOptions = {}): Promise<void> {
    assertKey(key);
    options.signal?.throwIfAborted();
    if (!this.writable) throw new StoreReadOnlyError(this.url);
    return this.doPut(key, body, options);
  }

  async has(key: string, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    assertKey(key);
    options.signal?.throwIfAborted();
    return this.doHas(key, options.signal);
  }

  async delete(key: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    assertKey(key);
    options.signal?.throwIfAborted();
    if (!this.writable) throw new StoreReadOnlyError(this.url);
    return this.doDelete(key, options.signal);
  }

  list(prefix: string, options: { signal?: AbortSignal } = {}): AsyncIterable<ObjectInfo> {
    if (prefix !== '') assertKey(prefix.replace(/\/$/, ''));
    options.signal?.throwIfAborted();
    return this.doList(prefix, options.signal);
  }

  async close(): Promise<void> {}
}

/**
 * The error for an object longer than ReadOptions.maxBytes, the same from every backend. `known`: the
 * length was announced (Content-Length, ContentLength, the file's size) and nothing was read;
 * otherwise `length` is what had arrived when the read stopped.
 */
export function tooLong(key: string, maxBytes: number, length: number, known: boolean): IntegrityError {
  return new IntegrityError(
    key,
    known ? 'object is longer than maxBytes' : 'object is longer than maxBytes (read stopped)',
    { expected: `at most ${maxBytes} bytes`, actual: known ? `${length} bytes` : `${length} bytes or more` },
  );
}
