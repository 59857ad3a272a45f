/**
 * An OTLP JSON export of lazysnap's spans (runtime/tracing.ts) back into trace files
 * (runtime/trace-format.ts), one per `lazysnap.restore` span, so that `lazysnap trace` draws a session
 * whether it was recorded by `serve --trace-dir` or exported through OpenTelemetry.
 *
 * The documents are read into spans first (cli/trace/otlp-spans.ts). The Collector's file exporter writes
 * one document per line, each a batch: a session's child spans may sit in other lines than its own span,
 * so every document is read before any span is grouped.
 *
 * What OTLP does not carry comes out empty: `origins` (not exported), and the prefetches one by one (a
 * `lazysnap.prefetch` span is a batch with counts); `hitsByTier` is then counted from the fetch spans.
 */
import { InvalidArgumentError } from '../../core/errors.js';
import {
  TRACE_FORMAT,
  TRACE_VERSION,
  type ChunkMapChar,
  type StallSplit,
  type TraceFault,
  type TraceFetch,
  type TraceFile,
  type TraceMilestone,
} from '../../runtime/trace-format.js';
import { ATTR, EVENT, SPAN } from '../../runtime/tracing.js';
import { attributeReader, readOtlpSpans, type Span } from './otlp-spans.js';

/**
 * One trace file per `lazysnap.restore` span in `docs` (the parsed lines of an export), in the order of
 * their start. `what` prefixes the argument of every error (the file name). Throws InvalidArgumentError
 * for a document that is not OTLP, a field or attribute of the wrong type, or no restore span at all.
 */
export function tracesFromOtlp(docs: readonly unknown[], what = 'otlp'): TraceFile[] {
  const spans = readOtlpSpans(docs, what);
  const restores = spans.filter((s) => s.name === SPAN.restore).sort((a, b) => Number(a.start - b.start));
  if (restores.length === 0)
    throw new InvalidArgumentError(
      what,
      `an OTLP export holding a ${SPAN.restore} span`,
      `${spans.length} spans, none named ${SPAN.restore}`,
    );
  const byId = new Map(spans.map((s) => [`${s.traceId}/${s.spanId}`, s]));
  return restores.map((r) =>
    sessionTrace(
      r,
      spans.filter((s) => descends(s, r, byId)),
    ),
  );
}

/** Whether `s` is below `root` in its trace (child, grandchild: the recorder may nest fetches). */
function descends(s: Span, root: Span, byId: Map<string, Span>): boolean {
  if (s.traceId !== root.traceId) return false;
  const seen = new Set<string>();
  for (let p = s.parentSpanId; p && !seen.has(p); p = byId.get(`${s.traceId}/${p}`)?.parentSpanId ?? '') {
    if (p === root.spanId) return true;
    seen.add(p); // a malformed export may loop
  }
  return false;
}

const ms = (t0: bigint, t: bigint) => Number(t - t0) / 1e6;

function sessionTrace(r: Span, below: Span[]): TraceFile {
  const a = attributeReader(r.attrs, r.where);
  const t0 = r.start;
  const fetches: TraceFetch[] = [];
  const faults: TraceFault[] = [];
  for (const s of below.filter((x) => x.name === SPAN.fetch).sort((x, y) => Number(x.start - y.start))) {
    const f = fetchOf(s, t0);
    fetches.push(f);
    const fault = faultOf(s, f, t0);
    if (fault) faults.push(fault);
  }
  faults.sort((x, y) => x.atMs - y.atMs);

  const milestones: TraceMilestone[] = r.events
    .map((e) => ({ name: e.name, atMs: ms(t0, e.time) }))
    .sort((x, y) => x.atMs - y.atMs);

  const maxChunk = [...fetches, ...faults].reduce((m, f) => Math.max(m, f.chunk), -1);
  const map = a.str(ATTR.chunkMap, undefined);
  const chunkCount = a.num(ATTR.chunkCount, map?.length ?? maxChunk + 1);
  const chunks = map ?? derivedChunkMap(chunkCount, fetches);

  const delivered = fetches.filter((f) => f.tier !== 'failed');
  const hitsByTier: Record<string, number> = {};
  for (const f of delivered) hitsByTier[f.tier] = (hitsByTier[f.tier] ?? 0) + 1;

  return {
    format: TRACE_FORMAT,
    version: TRACE_VERSION,
    snapshotId: a.str(ATTR.snapshotId, ''),
    restoreId: a.str(ATTR.restoreId, r.spanId),
    peerPid: a.num(ATTR.peerPid, 0),
    shape: a.str(ATTR.shape, 'unknown'),
    regions: a.num(ATTR.regions, 0),
    pageSize: a.num(ATTR.pageSize, 0),
    chunkSize: a.num(ATTR.chunkSize, 0),
    chunkCount,
    startedAt: new Date(Number(t0 / 1_000_000n)).toISOString(),
    durationMs: ms(t0, r.end),
    outcome: a.oneOf(ATTR.outcome, ['ended', 'killed', 'shutdown'] as const, 'ended'),
    origins: {},
    milestones,
    faults,
    fetches,
    chunks,
    stall: sessionStall(a, faults),
    totals: {
      faults: a.num(ATTR.faults, faults.length),
      zeroFaults: a.num(ATTR.zeroFaults, 0),
      fetchedChunks: a.num(ATTR.fetchedChunks, delivered.length),
      bytesFetched: a.num(
        ATTR.bytesFetched,
        delivered.reduce((n, f) => n + f.bytes, 0),
      ),
      prefetchedChunks: a.num(
        ATTR.prefetchedChunks,
        delivered.filter((f) => f.priority === 'prefetch').length,
      ),
      failedChunks: a.num(ATTR.failedChunks, fetches.length - delivered.length),
      hitsByTier,
    },
  };
}

