/**
 * `lazysnap trace`: the lane reconstruction, reading trace files and OTLP JSON exports (and refusing
 * what is neither), the page it writes, and that page as headless Chromium renders it: a screenshot
 * that is not blank, the DOM after the page's script ran showing the lanes and counts the trace holds,
 * and nothing printed to the console.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { trace as otelTrace } from '@opentelemetry/api';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { UsageError } from '../../cli/common.js';
import { defaultOutput } from '../../cli/commands/trace.js';
import { stripLayout } from '../../cli/trace/chunk-strip.js';
import { partitionIntervals, type Interval } from '../../cli/trace/lanes.js';
import { pickTrace, readTraces } from '../../cli/trace/read-trace.js';
import { renderTraceHtml } from '../../cli/trace/render-html.js';
import { timelineModel } from '../../cli/trace/timeline-lanes.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { parseTraceFile, type TraceFile } from '../../runtime/trace-format.js';
import { chromiumPath, chromiumSkipReason, consoleLines, headless } from '../helpers/chromium.js';
import { cli } from '../helpers/cli.js';
import { runClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { collectorLines, otlpExport } from '../helpers/otlp-export.js';
import { colourCounts, decodePng } from '../helpers/png.js';
import { seededRandom } from '../helpers/seeded-random.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';
import { syntheticTrace } from '../helpers/synthetic-trace.js';

/**
 * The most intervals in progress at one instant, by a sweep: what the lane count must be. Half-open, so
 * intervals that touch do not overlap (at an instant, ends count before starts). An empty interval (a
 * wait of 0 ms) holds a thread only at its instant: it needs one more than what is in progress across it.
 */
function depth(xs: Interval[]): number {
  // [time, order, kind]: order 0 ends, 1 empty intervals, 2 starts.
  const events: [number, number, number][] = [];
  for (const x of xs)
    if (x.end > x.start) events.push([x.start, 2, 1], [x.end, 0, -1]);
    else events.push([x.start, 1, 0]);
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let n = 0;
  let max = 0;
  for (const [, order, d] of events) {
    n += d;
    max = Math.max(max, order === 1 ? n + 1 : n);
  }
  return max;
}

const faultIntervals = (t: TraceFile) => t.faults.map((f) => ({ start: f.atMs, end: f.atMs + f.waitMs }));
const fetchIntervals = (t: TraceFile, tier: string) =>
  t.fetches.filter((f) => f.tier === tier).map((f) => ({ start: f.startMs, end: f.endMs }));
const tiersOf = (t: TraceFile) => [...new Set(t.fetches.map((f) => f.tier))];
const countOf = (s: string, ch: string) => s.split(ch).length - 1;

