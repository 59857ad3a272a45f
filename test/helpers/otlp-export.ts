/**
 * A restore session exported the way OpenTelemetry exports it: real spans made through the OpenTelemetry
 * SDK with the names of runtime/tracing.ts (a `lazysnap.restore` span per session, a `lazysnap.fetch`
 * child per fault that waited with its `fault` event, a `lazysnap.prefetch` batch), serialized by the
 * OTLP JSON serializer the OTLP/HTTP exporter uses. What `lazysnap trace` reads back from it is then
 * compared with the trace it was made from. (test/unit/trace-html.test.ts also reads back what the
 * recorder itself exports, where userfaultfd is available.)
 */
import { context, trace as otelTrace, type HrTime } from '@opentelemetry/api';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';

import { sessionEndAttributes, stallAttributes } from '../../runtime/session-trace.js';
import type { TraceFile } from '../../runtime/trace-format.js';
import { ATTR, EVENT, SPAN, TRACER_NAME } from '../../runtime/tracing.js';

/** 2025-06-01T12:00:00Z, in seconds: t = 0 of the first session. */
const EPOCH_S = 1_748_779_200n;

/** An hrtime `ms` after t0 (ns since the epoch), exact to the nanosecond. */
function at(t0: bigint, ms: number): HrTime {
  const ns = t0 + BigInt(Math.round(ms * 1e6));
  return [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];
}

/**
 * The OTLP JSON document of `traces`, each session starting `gapMs` after the previous one, shaped as
 * runtime/session-trace.ts records them: the session span starts a little after its `handshake` event
 * (t = 0); a fetch span per fault that crossed into JS, from the fault or its fetch being queued
 * (whichever was first) to the install, with the wait and its split as attributes, an empty `fault`
 * event, and no `lazysnap.queue_ms` (when the transfer began is not exported). `onEvent` puts the wait
 * and split on the event instead and `queueMs` adds `lazysnap.queue_ms`: the other places tracing.ts
 * allows for them, so the reader is held to both.
 */
export function otlpExport(
  traces: TraceFile[],
  opts: { gapMs?: number; onEvent?: boolean; queueMs?: boolean } = {},
): string {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const tracer = provider.getTracer(TRACER_NAME);
  let t0 = EPOCH_S * 1_000_000_000n;
  for (const t of traces) {
    const session = tracer.startSpan(SPAN.restore, {
      startTime: at(t0, 0.25),
      attributes: {
        [ATTR.snapshotId]: t.snapshotId,
        [ATTR.restoreId]: t.restoreId,
        [ATTR.peerPid]: t.peerPid,
        [ATTR.shape]: t.shape,
        [ATTR.regions]: t.regions,
        [ATTR.pageSize]: t.pageSize,
        [ATTR.chunkSize]: t.chunkSize,
        [ATTR.chunkCount]: t.chunkCount,
      },
    });
    const parent = otelTrace.setSpan(context.active(), session);
    for (const m of t.milestones) session.addEvent(m.name, at(t0, m.atMs));
    for (const fault of t.faults) {
      const f =
        fault.tier === 'memory'
          ? undefined
          : t.fetches.find((x) => x.chunk === fault.chunk && x.priority === 'demand');
      const waited = { [ATTR.faultWaitMs]: fault.waitMs, ...stallAttributes(fault) };
      const span = tracer.startSpan(
        SPAN.fetch,
        {
          startTime: at(t0, Math.min(fault.atMs, f?.queuedMs ?? fault.atMs)),
          attributes: {
            [ATTR.chunk]: fault.chunk,
            [ATTR.tier]: fault.tier,
            [ATTR.priority]: 'demand',
            [ATTR.bytes]: f?.bytes ?? 0,
            [ATTR.attempts]: f?.attempts ?? 0,
            [ATTR.retries]: Math.max(0, (f?.attempts ?? 1) - 1),
            [ATTR.hedge]: f?.hedge ?? 'none',
            [ATTR.decodeMs]: f?.decodeMs ?? 0,
            [ATTR.verifyMs]: f?.verifyMs ?? 0,
            [ATTR.installMs]: fault.installMs,
            ...(opts.queueMs && f ? { [ATTR.queueMs]: f.startMs - Math.min(fault.atMs, f.queuedMs) } : {}),
            ...(opts.onEvent ? {} : waited),
          },
        },
        parent,
      );
      span.addEvent(EVENT.fault, opts.onEvent ? waited : {}, at(t0, fault.atMs));
      span.end(at(t0, fault.atMs + fault.waitMs));
    }
    const prefetches = t.fetches.filter((x) => x.priority === 'prefetch');
    if (prefetches.length > 0)
      tracer
        .startSpan(
          SPAN.prefetch,
          {
            startTime: at(t0, Math.min(...prefetches.map((x) => x.queuedMs))),
            attributes: {
              [ATTR.batchKind]: 'replay',
              [ATTR.batchChunks]: prefetches.length,
              [ATTR.batchInstalled]: prefetches.length,
            },
          },
          parent,
        )
        .end(at(t0, Math.max(...prefetches.map((x) => x.endMs))));
    session.setAttributes(sessionEndAttributes(t));
    // The span starts a moment after the handshake and lasts the session (runtime/session-trace.ts).
    session.end(at(t0, t.durationMs + 0.25));
    t0 += BigInt(Math.round(((opts.gapMs ?? 5000) + t.durationMs) * 1e6));
  }
  return new TextDecoder().decode(JsonTraceSerializer.serializeRequest(exporter.getFinishedSpans()));
}

/**
 * The same spans as the OpenTelemetry Collector's file exporter writes them: one document per line (here
 * one per span, so that a session's children and its own span sit on different lines), with 64-bit
 * integers as decimal strings, as Go's protojson encodes them.
 */
export function collectorLines(otlpJson: string): string {
  const doc = JSON.parse(otlpJson, (key, v: unknown) =>
    key === 'intValue' && typeof v === 'number' ? String(v) : v,
  ) as { resourceSpans: { resource: unknown; scopeSpans: { scope: unknown; spans: unknown[] }[] }[] };
  const lines: string[] = [];
  for (const rs of doc.resourceSpans)
    for (const ss of rs.scopeSpans)
      for (const span of ss.spans)
        lines.push(
          JSON.stringify({
            resourceSpans: [{ resource: rs.resource, scopeSpans: [{ scope: ss.scope, spans: [span] }] }],
          }),
        );
  return `${lines.join('\n')}\n`;
}
