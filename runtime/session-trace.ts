/**
 * What one restore session tells an operator beyond its summary line: the stall of every fault that
 * crossed into JS, split by where it went (runtime/stall.ts), always counted (summary, metrics); and, when
 * someone is looking, the order of events: an OpenTelemetry span tree (runtime/tracing.ts names) when a
 * tracer provider records, and a trace file (runtime/trace-format.ts) when `serve --trace-dir` asks.
 * Neither costs anything when off: no span is created unless the tracer records, and the per-fault
 * records are kept only for a file or a span.
 */
import { writeFile, rename } from 'node:fs/promises';
import path from 'node:path';

import { context as otelContext, trace, type Context, type Span, type Tracer } from '@opentelemetry/api';

import type { Logger } from '../core/logger.js';
import type { FetchResult, FetchTiming } from './fetcher.js';
import type { Handshake } from './handshake.js';
import type { RuntimeMetrics } from './metrics.js';
import { addSplit, emptySplit, splitWait } from './stall.js';
import {
  TRACE_FORMAT,
  TRACE_VERSION,
  splitTotal,
  type StallSplit,
  type TraceFault,
  type TraceFetch,
  type TraceFile,
  type TraceMilestone,
} from './trace-format.js';
import { ATTR, EVENT, SPAN, TRACER_NAME } from './tracing.js';

/** What a served snapshot's sessions share for tracing. */
export interface TraceContext {
  snapshotId: string;
  /** The tier names and the stores behind them, secrets removed ('origin0' → its URL). */
  origins: Record<string, string>;
  /** Where each session's trace file goes (`serve --trace-dir`); none: no file. */
  traceDir?: string;
  /** The parent of a session's span, if the platform passed one for this peer (RestoreHost.restore()). */
  parentFor?: (peerPid: number) => Context | undefined;
  /** Trace files being written: closing the snapshot's context waits for them. */
  writes?: Set<Promise<void>>;
}

export interface SessionTraceOptions {
  trace: TraceContext;
  restoreId: string;
  peerPid: number;
  handshake: Handshake;
  chunkSize: number;
  chunkCount: number;
  metrics: RuntimeMetrics;
  log: Logger;
  /** performance.now() of the session's start: t = 0 of the trace. */
  t0: number;
}

/** What the session says of itself when it ends; the rest of its trace file the recorder knows. */
export type SessionEnd = Pick<TraceFile, 'durationMs' | 'outcome' | 'totals'>;

/** A fault's wait, as ChunkDelivery measured it (performance.now() times). */
export interface StallRecord {
  chunk: number;
  needAt: number;
  doneAt: number;
  /** The tier that delivered the chunk ('memory': resident already; 'failed': failed closed). */
  tier: string;
  fetch?: FetchResult;
}

let tracer: Tracer | undefined;

export class SessionTrace {
  readonly #o: SessionTraceOptions;
  readonly #t0: number;
  readonly #wall = new Date();
  /** The session's stall so far. */
  readonly stall: StallSplit = emptySplit();
  stallFaults = 0;
  readonly #span: Span | undefined;
  readonly #ctx: Context | undefined;
  /** Kept only when a file or a span wants them. */
  readonly #faults: TraceFault[] | undefined;
  readonly #fetches: TraceFetch[] | undefined;
  /**
   * The entries in #fetches each fetch made, for a fault that learns when it really ended. One fetch can
   * have several: a read-ahead or a prefetch that a demand fault joined is the same fetch (the fetcher
   * shares it), recorded once for each that asked.
   */
  readonly #byTiming = new Map<FetchTiming, TraceFetch[]>();
  readonly #milestones: TraceMilestone[] = [];

  constructor(o: SessionTraceOptions) {
    this.#o = o;
    this.#t0 = o.t0;
    tracer ??= trace.getTracer(TRACER_NAME);
    const parent = o.trace.parentFor?.(o.peerPid) ?? otelContext.active();
    const span = tracer.startSpan(
      SPAN.restore,
      {
        // Every time on the spans of a session is on one clock (performance.timeOrigin + now), so that
        // its events and children line up with it (the SDK's default start is Date.now()).
        startTime: performance.timeOrigin + o.t0,
        attributes: {
          [ATTR.snapshotId]: o.trace.snapshotId,
          [ATTR.restoreId]: o.restoreId,
          [ATTR.peerPid]: o.peerPid,
          [ATTR.shape]: o.handshake.shape,
          [ATTR.regions]: o.handshake.regions.length,
          [ATTR.pageSize]: o.handshake.pageSize,
          [ATTR.chunkSize]: o.chunkSize,
          [ATTR.chunkCount]: o.chunkCount,
        },
      },
      parent,
    );
    // A no-op tracer's span records nothing: drop it, so that the fault path has one branch less.
    if (span.isRecording()) {
      this.#span = span;
      this.#ctx = trace.setSpan(parent, span);
    }
    const keep = this.#span !== undefined || o.trace.traceDir !== undefined;
    this.#faults = keep ? [] : undefined;
    this.#fetches = keep ? [] : undefined;
    this.milestone(EVENT.handshake, o.t0);
  }

