/**
 * Options of `serve`, validated once at the boundary (STYLE.md: ServeOptions → ResolvedServeOptions).
 */
import type { KeyObject } from 'node:crypto';
import { availableParallelism } from 'node:os';

import { InvalidArgumentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { KeyProvider } from '../store/key-provider.js';
import { verifyKey, type KeyInput } from '../store/signing.js';

export interface ServeOptions {
  /** Store URLs in order; the first that delivers a verified chunk wins, errors fall through. */
  stores: string[];
  /** Endpoint for s3:// stores on S3-compatible servers. @default env AWS_ENDPOINT_URL_S3 */
  s3Endpoint?: string;
  /** The snapshot to serve. */
  id: string;
  /**
   * Unix socket path, created 0600; its directory is created 0700 when missing. The directory must
   * be owned by this user or root and writable by nobody else (runtime/serve-socket.ts), else
   * start() fails with InsecurePathError.
   */
  socketPath: string;
  /**
   * A gid whose members may connect: the socket becomes 0660 of that group (directories created
   * for it 0710), for peers running as another uid (a jailed Firecracker). Pair with allowUids.
   * @default none (only this user, and root, can connect)
   */
  socketGroup?: number;
  /** Host disk cache directory, shared by the serve processes of a host. @default none */
  cacheDir?: string;
  /** @default 8 GiB */
  cacheBudgetBytes?: number;
  /** Resident chunk bytes kept for the fault thread (shared by all sessions). @default 1 GiB */
  memoryBudgetBytes?: number;
  /** How long a fault may wait for a verified chunk before the session fails closed. @default 10000 */
  failTimeoutMs?: number;
  /**
   * How a session fails closed when no origin can deliver a chunk: 'poison' the chunk (the faulting
   * thread gets SIGBUS; KVM reports a memory error to the VMM), 'kill' the peer with SIGKILL (what
   * Firecracker's example handlers do), or 'auto': poison where the kernel can (6.6+), else kill.
   * @default 'auto'
   */
  failClosed?: 'auto' | 'poison' | 'kill';
  /**
   * Working-set prefetch: 'record' this snapshot's first-touch order into profiles/<id> (merged with
   * earlier recordings), 'replay' it at the start of each session, 'off', or 'auto': replay whenever
   * a profile exists. @default 'auto'
   */
  prefetch?: 'auto' | 'off' | 'record' | 'replay';
  /**
   * Where working-set profiles are read from first and saved to (profiles/<id>): a store URL that can
   * be written (a directory or s3://). Without it, profiles are read from the stores in order and saved
   * to the first writable one; `prefetch: 'record'` with only read-only HTTP origins is refused at start.
   * @default the first writable store
   */
  profileStore?: string;
  /** After replay, fetch every other missing chunk in the background (QEMU-postcopy style). @default false */
  fill?: boolean;
  /**
   * Prefetches a session queues ahead (replay, fill): the whole working set of a typical profile. How
   * many of all sessions' prefetches run at once is the fetcher's to size (prefetchConcurrency).
   * @default 256
   */
  prefetchWindow?: number;
  /**
   * The most prefetch fetches in flight for the whole server, in slots of their own (demand faults never
   * wait for them). How many run adapts to the origin: about twice its measured bandwidth × latency of
   * bytes (runtime/prefetch-sizing.ts). @default 128
   */
  prefetchConcurrency?: number;
  /**
   * Sequential read-ahead: while a peer's first touches move forward through its memory, the chunks
   * just ahead are fetched into memory (not installed), in a window that doubles up to this many bytes;
   * a random reader gets none. 0 turns it off. @default 16 MiB
   */
  readaheadBytes?: number;
  /** A recording is saved when no new chunk was touched for this long, or when its session ends. @default 2000 */
  recordIdleMs?: number;
  /** Per origin request. @default 5000 */
  attemptTimeoutMs?: number;
  /** Retries of a retryable origin error, per pass over the origins (a fault keeps making passes until failTimeoutMs while some origin fails transiently). @default 2 */
  retries?: number;
  /**
   * Hedge slow demand requests to remote origins: a request not answered by the origin's recent p95 (of
   * answers, or of whole bodies once answered) gets a second one (the next origin, else the same); the
   * first body wins, the other is aborted. About 5% more requests, for a much shorter tail. @default true
   */
  hedge?: boolean;
  /** Demand chunk fetches in flight (prefetches have slots of their own). @default 16 */
  fetchConcurrency?: number;
  /**
   * Threads that read, decode and verify chunks into memory (off the event loop that schedules every
   * session). @default min(4, available parallelism)
   */
  loaderThreads?: number;
  /**
   * Connections to each HTTP(S) origin and to S3, opened as needed. Requests beyond it queue in the
   * client behind the others, where a demand fault could wait for prefetches: so it covers every fetch
   * slot by default. @default fetchConcurrency + prefetchConcurrency
   */
  originConnections?: number;
  /** A connection that sends no handshake in this time is closed. @default 5000 */
  handshakeTimeoutMs?: number;
  /** On close(), how long live sessions may run before they are ended. @default 30000 */
  shutdownGraceMs?: number;
  /**
   * Write each session's trace (runtime/trace-format.ts; `lazysnap trace` draws it) to
   * `<traceDir>/<restoreId>.trace.json`, files 0600. Created 0700 if missing. @default off
   */
  traceDir?: string;
  /** Serve Prometheus metrics at http://metricsHost:metricsPort/metrics. @default off */
  metricsPort?: number;
  /** @default '127.0.0.1' (use '0.0.0.0' to be scraped from other hosts) */
  metricsHost?: string;
  /**
   * Only peers with these uids (SO_PEERCRED, read when the connection is accepted) are served;
   * others are closed unread, with a warning line and lazysnap_peers_refused_total. @default any
   */
  allowUids?: number[];
  /**
   * Ed25519 public key (a KeyObject or PEM): serve only a manifest with a valid detached signature
   * by it (store/signing.ts); otherwise start() fails with SignatureError (LAZYSNAP_BAD_SIGNATURE).
   * @default signatures are not checked
   */
  verifyKey?: KeyInput;
  /** Where the key of an encrypted snapshot comes from. @default the environment (envKeyProvider) */
  keys?: KeyProvider;
  logger?: Logger;
}

type Optional =
  | 's3Endpoint'
  | 'cacheDir'
  | 'traceDir'
  | 'metricsPort'
  | 'allowUids'
  | 'socketGroup'
  | 'keys'
  | 'logger'
  | 'profileStore';
export type ResolvedServeOptions = Required<Omit<ServeOptions, Optional | 'verifyKey'>> &
  Pick<ServeOptions, Optional> & { verifyKey?: KeyObject };

const GiB = 2 ** 30;
/** `--memory-budget`'s default (also what bench/lib/lazysnap-handler.ts sizes its table's pages by). */
export const DEFAULT_MEMORY_BUDGET_BYTES = 1 * GiB;
/** Node's timers (setTimeout, AbortSignal.timeout) fire after 1 ms when asked for more than this. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function int(
  name: string,
  v: number | undefined,
  dflt: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < min || v > max)
    throw new InvalidArgumentError(name, `an integer from ${min} to ${max}`, v);
  return v;
}

function isHttpUrl(u: string): boolean {
  return /^https?:\/\//i.test(u);
}

export function resolveServeOptions(o: ServeOptions): ResolvedServeOptions {
  if (!Array.isArray(o.stores) || o.stores.length === 0)
    throw new InvalidArgumentError('stores', 'at least one store URL', o.stores);
  if (typeof o.socketPath !== 'string' || o.socketPath === '')
    throw new InvalidArgumentError('socketPath', 'a path', o.socketPath);
  if (Buffer.byteLength(o.socketPath) > 107)
    throw new InvalidArgumentError('socketPath', 'at most 107 bytes (the sun_path limit)', o.socketPath);
  if (o.prefetch !== undefined && !['auto', 'off', 'record', 'replay'].includes(o.prefetch))
    throw new InvalidArgumentError('prefetch', "'auto', 'off', 'record' or 'replay'", o.prefetch);
  if (o.profileStore !== undefined && (typeof o.profileStore !== 'string' || o.profileStore === ''))
    throw new InvalidArgumentError('profileStore', 'a store URL', o.profileStore);
  if (o.profileStore !== undefined && isHttpUrl(o.profileStore))
    throw new InvalidArgumentError(
      'profileStore',
      'a writable store (a directory or s3://bucket/prefix)',
      o.profileStore,
    );
  // A recording with nowhere to go would be noticed only when the session ends: refuse it now.
  if (o.prefetch === 'record' && o.profileStore === undefined && o.stores.every(isHttpUrl))
    throw new InvalidArgumentError(
      'profileStore',
      "a writable store for prefetch 'record' to save profiles to (the stores are all read-only HTTP origins)",
      undefined,
    );
  if (o.failClosed !== undefined && !['auto', 'poison', 'kill'].includes(o.failClosed))
    throw new InvalidArgumentError('failClosed', "'auto', 'poison' or 'kill'", o.failClosed);
  // An empty list would refuse everyone: surely a mistake, so it is rejected rather than obeyed.
  if (
    o.allowUids !== undefined &&
    (!Array.isArray(o.allowUids) ||
      o.allowUids.length === 0 ||
      !o.allowUids.every((u) => Number.isSafeInteger(u) && u >= 0 && u < 2 ** 32 - 1))
  ) {
    throw new InvalidArgumentError(
      'allowUids',
      'a non-empty array of uids (integers from 0 to 4294967294; omit it to serve any uid)',
      o.allowUids,
    );
  }
  if (
    o.socketGroup !== undefined &&
    (!Number.isSafeInteger(o.socketGroup) || o.socketGroup < 0 || o.socketGroup >= 2 ** 32 - 1)
  ) {
    throw new InvalidArgumentError('socketGroup', 'a gid (an integer from 0 to 4294967294)', o.socketGroup);
  }
  if (o.traceDir !== undefined && (typeof o.traceDir !== 'string' || o.traceDir === ''))
    throw new InvalidArgumentError('traceDir', 'a directory path', o.traceDir);
  if (o.keys !== undefined && typeof (o.keys as Partial<KeyProvider> | null)?.getKey !== 'function')
    throw new InvalidArgumentError('keys', 'a KeyProvider ({ getKey(keyId) })', o.keys);
  const { verifyKey: vk, ...rest } = o;
  return {
    ...rest,
    ...(vk !== undefined ? { verifyKey: verifyKey(vk, 'verifyKey') } : {}),
    cacheBudgetBytes: int('cacheBudgetBytes', o.cacheBudgetBytes, 8 * GiB, 0),
    memoryBudgetBytes: int('memoryBudgetBytes', o.memoryBudgetBytes, DEFAULT_MEMORY_BUDGET_BYTES, 0),
    failTimeoutMs: int('failTimeoutMs', o.failTimeoutMs, 10_000, 1, MAX_TIMER_MS),
    attemptTimeoutMs: int('attemptTimeoutMs', o.attemptTimeoutMs, 5000, 1, MAX_TIMER_MS),
    retries: int('retries', o.retries, 2, 0, 10),
    fetchConcurrency: int('fetchConcurrency', o.fetchConcurrency, 16, 1, 1024),
    loaderThreads: int('loaderThreads', o.loaderThreads, Math.min(4, availableParallelism()), 1, 64),
    prefetchConcurrency: int('prefetchConcurrency', o.prefetchConcurrency, 128, 1, 1024),
    originConnections: int(
      'originConnections',
      o.originConnections,
      (o.fetchConcurrency ?? 16) + (o.prefetchConcurrency ?? 128),
      1,
      2048,
    ),
    handshakeTimeoutMs: int('handshakeTimeoutMs', o.handshakeTimeoutMs, 5000, 1, MAX_TIMER_MS),
    shutdownGraceMs: int('shutdownGraceMs', o.shutdownGraceMs, 30_000, 0, MAX_TIMER_MS),
    metricsHost: o.metricsHost ?? '127.0.0.1',
    failClosed: o.failClosed ?? 'auto',
    prefetch: o.prefetch ?? 'auto',
    fill: o.fill ?? false,
    hedge: o.hedge ?? true,
    prefetchWindow: int('prefetchWindow', o.prefetchWindow, 256, 1, 65536),
    recordIdleMs: int('recordIdleMs', o.recordIdleMs, 2000, 1, MAX_TIMER_MS),
    readaheadBytes: int('readaheadBytes', o.readaheadBytes, 16 * 2 ** 20, 0),
    ...(o.metricsPort !== undefined ? { metricsPort: int('metricsPort', o.metricsPort, 0, 0, 65535) } : {}),
  };
}