describe('lane partitioning', () => {
  it('puts touching intervals in one lane and overlapping ones in the first free lane', () => {
    expect(partitionIntervals([])).toEqual({ lanes: 0, laneOf: [] });
    // [0,5) and [5,8) touch: one thread can wait on both. [1,3) overlaps the first: a second lane,
    // which is free again for [4,6) while lane 0 is still busy until 5.
    const p = partitionIntervals([
      { start: 0, end: 5 },
      { start: 5, end: 8 },
      { start: 1, end: 3 },
      { start: 4, end: 6 },
      { start: 2, end: 7 },
    ]);
    expect(p).toEqual({ lanes: 3, laneOf: [0, 0, 1, 1, 2] });
    // An end before its start (clock noise) is an empty interval, not a negative one.
    expect(
      partitionIntervals([
        { start: 3, end: 1 },
        { start: 3, end: 4 },
      ]).lanes,
    ).toBe(1);
  });

  it('uses exactly as many lanes as intervals overlap at most, and never overlaps two in a lane', () => {
    const rnd = seededRandom(7);
    for (let round = 0; round < 50; round++) {
      const xs = Array.from({ length: 1 + Math.floor(rnd() * 200) }, () => {
        // Quarter-ms grid, so that starts, ends and empty waits often fall on one instant.
        const start = Math.floor(rnd() * 400) / 4;
        return { start, end: rnd() < 0.15 ? start : start + Math.floor(rnd() * 120) / 4 };
      });
      const p = partitionIntervals(xs);
      expect(p.lanes).toBe(depth(xs));
      for (let lane = 0; lane < p.lanes; lane++) {
        const mine = xs
          .filter((_, i) => p.laneOf[i] === lane)
          .sort((a, b) => a.start - b.start || a.end - b.end);
        for (let i = 1; i < mine.length; i++) expect(mine[i]!.start).toBeGreaterThanOrEqual(mine[i - 1]!.end);
      }
    }
  });

  it('gives the timeline one lane per reconstructed thread and per connection of each tier', () => {
    const t = syntheticTrace({ seed: 3 });
    const m = timelineModel(t);
    expect(m.threads).toHaveLength(partitionIntervals(faultIntervals(t)).lanes);
    expect(m.threads.reduce((n, l) => n + l.items.length, 0)).toBe(t.faults.length);
    for (const tier of tiersOf(t))
      expect(m.connections.filter((l) => l.tier === tier)).toHaveLength(
        partitionIntervals(fetchIntervals(t, tier)).lanes,
      );
    // Origins in --store order after the disk cache.
    const order = [...new Set(m.connections.map((l) => l.tier))];
    expect(order.indexOf('disk')).toBeLessThan(order.indexOf('origin0'));
    expect(order.indexOf('origin0')).toBeLessThan(order.indexOf('origin1'));
  });
});