/**
 * A fetch span runs from queued to installed; `lazysnap.queue_ms` is its wait for a slot and
 * `lazysnap.install_ms` the install after the chunk was resident, so the transfer and the resident
 * moment are found inside it.
 */
function fetchOf(s: Span, t0: bigint): TraceFetch {
  const a = attributeReader(s.attrs, s.where);
  const queuedMs = ms(t0, s.start);
  const endSpan = ms(t0, s.end);
  const startMs = Math.min(endSpan, queuedMs + a.num(ATTR.queueMs, 0));
  return {
    chunk: chunkAttr(a, s.where),
    priority: a.oneOf(ATTR.priority, ['demand', 'prefetch'] as const, 'demand'),
    tier: a.str(ATTR.tier, 'unknown'),
    queuedMs,
    startMs,
    endMs: Math.max(startMs, endSpan - a.num(ATTR.installMs, 0)),
    bytes: a.num(ATTR.bytes, 0),
    attempts: a.num(ATTR.attempts, 1),
    hedge: a.oneOf(ATTR.hedge, ['none', 'won', 'lost'] as const, 'none'),
    decodeMs: a.num(ATTR.decodeMs, 0),
    verifyMs: a.num(ATTR.verifyMs, 0),
  };
}

function chunkAttr(a: ReturnType<typeof attributeReader>, where: string): number {
  const c = a.num(ATTR.chunk, undefined);
  if (c === undefined || !Number.isSafeInteger(c) || c < 0)
    throw new InvalidArgumentError(`${where} attribute ${ATTR.chunk}`, 'a chunk index (an integer ≥ 0)', c);
  return c;
}

/**
 * The fault that waited for a demand fetch: its `fault` event, with the wait and its split as the
 * event's attributes or, failing that, the span's (tracing.ts puts them on the fetch span).
 */
function faultOf(s: Span, f: TraceFetch, t0: bigint): TraceFault | undefined {
  const ev = s.events.find((e) => e.name === EVENT.fault);
  if (!ev) return undefined;
  const merged = new Map([...s.attrs, ...ev.attrs]);
  const a = attributeReader(merged, s.where);
  const atMs = ms(t0, ev.time);
  const fetchMs = a.byTier(ATTR.stallFetch);
  const allTiers = a.num(ATTR.stallFetch, undefined);
  if (Object.keys(fetchMs).length === 0 && allTiers !== undefined) fetchMs[f.tier] = allTiers;
  return {
    chunk: f.chunk,
    atMs,
    waitMs: a.num(ATTR.faultWaitMs, Math.max(0, ms(t0, s.end) - atMs)),
    tier: f.tier,
    queueMs: a.num(ATTR.stallQueue, 0),
    fetchMs,
    decodeMs: a.num(ATTR.stallDecode, 0),
    verifyMs: a.num(ATTR.stallVerify, 0),
    installMs: a.num(ATTR.stallInstall, 0),
  };
}

/** The session span's stall split when it has one (set at the session's end), else the faults' sums. */
function sessionStall(a: ReturnType<typeof attributeReader>, faults: TraceFault[]): TraceFile['stall'] {
  const sum = (pick: (f: TraceFault) => number) => faults.reduce((n, f) => n + pick(f), 0);
  const fetchMs: StallSplit['fetchMs'] = {};
  for (const f of faults) for (const [t, v] of Object.entries(f.fetchMs)) fetchMs[t] = (fetchMs[t] ?? 0) + v;
  const recorded = a.byTier(ATTR.stallFetch);
  const allTiers = a.num(ATTR.stallFetch, undefined);
  // A session span with only the all-tier figure: keep it as one part rather than lose it.
  if (Object.keys(recorded).length === 0 && Object.keys(fetchMs).length === 0 && allTiers !== undefined)
    recorded['all tiers'] = allTiers;
  return {
    totalMs: a.num(
      ATTR.stallTotal,
      sum((f) => f.waitMs),
    ),
    faults: a.num(ATTR.stallFaults, faults.length),
    queueMs: a.num(
      ATTR.stallQueue,
      sum((f) => f.queueMs),
    ),
    fetchMs: Object.keys(recorded).length > 0 ? recorded : fetchMs,
    decodeMs: a.num(
      ATTR.stallDecode,
      sum((f) => f.decodeMs),
    ),
    verifyMs: a.num(
      ATTR.stallVerify,
      sum((f) => f.verifyMs),
    ),
    installMs: a.num(
      ATTR.stallInstall,
      sum((f) => f.installMs),
    ),
  };
}

/** Without `lazysnap.chunk_map`: what the fetch spans show (demanded, prefetched, failed), the rest untouched. */
function derivedChunkMap(count: number, fetches: TraceFetch[]): string {
  const map: ChunkMapChar[] = new Array<ChunkMapChar>(count).fill('.');
  for (const f of fetches)
    if (f.chunk < count) map[f.chunk] = f.tier === 'failed' ? 'x' : f.priority === 'demand' ? 'd' : 'p';
  return map.join('');
}
