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
 * `lazysnap.prefetch` span is a batch with counts); `hitsByTier` is then counted from the fetch spans,
 * and when a demand fetch's transfer began is estimated (fetchOf).
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
import { attributeReader, readOtlpSpans, type AttributeReader, type Span } from './otlp-spans.js';

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
  // t = 0 is the session's start, which the recorder marks with the `handshake` event (the span itself
  // starts a little later, when the session object exists): the same origin as the trace file's.
  const t0 = r.events.find((e) => e.name === EVENT.handshake)?.time ?? r.start;
  const fetches: TraceFetch[] = [];
  const faults: TraceFault[] = [];
  let memoryHits = 0;
  for (const s of below.filter((x) => x.name === SPAN.fetch).sort((x, y) => Number(x.start - y.start))) {
    // The fault's wait and split may be on the span or on its `fault` event (tracing.ts allows both).
    const ev = s.events.find((e) => e.name === EVENT.fault);
    const attrs = attributeReader(ev ? new Map([...s.attrs, ...ev.attrs]) : s.attrs, s.where);
    const f = fetchOf(s, attrs, t0);
    // The recorder makes a span for every fault that crossed into JS; one served from memory (another
    // fetch had made the chunk resident) fetched nothing itself, so it is a fault and no fetch.
    if (f.tier === 'memory') memoryHits++;
    else fetches.push(f);
    const fault = ev ? faultOf(s, ev.time, attrs, f, t0) : undefined;
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
  if (memoryHits > 0) hitsByTier.memory = memoryHits;

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
    durationMs: sessionDuration(r, milestones, faults, fetches),
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
 * A fetch span runs from queued (or the fault, if later) to installed; `lazysnap.install_ms` is the part
 * after the chunk was resident, so the resident moment is found inside it. When the transfer began is
 * `lazysnap.queue_ms` after the start where the span has it (the recorder sets it); without it, it is put
 * where the fault's fetch time (`lazysnap.stall.fetch_ms`), then the decode and verify, end at the chunk
 * being resident, never before the span's start. That is an estimate: earlier than the truth by any wait
 * for a loader thread between the body and its decoding (the split counts it as queue), later when the
 * fault came after the transfer began (the split only counts from the fault).
 */
function fetchOf(s: Span, a: AttributeReader, t0: bigint): TraceFetch {
  const queuedMs = ms(t0, s.start);
  const endMs = Math.max(queuedMs, ms(t0, s.end) - a.num(ATTR.installMs, 0));
  const decodeMs = a.num(ATTR.decodeMs, 0);
  const verifyMs = a.num(ATTR.verifyMs, 0);
  const queueMs = a.num(ATTR.queueMs, undefined);
  const transferMs = Object.values(a.byTier(ATTR.stallFetch)).reduce((n, v) => n + v, 0);
  const startMs =
    queueMs !== undefined
      ? Math.min(endMs, queuedMs + queueMs)
      : Math.max(queuedMs, endMs - decodeMs - verifyMs - transferMs);
  return {
    chunk: chunkAttr(a, s.where),
    priority: a.oneOf(ATTR.priority, ['demand', 'prefetch'] as const, 'demand'),
    tier: a.str(ATTR.tier, 'unknown'),
    queuedMs,
    startMs,
    endMs,
    bytes: a.num(ATTR.bytes, 0),
    attempts: a.num(ATTR.attempts, 1),
    hedge: a.oneOf(ATTR.hedge, ['none', 'won', 'lost'] as const, 'none'),
    decodeMs,
    verifyMs,
  };
}

function chunkAttr(a: AttributeReader, where: string): number {
  const c = a.num(ATTR.chunk, undefined);
  if (c === undefined || !Number.isSafeInteger(c) || c < 0)
    throw new InvalidArgumentError(`${where} attribute ${ATTR.chunk}`, 'a chunk index (an integer ≥ 0)', c);
  return c;
}

/**
 * The fault a fetch span was made for: read at its `fault` event (`at`), its wait and split from `a`
 * (the span's attributes with the event's over them).
 */
function faultOf(s: Span, at: bigint, a: AttributeReader, f: TraceFetch, t0: bigint): TraceFault {
  const atMs = ms(t0, at);
  const fetchMs = a.byTier(ATTR.stallFetch);
  const allTiers = a.num(ATTR.stallFetch, undefined);
  // Only the all-tier figure (the recorder sets it beside the per-tier keys, 0 when nothing was fetched).
  if (Object.keys(fetchMs).length === 0 && allTiers) fetchMs[f.tier] = allTiers;
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

/**
 * How long the session lasted. Not `end - handshake`: the recorder gives its events and fetch spans
 * explicit times (performance.timeOrigin + performance.now()), while the SDK stamps the session span's
 * own start and end from Date.now() (anchored at the span's start), and the two clocks differ by however
 * far the system clock has moved since the process started. The span's own duration is one clock; it
 * starts a moment after the handshake, so anything recorded later than it lasts extends it.
 */
function sessionDuration(r: Span, ms: TraceMilestone[], faults: TraceFault[], fetches: TraceFetch[]): number {
  let d = Number(r.end - r.start) / 1e6;
  for (const m of ms) d = Math.max(d, m.atMs);
  for (const f of faults) d = Math.max(d, f.atMs + f.waitMs);
  for (const f of fetches) d = Math.max(d, f.endMs);
  return d;
}

/** The session span's stall split when it has one (set at the session's end), else the faults' sums. */
function sessionStall(a: AttributeReader, faults: TraceFault[]): TraceFile['stall'] {
  const sum = (pick: (f: TraceFault) => number) => faults.reduce((n, f) => n + pick(f), 0);
  const fetchMs: StallSplit['fetchMs'] = {};
  for (const f of faults) for (const [t, v] of Object.entries(f.fetchMs)) fetchMs[t] = (fetchMs[t] ?? 0) + v;
  const recorded = a.byTier(ATTR.stallFetch);
  const allTiers = a.num(ATTR.stallFetch, undefined);
  // A session span with only the all-tier figure: keep it as one part rather than lose it.
  if (Object.keys(recorded).length === 0 && Object.keys(fetchMs).length === 0 && allTiers)
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
