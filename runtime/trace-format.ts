/**
 * The recorded restore: what `serve --trace-dir DIR` writes per session (`<restoreId>.trace.json`) and
 * what `lazysnap trace` draws. One file is one session, self-describing and versioned; every time is in
 * milliseconds from the session's start (`startedAt`, when its handshake was accepted), so a file can be
 * read without the clock of the host that wrote it.
 *
 * The same figures go to OpenTelemetry (runtime/session-trace.ts) when tracing is on; `lazysnap trace`
 * also reads an OTLP JSON export of them (cli/commands/trace.ts).
 */
import { InvalidArgumentError } from '../core/errors.js';

export const TRACE_FORMAT = 'lazysnap-trace';
export const TRACE_VERSION = 1;

/** Where a fault's wait went: the parts add up to `waitMs` (time stamps of the fault thread and the fetch). */
export interface StallSplit {
  /** Waiting for a fetch slot or a loader thread, and the hops between threads. */
  queueMs: number;
  /** The transfer: an origin's request and body, a local store's or the host cache's file read. By tier. */
  fetchMs: Record<string, number>;
  /** zstd decoding (and opening, for an encrypted snapshot). */
  decodeMs: number;
  /** BLAKE3 of the decoded chunk. */
  verifyMs: number;
  /** From the chunk being resident to the fault thread's UFFDIO_COPY having woken the peer. */
  installMs: number;
}

/** One fault that crossed into JS: a chunk that was not resident, one fault thread wait per chunk. */
export interface TraceFault extends StallSplit {
  chunk: number;
  /** When the fault thread read the fault. */
  atMs: number;
  /** From then until the chunk was installed (or poisoned). */
  waitMs: number;
  /** The tier that delivered it ('memory': another fetch had made it resident; 'failed': failed closed). */
  tier: string;
}

export interface TraceFetch {
  chunk: number;
  priority: 'demand' | 'prefetch';
  /** 'disk', 'origin0', 'origin1', ... or 'failed'. */
  tier: string;
  /** When it was queued, when it took a slot (the transfer began), when the chunk was resident or it failed. */
  queuedMs: number;
  startMs: number;
  endMs: number;
  /** Stored bytes moved (0 for a failure). */
  bytes: number;
  /** Requests made across origins and passes (1 for a clean fetch); retries are attempts - 1. */
  attempts: number;
  /** A hedge was sent (a second request past the origin's p95), and whether it answered first. */
  hedge: 'none' | 'won' | 'lost';
  decodeMs: number;
  verifyMs: number;
}

export interface TraceMilestone {
  /** 'handshake', 'first-fault-served', 'profile-installed', 'peer-exited', ... */
  name: string;
  atMs: number;
}

/**
 * One character per chunk: `z` zero (mapped without a fetch), `p` prefetched (installed before any
 * fault asked), `d` demanded (a fault waited for a fetch), `m` served from memory (resident already, no
 * fetch for this session), `x` failed closed, `.` never touched.
 */
export type ChunkMapChar = 'z' | 'p' | 'd' | 'm' | 'x' | '.';

export interface TraceFile {
  format: typeof TRACE_FORMAT;
  version: typeof TRACE_VERSION;
  snapshotId: string;
  restoreId: string;
  peerPid: number;
  /** The handshake's shape ('firecracker-v1', ...), regions and page size. */
  shape: string;
  regions: number;
  pageSize: number;
  chunkSize: number;
  chunkCount: number;
  /** Wall-clock time of t = 0 (ISO 8601). */
  startedAt: string;
  durationMs: number;
  outcome: 'ended' | 'killed' | 'shutdown';
  /** Origins as configured, secrets removed, by tier name ('origin0': first --store). */
  origins: Record<string, string>;
  milestones: TraceMilestone[];
  faults: TraceFault[];
  fetches: TraceFetch[];
  chunks: string;
  /** The session's stall: sums over `faults`. */
  stall: StallSplit & { totalMs: number; faults: number };
  totals: {
    faults: number;
    zeroFaults: number;
    fetchedChunks: number;
    bytesFetched: number;
    prefetchedChunks: number;
    failedChunks: number;
    hitsByTier: Record<string, number>;
  };
}