describe('reading traces', () => {
  it('reads a trace file as it is, and refuses a --restore that is not it', () => {
    const t = syntheticTrace();
    const [read] = readTraces(JSON.stringify(t), 'x.trace.json');
    expect(read).toEqual(t);
    expect(pickTrace([t], undefined, 'x')).toBe(t);
    expect(() => pickTrace([t], 'other', 'x.trace.json')).toThrow(
      /--restore must be a restore id in x\.trace\.json \(r-7f3a91c2\), received "other"/,
    );
    // A busy host's export: the ids listed in the error are capped, the line stays one line.
    const many = Array.from({ length: 25 }, (_, i) => ({ ...t, restoreId: `r-${i}` }));
    expect(() => pickTrace(many, undefined, 'otel.json')).toThrow(
      /otel\.json holds 25 restore sessions: pick one with --restore ID \(r-0, r-1, .*, r-19, and 5 more\)$/,
    );
  });

  it('turns an OTLP JSON export made by the OpenTelemetry SDK back into the session', () => {
    const t = syntheticTrace({ seed: 11, failures: 1 });
    for (const shape of [{}, { onEvent: true }, { queueMs: true }]) {
      const [back] = readTraces(otlpExport([t], shape), 'export.json');
      expect(back).toBeDefined();
      const b = back!;
      expect(b).toMatchObject({
        snapshotId: t.snapshotId,
        restoreId: t.restoreId,
        peerPid: t.peerPid,
        shape: t.shape,
        regions: t.regions,
        pageSize: t.pageSize,
        chunkSize: t.chunkSize,
        chunkCount: t.chunkCount,
        chunks: t.chunks,
        outcome: 'killed',
        // t = 0 is the handshake event, not the span's later start.
        startedAt: '2025-06-01T12:00:00.000Z',
        origins: {},
      });
      expect(b.durationMs).toBeCloseTo(t.durationMs, 3);
      expect(b.milestones.map((m) => m.name)).toEqual(t.milestones.map((m) => m.name));
      b.milestones.forEach((m, i) => expect(m.atMs).toBeCloseTo(t.milestones[i]!.atMs, 3));

      // Every fault that crossed into JS has a span, with its wait and split.
      expect(b.faults).toHaveLength(t.faults.length);
      for (const [i, f] of b.faults.entries()) {
        const want = t.faults[i]!;
        expect(f.chunk).toBe(want.chunk);
        expect(f.tier).toBe(want.tier);
        for (const k of ['atMs', 'waitMs', 'queueMs', 'decodeMs', 'verifyMs', 'installMs'] as const)
          expect(f[k], `${k} of chunk ${f.chunk}`).toBeCloseTo(want[k], 3);
        expect(Object.keys(f.fetchMs).sort()).toEqual(Object.keys(want.fetchMs).sort());
      }

      // Demand fetches one by one, except the waits on a chunk already in flight ('memory': no fetch of
      // their own); prefetches are a batch span in OTLP, so none come back.
      const demand = t.fetches.filter((f) => f.priority === 'demand');
      expect(b.fetches.map((f) => f.chunk).sort()).toEqual(demand.map((f) => f.chunk).sort());
      for (const f of b.fetches) {
        const want = demand.find((x) => x.chunk === f.chunk)!;
        const fault = t.faults.find((x) => x.chunk === f.chunk)!;
        expect(f).toMatchObject({ tier: want.tier, priority: 'demand', bytes: want.bytes });
        expect(f).toMatchObject({ attempts: want.attempts, hedge: want.hedge });
        // The span starts at the fault or the fetch's queueing, whichever came first.
        expect(f.queuedMs).toBeCloseTo(Math.min(fault.atMs, want.queuedMs), 3);
        for (const k of ['decodeMs', 'verifyMs'] as const)
          expect(f[k], `${k} of chunk ${f.chunk}`).toBeCloseTo(want[k], 3);
        // Found inside the span (the end less the install; without lazysnap.queue_ms, the start from the
        // split): within the rounding of the µs each figure was rounded to.
        for (const k of ['startMs', 'endMs'] as const)
          expect(f[k], `${k} of chunk ${f.chunk}`).toBeCloseTo(want[k], 2);
      }
      expect(b.stall.totalMs).toBeCloseTo(t.stall.totalMs, 3);
      expect(b.stall.faults).toBe(t.stall.faults);
      expect(Object.keys(b.stall.fetchMs).sort()).toEqual(Object.keys(t.stall.fetchMs).sort());
      const { hitsByTier, ...totals } = t.totals;
      expect(b.totals).toMatchObject(totals);
      // Counted from the spans: the demand fetches' tiers and the waits served from memory.
      expect(b.totals.hitsByTier.memory).toBe(t.faults.filter((f) => f.tier === 'memory').length);
      expect(b.totals.hitsByTier.origin0).toBeLessThanOrEqual(hitsByTier.origin0!);
    }
  });

  it('reads Collector JSON lines holding several sessions, whatever line each span is on', async () => {
    const a = syntheticTrace({ seed: 1, restoreId: 'r-a' });
    const b = syntheticTrace({ seed: 2, restoreId: 'r-b' });
    const text = collectorLines(otlpExport([a, b]));
    expect(text.trim().split('\n').length).toBeGreaterThan(10);
    expect(text).toContain('"intValue":"');
    const traces = readTraces(text, 'otel.jsonl');
    expect(traces.map((t) => t.restoreId)).toEqual(['r-a', 'r-b']);
    expect(traces[1]!.chunks).toBe(b.chunks);
    expect(traces[1]!.faults.length).toBe(b.faults.length);

    // Several sessions and no --restore: a usage error that lists them.
    expect(() => pickTrace(traces, undefined, 'otel.jsonl')).toThrow(UsageError);
    const { dir, cleanup } = tempDir();
    try {
      const file = path.join(dir, 'otel.jsonl');
      writeFileSync(file, text);
      const r = await cli(['trace', file]);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/holds 2 restore sessions: pick one with --restore ID \(r-a, r-b\)/);
      expect(r.err.trim().split('\n')).toHaveLength(1);
      const ok = await cli(['trace', file, '--restore', 'r-b', '-o', '-']);
      expect(ok.code).toBe(0);
      expect(ok.out).toContain('data-restore-id="r-b"');
    } finally {
      cleanup();
    }
  });

  it('refuses what is not a trace with one line naming the file and what is wrong (exit 2)', async () => {
    const { dir, cleanup } = tempDir();
    const good = syntheticTrace({ chunkCount: 64, threads: 1, faultsPerThread: 4 });
    const otlpNoRestore = JSON.parse(otlpExport([good])) as {
      resourceSpans: { scopeSpans: { spans: { name: string }[] }[] }[];
    };
    for (const ss of otlpNoRestore.resourceSpans[0]!.scopeSpans)
      ss.spans = ss.spans.filter((s) => s.name !== 'lazysnap.restore');
    const badAttr = otlpExport([good]).replace(
      /"key":"lazysnap\.chunk_count","value":\{"intValue":\d+\}/,
      '"key":"lazysnap.chunk_count","value":{"stringValue":"many"}',
    );
    const cases: [string, string, RegExp][] = [
      [
        'text.json',
        'hello',
        /text\.json must be JSON: a lazysnap trace file or an OTLP JSON export, received "Unexpected token/,
      ],
      [
        'cut.trace.json',
        JSON.stringify(good, null, 1).slice(0, 300),
        /cut\.trace\.json line \d+ column \d+ must be JSON/,
      ],
      ['empty.json', '', /empty\.json must be JSON.*received "an empty file"/],
      [
        'other.json',
        JSON.stringify({ ...good, format: 'chrome-trace' }),
        /other\.json: trace\.format must be "lazysnap-trace", received "chrome-trace"/,
      ],
      ['v2.json', JSON.stringify({ ...good, version: 2 }), /v2\.json: trace\.version must be 1 .*received 2/],
      [
        'type.json',
        JSON.stringify({ ...good, faults: good.faults.map((f, i) => (i === 2 ? { ...f, atMs: '12' } : f)) }),
        /type\.json: trace\.faults\[2\]\.atMs must be a number, received "12"/,
      ],
      [
        'nospan.json',
        JSON.stringify(otlpNoRestore),
        /nospan\.json must be an OTLP export holding a lazysnap\.restore span, received "\d+ spans, none named lazysnap\.restore"/,
      ],
      [
        'attr.json',
        badAttr,
        /attr\.json: .*\(lazysnap\.restore [0-9a-f]{16}\) attribute lazysnap\.chunk_count must be a number, received "many"/,
      ],
      ['nototlp.json', '{"resourceSpans": 3}', /nototlp\.json\.resourceSpans must be an array, received 3/],
    ];
    try {
      for (const [name, text, msg] of cases) {
        const file = path.join(dir, name);
        writeFileSync(file, text);
        expect(() => readTraces(text, file), name).toThrow(InvalidArgumentError);
        try {
          readTraces(text, file);
        } catch (e) {
          expect((e as InvalidArgumentError).code).toBe('LAZYSNAP_INVALID_ARGUMENT');
        }
        const r = await cli(['trace', file]);
        expect(r.code, name).toBe(2);
        expect(r.err, name).toMatch(msg);
        expect(r.err.trim().split('\n'), name).toHaveLength(1);
        expect(existsSync(defaultOutput(file)), name).toBe(false);
      }
      for (const [argv, msg] of [
        [['trace'], /trace takes one FILE .*received none/],
        [['trace', 'a.json', 'b.json'], /trace takes one FILE .*received "a\.json" "b\.json"/],
        [
          ['trace', path.join(dir, 'missing.json')],
          /FILE must be a readable file, received ".*missing\.json \(ENOENT\)"/,
        ],
        [['trace', path.join(dir, 'text.json'), '-o', path.join(dir, 'text.json')], /is FILE itself/],
        [['trace', 'x.json', '--bogus'], /Unknown option '--bogus'/],
      ] as const) {
        const r = await cli([...argv]);
        expect(r.code, argv.join(' ')).toBe(2);
        expect(r.err, argv.join(' ')).toMatch(msg);
      }
    } finally {
      cleanup();
    }
  });
});

