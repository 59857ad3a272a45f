/**
 * One interface for every place snapshots live: a local directory, S3 (or an S3-compatible
 * server), or a read-only HTTP(S) origin such as an nginx or CDN cache in front of the bucket.
 * Keys are relative, '/'-separated and validated by store/keys.ts before any backend sees them.
 *
 * Errors: a missing object is NotFoundError (code LAZYSNAP_NOT_FOUND); a write to a read-only
 * store is StoreReadOnlyError; an object longer than ReadOptions.maxBytes is IntegrityError;
 * anything else is StoreError with `retryable` set when the same request may succeed later. Every
 * operation takes an AbortSignal and rejects with signal.reason.
 */
export interface ObjectInfo {
  key: string;
  size: number;
  /** Last modification time (ms since the epoch); used by gc's grace period. */
  mtimeMs: number;
}

export interface ReadOptions {
  signal?: AbortSignal;
  /**
   * The longest object the caller can use (for a chunk, store/chunk.ts maxStoredSize). A longer one
   * fails with IntegrityError (code LAZYSNAP_INTEGRITY; never retryable: an origin that sends more
   * is lying, and will lie again): at once when its length is known in advance (Content-Length, S3
   * ContentLength, the file's size), otherwise as soon as more than maxBytes bytes have arrived.
   * Nothing beyond maxBytes (plus one network read) is ever buffered. A safe integer >= 0.
   * @default unbounded
   */
  maxBytes?: number;
  /**
   * Called once, when the origin has answered with the object (a 200's headers, S3's GetObject output,
   * an opened file), before its body is read; never for an error. The fetcher hedges on it
   * (runtime/hedge.ts): an origin's slow tail is in the wait for its answer.
   */
  onAnswer?: () => void;
}

export interface WriteOptions {
  signal?: AbortSignal;
}

export interface StoreBackend {
  /** The store's URL with credentials removed: safe for logs and error messages. */
  readonly url: string;
  readonly writable: boolean;
  get(key: string, options?: ReadOptions): Promise<Buffer>;
  /**
   * Where the object lives on this host's filesystem, for a store that is a local directory: the
   * restore runtime's loader threads then read it themselves (one open and one read, off the event
   * loop). Absent for remote stores.
   */
  localPath?(key: string): string;
  /** Stores the object atomically: readers see the whole old object or the whole new one. */
  put(key: string, body: Buffer, options?: WriteOptions): Promise<void>;
  has(key: string, options?: { signal?: AbortSignal }): Promise<boolean>;
  delete(key: string, options?: { signal?: AbortSignal }): Promise<void>;
  /** Every object whose key starts with prefix ('' = all), in no particular order. */
  list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo>;
  close(): Promise<void>;
}