/** The total of a split's parts. */
export function splitTotal(s: StallSplit): number {
  let t = s.queueMs + s.decodeMs + s.verifyMs + s.installMs;
  for (const v of Object.values(s.fetchMs)) t += v;
  return t;
}

/**
 * Checks that `v` (parsed JSON) is a trace file this version reads: the header, and the type of every
 * field the renderer uses. Throws InvalidArgumentError naming the first field that is wrong.
 */
export function parseTraceFile(v: unknown, what = 'trace'): TraceFile {
  const bad = (field: string, expected: string, got: unknown): never => {
    throw new InvalidArgumentError(`${what}.${field}`, expected, got);
  };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad('', 'a JSON object', v);
  const o = v as Record<string, unknown>;
  if (o.format !== TRACE_FORMAT) bad('format', `"${TRACE_FORMAT}"`, o.format);
  if (o.version !== TRACE_VERSION)
    bad('version', `${TRACE_VERSION} (this lazysnap's trace version)`, o.version);
  for (const k of ['snapshotId', 'restoreId', 'shape', 'startedAt', 'outcome', 'chunks'])
    if (typeof o[k] !== 'string') bad(k, 'a string', o[k]);
  for (const k of ['peerPid', 'regions', 'pageSize', 'chunkSize', 'chunkCount', 'durationMs'])
    if (typeof o[k] !== 'number' || !Number.isFinite(o[k])) bad(k, 'a number', o[k]);
  if ((o.chunks as string).length !== o.chunkCount)
    bad('chunks', `${String(o.chunkCount)} characters`, o.chunks);
  if (!/^[zpdmx.]*$/.test(o.chunks as string)) bad('chunks', 'only the characters z p d m x .', o.chunks);
  for (const k of ['milestones', 'faults', 'fetches']) if (!Array.isArray(o[k])) bad(k, 'an array', o[k]);
  const num = (x: Record<string, unknown>, at: string, keys: string[]) => {
    for (const k of keys)
      if (typeof x[k] !== 'number' || !Number.isFinite(x[k])) bad(`${at}.${k}`, 'a number', x[k]);
  };
  (o.milestones as unknown[]).forEach((m, i) => {
    const x = m as Record<string, unknown>;
    if (typeof x?.name !== 'string') bad(`milestones[${i}].name`, 'a string', x?.name);
    num(x, `milestones[${i}]`, ['atMs']);
  });
  (o.faults as unknown[]).forEach((f, i) => {
    const x = f as Record<string, unknown>;
    num(x, `faults[${i}]`, ['chunk', 'atMs', 'waitMs', 'queueMs', 'decodeMs', 'verifyMs', 'installMs']);
    if (typeof x.tier !== 'string') bad(`faults[${i}].tier`, 'a string', x.tier);
    if (typeof x.fetchMs !== 'object' || x.fetchMs === null)
      bad(`faults[${i}].fetchMs`, 'an object', x.fetchMs);
  });
  (o.fetches as unknown[]).forEach((f, i) => {
    const x = f as Record<string, unknown>;
    num(x, `fetches[${i}]`, [
      'chunk',
      'queuedMs',
      'startMs',
      'endMs',
      'bytes',
      'attempts',
      'decodeMs',
      'verifyMs',
    ]);
    if (x.priority !== 'demand' && x.priority !== 'prefetch')
      bad(`fetches[${i}].priority`, '"demand" or "prefetch"', x.priority);
    if (typeof x.tier !== 'string') bad(`fetches[${i}].tier`, 'a string', x.tier);
  });
  const stall = o.stall as Record<string, unknown> | undefined;
  if (typeof stall !== 'object' || stall === null) bad('stall', 'an object', stall);
  num(stall!, 'stall', ['totalMs', 'faults', 'queueMs', 'decodeMs', 'verifyMs', 'installMs']);
  if (typeof o.totals !== 'object' || o.totals === null) bad('totals', 'an object', o.totals);
  return o as unknown as TraceFile;
}