  /** Whether per-fault and per-fetch records are kept (a span or a trace file wants them). */
  get detailed(): boolean {
    return this.#faults !== undefined;
  }

  #ms(at: number): number {
    return Math.round((at - this.#t0) * 1000) / 1000;
  }

  milestone(name: string, at = performance.now()): void {
    this.#milestones.push({ name, atMs: this.#ms(at) });
    this.#span?.addEvent(name, this.#wallOf(at));
  }

  #wallOf(at: number): number {
    return performance.timeOrigin + at;
  }

  /** A fault that crossed into JS is over (installed, or poisoned): its wait and where it went. */
  faultDone(r: StallRecord): void {
    const timing = r.fetch?.timing;
    if (timing && timing.endedAt > r.doneAt) {
      // A loader thread installed the chunk (LoadJob.installTo) before its fetch settled on the event
      // loop: it was resident by the install, so that is when the fetch ended, for every reader of it.
      timing.endedAt = r.doneAt;
      for (const f of this.#byTiming.get(timing) ?? []) f.endMs = Math.max(f.startMs, this.#ms(r.doneAt));
    }
    const split = splitWait(r.needAt, r.doneAt, r.fetch?.tier ?? r.tier, timing);
    const waitMs = Math.max(0, r.doneAt - r.needAt);
    addSplit(this.stall, split);
    this.stallFaults++;
    this.#o.metrics.addStall(waitMs, split);
    if (!this.#faults) return;
    const fault: TraceFault = {
      chunk: r.chunk,
      atMs: this.#ms(r.needAt),
      waitMs: round(waitMs),
      tier: r.tier,
      ...roundSplit(split),
    };
    this.#faults.push(fault);
    if (this.#span && this.#ctx) {
      // One span per demand fetch: from when its fetch was queued (or the fault, if later) to the install.
      const start = Math.min(r.needAt, timing?.queuedAt ?? r.needAt);
      const s = tracer!.startSpan(
        SPAN.fetch,
        {
          startTime: this.#wallOf(start),
          attributes: {
            [ATTR.chunk]: r.chunk,
            [ATTR.tier]: r.tier,
            [ATTR.priority]: 'demand',
            [ATTR.bytes]: r.fetch?.stored ?? 0,
            [ATTR.attempts]: timing?.attempts ?? 0,
            [ATTR.retries]: Math.max(0, (timing?.attempts ?? 1) - 1 - (timing?.hedges ?? 0)),
            [ATTR.hedge]: timing?.hedge ?? 'none',
            [ATTR.decodeMs]: round(timing?.loader.decodeMs ?? 0),
            [ATTR.verifyMs]: round(timing?.loader.verifyMs ?? 0),
            // The fetch's own times: slot taken after queued, and resident → installed.
            [ATTR.queueMs]: timing ? round(Math.max(0, timing.startedAt - start)) : 0,
            [ATTR.installMs]: timing ? round(Math.max(0, r.doneAt - timing.endedAt)) : fault.installMs,
            [ATTR.faultWaitMs]: fault.waitMs,
            ...stallAttributes(fault),
          },
        },
        this.#ctx,
      );
      s.addEvent(EVENT.fault, this.#wallOf(r.needAt));
      s.end(this.#wallOf(r.doneAt));
    }
  }

  /** A fetch this session asked for settled (demand, prefetch or read-ahead; shared fetches included). */
  fetched(chunk: number, priority: 'demand' | 'prefetch', r: FetchResult | undefined, askedAt: number): void {
    if (!this.#fetches) return;
    const t = r?.timing;
    if (r && !t) return; // resident already: no fetch
    const now = performance.now();
    const f: TraceFetch = {
      chunk,
      priority,
      tier: r ? r.tier : 'failed',
      queuedMs: this.#ms(t?.queuedAt ?? askedAt),
      startMs: this.#ms(t?.startedAt ?? askedAt),
      endMs: this.#ms(t?.endedAt ?? now),
      bytes: r?.stored ?? 0,
      attempts: t?.attempts ?? 0,
      hedge: t?.hedge ?? 'none',
      decodeMs: round(t?.loader.decodeMs ?? 0),
      verifyMs: round(t?.loader.verifyMs ?? 0),
    };
    this.#fetches.push(f);
    if (t) {
      const same = this.#byTiming.get(t);
      if (same) same.push(f);
      else this.#byTiming.set(t, [f]);
    }
  }

  /** A prefetch batch (a profile replay, a fill, a populate) ran from `start` to now. */
  prefetchBatch(kind: string, chunks: number, installed: number, start: number): void {
    if (!this.#span || !this.#ctx) return;
    tracer!
      .startSpan(
        SPAN.prefetch,
        {
          startTime: this.#wallOf(start),
          attributes: {
            [ATTR.batchKind]: kind,
            [ATTR.batchChunks]: chunks,
            [ATTR.batchInstalled]: installed,
          },
        },
        this.#ctx,
      )
      .end();
  }

  /** The session's stall for its summary line (ms, rounded). */
  summary(): { faults: number; totalMs: number } & StallSplit {
    return { faults: this.stallFaults, totalMs: round(splitTotal(this.stall)), ...roundSplit(this.stall) };
  }

  /**
   * The session ended: the span gets its totals and ends; the trace file is written (in the background:
   * a slow disk never holds the event loop that serves faults; a failure is logged, the restore is not
   * affected).
   */
  end(
    file: SessionEnd,
    /** The chunk map: built only if a span or a file takes it (one character per chunk). */
    chunkMap: () => string,
  ): void {
    if (!this.detailed) return;
    const stall = this.summary();
    const chunks = chunkMap();
    if (this.#span) {
      const s = this.#span;
      s.setAttributes(sessionEndAttributes({ ...file, chunks, stall }));
      if (file.outcome === 'killed') s.setStatus({ code: 2, message: 'the peer was killed (failed closed)' });
      s.end(this.#wallOf(performance.now()));
    }
    const dir = this.#o.trace.traceDir;
    if (dir === undefined) return;
    const o = this.#o;
    const out: TraceFile = {
      format: TRACE_FORMAT,
      version: TRACE_VERSION,
      snapshotId: o.trace.snapshotId,
      restoreId: o.restoreId,
      peerPid: o.peerPid,
      shape: o.handshake.shape,
      regions: o.handshake.regions.length,
      pageSize: o.handshake.pageSize,
      chunkSize: o.chunkSize,
      chunkCount: o.chunkCount,
      startedAt: this.#wall.toISOString(),
      origins: o.trace.origins,
      milestones: this.#milestones,
      faults: this.#faults ?? [],
      fetches: this.#fetches ?? [],
      stall,
      chunks,
      ...file,
    };
    const dest = path.join(dir, `${o.restoreId}.trace.json`);
    const tmp = `${dest}.${process.pid}.tmp`;
    const w = writeFile(tmp, JSON.stringify(out), { mode: 0o600 })
      .then(() => rename(tmp, dest))
      .then(
        () => o.log.debug({ trace: dest }, 'trace written'),
        (e: unknown) => o.log.warn({ err: (e as Error).message, dir }, 'could not write the trace file'),
      );
    const writes = o.trace.writes;
    if (writes) {
      writes.add(w);
      void w.finally(() => writes.delete(w));
    }
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function roundSplit(s: StallSplit): StallSplit {
  const fetchMs: Record<string, number> = {};
  for (const [k, v] of Object.entries(s.fetchMs)) fetchMs[k] = round(v);
  return {
    queueMs: round(s.queueMs),
    fetchMs,
    decodeMs: round(s.decodeMs),
    verifyMs: round(s.verifyMs),
    installMs: round(s.installMs),
  };
}

/** A stall split as the `lazysnap.stall.*` attributes: each part, and the fetch per tier and in all. */
export function stallAttributes(s: StallSplit): Record<string, number> {
  const a: Record<string, number> = {
    [ATTR.stallQueue]: s.queueMs,
    [ATTR.stallDecode]: s.decodeMs,
    [ATTR.stallVerify]: s.verifyMs,
    [ATTR.stallInstall]: s.installMs,
  };
  let fetch = 0;
  for (const [tier, ms] of Object.entries(s.fetchMs)) {
    a[`${ATTR.stallFetch}.${tier}`] = ms;
    fetch += ms;
  }
  a[ATTR.stallFetch] = round(fetch);
  return a;
}

/** What a session's span carries when it ends (runtime/tracing.ts): the outcome, totals, chunk map and stall. */
export function sessionEndAttributes(
  t: Pick<TraceFile, 'outcome' | 'totals' | 'chunks' | 'stall'>,
): Record<string, string | number> {
  return {
    [ATTR.outcome]: t.outcome,
    [ATTR.faults]: t.totals.faults,
    [ATTR.zeroFaults]: t.totals.zeroFaults,
    [ATTR.fetchedChunks]: t.totals.fetchedChunks,
    [ATTR.bytesFetched]: t.totals.bytesFetched,
    [ATTR.prefetchedChunks]: t.totals.prefetchedChunks,
    [ATTR.failedChunks]: t.totals.failedChunks,
    [ATTR.chunkMap]: t.chunks,
    [ATTR.stallFaults]: t.stall.faults,
    [ATTR.stallTotal]: t.stall.totalMs,
    ...stallAttributes(t.stall),
  };
}