describe.skipIf(!hasUffd)(uffdSuite('what the recorder exports'), () => {
  const exporter = new InMemorySpanExporter();
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir();
    otelTrace.setGlobalTracerProvider(
      new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
    );
  });
  afterAll(() => {
    otelTrace.disable();
    tmp?.cleanup();
  });

  it('reads back from the OTLP export of a real session what its trace file holds', async () => {
    const CS = 256 * 1024;
    const img = makeImage(tmp.dir, 8 * 1024 * 1024, CS, { zeroEvery: 4 });
    const store = path.join(tmp.dir, 'store');
    await snapshotTo(store, img.path, 'vm', CS);
    const traceDir = path.join(tmp.dir, 'traces');
    const server = await serve(tmp.dir, { stores: [store], id: 'vm', traceDir });
    let restoreId: string;
    try {
      const r = await runClient([
        ...['--socket', server.socketPath, '--image', img.path, '--touch', 'chunk'],
        ...['--chunk-size', String(CS), '--threads', '3', '--order', 'random', '--seed', '5'],
      ]);
      expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
      restoreId = (await summaries(server, 1))[0]!.restoreId;
    } finally {
      await server.close(0);
    }
    const fileText = readFileSync(path.join(traceDir, `${restoreId}.trace.json`), 'utf8');
    const file = parseTraceFile(JSON.parse(fileText));
    const otlp = new TextDecoder().decode(JsonTraceSerializer.serializeRequest(exporter.getFinishedSpans()));
    const [back] = readTraces(otlp, 'export.json');
    const b = back!;

    expect(b).toMatchObject({
      snapshotId: 'vm',
      restoreId,
      peerPid: file.peerPid,
      shape: file.shape,
      regions: file.regions,
      pageSize: file.pageSize,
      chunkSize: file.chunkSize,
      chunkCount: file.chunkCount,
      chunks: file.chunks,
      outcome: file.outcome,
      totals: { ...file.totals, hitsByTier: expect.any(Object) },
    });
    expect(b.stall).toMatchObject({ faults: file.stall.faults });
    expect(b.stall.totalMs).toBeCloseTo(file.stall.totalMs, 2);
    // One clock for both (the recorder's), so times agree to the rounding of the file (µs).
    const close = (x: number, y: number, what: string) => expect(Math.abs(x - y), what).toBeLessThan(0.02);
    // The file's duration is whole ms (the summary's); the span's own is taken a moment later and
    // starts a moment after the handshake (otlp-json.ts sessionDuration).
    expect(Math.abs(b.durationMs - file.durationMs)).toBeLessThan(1.5);
    expect(b.milestones.map((m) => m.name)).toEqual(file.milestones.map((m) => m.name));
    b.milestones.forEach((m, i) => close(m.atMs, file.milestones[i]!.atMs, m.name));
    expect(b.faults.length).toBe(file.faults.length);
    expect(b.faults.length).toBeGreaterThan(5);
    for (const f of b.faults) {
      const want = file.faults.find((x) => x.chunk === f.chunk)!;
      expect(f.tier).toBe(want.tier);
      close(f.atMs, want.atMs, `fault ${f.chunk} atMs`);
      close(f.waitMs, want.waitMs, `fault ${f.chunk} waitMs`);
      close(f.queueMs, want.queueMs, `fault ${f.chunk} queueMs`);
      expect(f.fetchMs).toEqual(want.fetchMs);
    }
    // A demand fetch is resident when the file says. When its transfer began is not exported: the
    // estimate (otlp-json.ts fetchOf) is early by at most the wait for a loader thread, which the
    // fault's split counts as queue.
    for (const f of b.fetches) {
      const want = file.fetches.find((x) => x.chunk === f.chunk && x.tier === f.tier)!;
      const fault = file.faults.find((x) => x.chunk === f.chunk)!;
      expect(want, `chunk ${f.chunk} in the file's fetches`).toBeDefined();
      close(f.endMs, want.endMs, `fetch ${f.chunk} endMs`);
      expect(f.startMs, `fetch ${f.chunk} startMs`).toBeGreaterThan(want.startMs - fault.queueMs - 0.02);
      expect(f.startMs).toBeLessThanOrEqual(f.endMs);
    }
    // The same threads drawn from either.
    const lanes = (t: TraceFile) => partitionIntervals(faultIntervals(t)).lanes;
    expect(lanes(b)).toBe(lanes(file));
    const otlpFile = path.join(tmp.dir, 'export.json');
    writeFileSync(otlpFile, otlp);
    for (const input of [otlpFile, path.join(traceDir, `${restoreId}.trace.json`)]) {
      const page = await cli(['trace', input, '-o', '-']);
      expect(page.code, input).toBe(0);
      expect(page.out).toContain(`data-thread-lanes="${lanes(file)}"`);
    }
  });
});

describe('lazysnap trace', () => {
  it('writes the page next to the trace, or to stdout with -o -', async () => {
    expect(defaultOutput('/d/r-1.trace.json')).toBe('/d/r-1.trace.html');
    expect(defaultOutput('otel.json')).toBe('otel.html');
    expect(defaultOutput('otel.jsonl')).toBe('otel.html');
    expect(defaultOutput('trace')).toBe('trace.html');
    const { dir, cleanup } = tempDir();
    try {
      const t = syntheticTrace();
      const file = path.join(dir, `${t.restoreId}.trace.json`);
      writeFileSync(file, JSON.stringify(t));
      const r = await cli(['trace', file]);
      expect(r).toMatchObject({ code: 0, err: '' });
      expect(r.out).toMatch(/^wrote .*r-7f3a91c2\.trace\.html \([\d.]+ KiB\): restore r-7f3a91c2 of fn-42/);
      expect(readFileSync(path.join(dir, `${t.restoreId}.trace.html`), 'utf8')).toBe(renderTraceHtml(t));
      expect(renderTraceHtml(t)).not.toMatch(/NaN|Infinity|undefined/);
      const out = await cli(['trace', file, '--output', '-']);
      expect(out.out).toBe(renderTraceHtml(t));
    } finally {
      cleanup();
    }
  });

  it('is one file that loads nothing, with every value from the trace escaped', () => {
    const evil = '<script>alert("x")</script>&\'';
    const t = syntheticTrace({ snapshotId: evil, restoreId: `r"><img src=x onerror=alert(1)>` });
    t.origins = { origin0: 'http://h/"><script>alert(2)</script>' };
    const html = renderTraceHtml(t);
    // One script (the page's own), no other tag from the data, no URL the page would fetch.
    expect(html.match(/<script/g)).toHaveLength(1);
    expect(html).not.toMatch(/<img|onerror=alert\(1\)>/);
    expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;');
    expect(html).not.toMatch(/\b(src|href)=["']?(https?:)?\/\//);
    expect(html).not.toMatch(/@import|url\(/);
    expect(html).toContain(`default-src 'none'`);
  });

  it('draws a session that did nothing: no chunks, faults, fetches or milestones, 0 ms', () => {
    const t = syntheticTrace({ chunkCount: 8 });
    const none: TraceFile = {
      ...t,
      chunkCount: 0,
      chunks: '',
      durationMs: 0,
      milestones: [],
      faults: [],
      fetches: [],
      stall: { totalMs: 0, faults: 0, queueMs: 0, fetchMs: {}, decodeMs: 0, verifyMs: 0, installMs: 0 },
      totals: {
        ...t.totals,
        faults: 0,
        fetchedChunks: 0,
        bytesFetched: 0,
        prefetchedChunks: 0,
        hitsByTier: {},
      },
    };
    const html = renderTraceHtml(readTraces(JSON.stringify(none), 'none.json')[0]!);
    expect(html).toContain('data-thread-lanes="0" data-connection-lanes="0"');
    expect(html).not.toMatch(/NaN|Infinity|undefined/);
  });

  it('stays small for a large session: 16384 chunks, about 5000 fetches', () => {
    const t = syntheticTrace({
      seed: 5,
      chunkCount: 16384,
      threads: 8,
      faultsPerThread: 300,
      prefetches: 2600,
    });
    expect(t.fetches.length).toBeGreaterThan(4500);
    const started = performance.now();
    const html = renderTraceHtml(t);
    const ms = performance.now() - started;
    expect(ms).toBeLessThan(5000);
    expect(html.length).toBeLessThan(6 * 1024 * 1024);
    // The strip aggregates: 8 rows of 2048 chunks, 2 chunks per cell, at most one rect per cell.
    expect(stripLayout(t.chunkCount)).toEqual({ rows: 8, perRow: 2048, perCell: 2 });
    const strip = /<svg id="chunk-map"[\s\S]*?<\/svg>/.exec(html)![0];
    expect(strip.match(/<rect /g)!.length).toBeLessThanOrEqual(8 * 1024);
    // Every fault and fetch is counted in its lane even where bars were drawn as one.
    const counts = [...html.matchAll(/<g class="lane" data-lane-kind="(\w+)"[^>]*data-count="(\d+)"/g)];
    const sum = (kind: string) => counts.filter((c) => c[1] === kind).reduce((n, c) => n + Number(c[2]), 0);
    expect(sum('thread')).toBe(t.faults.length);
    expect(sum('connection')).toBe(t.fetches.length);
    expect(html.match(/<g class="bar /g)!.length).toBeLessThanOrEqual(t.faults.length + t.fetches.length);
  });
});

/** The attributes of each start tag in `html` that matches `open` (e.g. `<g class="lane"`). */
function tags(html: string, open: string): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  for (const m of html.matchAll(new RegExp(`${open.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^>]*>`, 'g'))) {
    const attrs: Record<string, string> = {};
    for (const a of m[0].matchAll(/([\w-]+)="([^"]*)"/g)) attrs[a[1]!] = a[2]!;
    out.push(attrs);
  }
  return out;
}

describe.skipIf(!chromiumPath)(
  `the page in headless Chromium${chromiumPath ? '' : ` [SKIPPED: ${chromiumSkipReason}]`}`,
  () => {
    let dir: string;
    let cleanup: () => void;
    const trace = syntheticTrace({ seed: 42, chunkCount: 384, failures: 1 });
    let url: string;

    beforeAll(() => {
      ({ dir, cleanup } = tempDir('lazysnap-trace-html-'));
      const file = path.join(dir, `${trace.restoreId}.trace.json`);
      writeFileSync(file, JSON.stringify(trace));
      writeFileSync(defaultOutput(file), renderTraceHtml(trace));
      url = pathToFileURL(defaultOutput(file)).href;
    });
    afterAll(() => cleanup?.());

    it('sees console messages and uncaught errors of a page (the check below is not vacuous)', async () => {
      const page = path.join(dir, 'throws.html');
      writeFileSync(page, '<!doctype html><body><script>console.error("said"); nothing();</script></body>');
      const r = await headless(pathToFileURL(page).href, ['--dump-dom']);
      expect(r.console.join('\n')).toMatch(/"said"/);
      expect(r.console.join('\n')).toMatch(/Uncaught ReferenceError: nothing is not defined/);
      expect(
        consoleLines('[1:1:0101/000000.000000:ERROR:dbus/bus.cc:405] Failed to connect to the bus'),
      ).toEqual([]);
    });

    it('renders a screenshot that is neither blank nor missing the timeline colours', async () => {
      const png = path.join(dir, 'page.png');
      const r = await headless(url, [`--screenshot=${png}`, '--window-size=1400,900']);
      expect(r.console).toEqual([]);
      const bytes = readFileSync(png);
      expect(bytes.length).toBeGreaterThan(20_000);
      const img = decodePng(bytes);
      expect([img.width, img.height]).toEqual([1400, 900]);
      const colours = colourCounts(img);
      expect(colours.size).toBeGreaterThan(50);
      const white = colours.get('#ffffff') ?? 0;
      expect(white / (img.width * img.height)).toBeLessThan(0.95);
      // Stall red, the split's fetch orange, demand blue and prefetch green, as solid pixels.
      for (const c of ['#d62728', '#f28e2b', '#4e79a7', '#59a14f'])
        expect(colours.get(c) ?? 0, c).toBeGreaterThan(100);
    });

    it('shows, after its script ran, the lanes and counts the trace holds', async () => {
      const r = await headless(url, ['--dump-dom']);
      expect(r.console).toEqual([]);
      const dom = r.stdout;
      expect(tags(dom, '<body')[0]).toMatchObject({ 'data-ready': '1', 'data-restore-id': trace.restoreId });

      const threads = tags(dom, '<g class="lane" data-lane-kind="thread"');
      expect(threads).toHaveLength(partitionIntervals(faultIntervals(trace)).lanes);
      expect(threads.length).toBeGreaterThan(1);
      expect(threads.reduce((n, l) => n + Number(l['data-count']), 0)).toBe(trace.faults.length);
      const connections = tags(dom, '<g class="lane" data-lane-kind="connection"');
      for (const tier of tiersOf(trace)) {
        const lanes = connections.filter((l) => l['data-tier'] === tier);
        expect(lanes, tier).toHaveLength(partitionIntervals(fetchIntervals(trace, tier)).lanes);
        expect(
          lanes.reduce((n, l) => n + Number(l['data-count']), 0),
          tier,
        ).toBe(fetchIntervals(trace, tier).length);
      }
      expect(tags(dom, '<svg id="timeline"')[0]).toMatchObject({
        'data-thread-lanes': String(threads.length),
        'data-connection-lanes': String(connections.length),
      });

      const total = (key: string) => tags(dom, `<div class="card" data-total="${key}"`)[0]?.['data-count'];
      expect(total('faults')).toBe(String(trace.totals.faults));
      expect(total('zeroFaults')).toBe(String(trace.totals.zeroFaults));
      expect(total('fetchedChunks')).toBe(String(trace.totals.fetchedChunks));
      expect(total('failedChunks')).toBe(String(trace.totals.failedChunks));
      expect(total('stallFaults')).toBe(String(trace.faults.length));
      expect(trace.totals.failedChunks).toBe(1);

      const legend = tags(dom, '<li data-class=');
      expect(legend.map((l) => l['data-class']).sort()).toEqual(['.', 'd', 'm', 'p', 'x', 'z']);
      for (const l of legend)
        expect(l['data-count'], l['data-class']).toBe(String(countOf(trace.chunks, l['data-class']!)));
      expect(tags(dom, '<svg id="chunk-map"')[0]).toMatchObject({ 'data-chunks': String(trace.chunkCount) });
      // Milestones drawn, by name.
      expect(tags(dom, '<g class="milestone"').map((m) => m['data-name'])).toEqual(
        trace.milestones.map((m) => m.name),
      );
    });

    it('zooms from the address (#zoom=8) without a console line, and draws a large session', async () => {
      const zoomed = await headless(`${url}#zoom=8`, ['--dump-dom']);
      expect(zoomed.console).toEqual([]);
      const svg = tags(zoomed.stdout, '<svg id="timeline"')[0]!;
      expect(svg['data-zoom']).toBe('8');
      expect(Number(svg.width)).toBe(
        Number(svg['data-x0']) + 8 * Number(svg['data-plot-width']) + Number(svg['data-pad-right']),
      );

      const big = syntheticTrace({
        seed: 5,
        chunkCount: 16384,
        threads: 8,
        faultsPerThread: 300,
        prefetches: 2600,
      });
      const file = path.join(dir, 'big.trace.html');
      writeFileSync(file, renderTraceHtml(big));
      const r = await headless(pathToFileURL(file).href, ['--dump-dom']);
      expect(r.console).toEqual([]);
      expect(tags(r.stdout, '<body')[0]!['data-ready']).toBe('1');
      expect(tags(r.stdout, '<g class="lane" data-lane-kind="thread"')).toHaveLength(
        partitionIntervals(faultIntervals(big)).lanes,
      );
    });
  },
);
