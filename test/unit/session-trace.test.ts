/**
 * The trace recorder's account of one fetch that several asked for. The fetcher shares a fetch in
 * flight (a read-ahead or a prefetch that a demand fault then joined): every asker records it, and when
 * a loader thread installed the chunk before the fetch settled on the event loop, the fault learns the
 * real end later. Every record of that fetch must say the same end, whichever order the callbacks ran
 * in (CI once saw the read-ahead's record keep the settle time, 3 ms late, in trace-html.test.ts).
 *
 * The orders are driven here directly: in a real session they depend on thread scheduling.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { trace as otelTrace } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createRootLogger } from '../../core/logger.js';
import { newLoadTiming } from '../../runtime/chunk-loader.js';
import type { FetchResult } from '../../runtime/fetcher.js';
import { RuntimeMetrics } from '../../runtime/metrics.js';
import { SessionTrace } from '../../runtime/session-trace.js';
import { parseTraceFile, type TraceFile } from '../../runtime/trace-format.js';
import { ATTR, SPAN } from '../../runtime/tracing.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function recorded(steps: (t: SessionTrace, t0: number) => void): Promise<TraceFile> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'session-trace-'));
  dirs.push(dir);
  const writes = new Set<Promise<void>>();
  const t0 = performance.now();
  const t = new SessionTrace({
    trace: { snapshotId: 'vm', origins: {}, traceDir: dir, writes },
    restoreId: 'r1',
    peerPid: 1,
    handshake: { regions: [], pageSize: 4096, shape: 'v12' },
    chunkSize: 65536,
    chunkCount: 4,
    metrics: new RuntimeMetrics(),
    log: createRootLogger({ level: 'silent' }),
    t0,
  });
  steps(t, t0);
  t.end({ durationMs: 10, outcome: 'ended', totals: {} as TraceFile['totals'] }, () => '....');
  await Promise.all(writes);
  return parseTraceFile(JSON.parse(readFileSync(path.join(dir, 'r1.trace.json'), 'utf8')));
}

/** One fetch of chunk 2, settled on the event loop at t0 + 8 ms; its loader installed it at t0 + 5. */
function sharedFetch(t0: number): FetchResult {
  return {
    tier: 'origin0',
    stored: 1000,
    timing: {
      queuedAt: t0 + 1,
      startedAt: t0 + 2,
      endedAt: t0 + 8,
      attempts: 1,
      hedge: 'none',
      hedges: 0,
      loader: newLoadTiming(),
    },
  };
}

describe('SessionTrace: a fetch shared by a read-ahead and a demand fault', () => {
  it.each([
    ['read-ahead, demand, then the fault', ['prefetch', 'demand', 'fault']],
    ['the fault, then read-ahead and demand', ['fault', 'prefetch', 'demand']],
    ['read-ahead, the fault, then demand', ['prefetch', 'fault', 'demand']],
  ] as const)('every record of it ends at the install: %s', async (_, order) => {
    const file = await recorded((t, t0) => {
      const r = sharedFetch(t0);
      for (const step of order) {
        if (step === 'fault')
          t.faultDone({ chunk: 2, needAt: t0 + 3, doneAt: t0 + 5, tier: 'origin0', fetch: r });
        else t.fetched(2, step, r, t0 + 1);
      }
    });
    expect(file.fetches.map((f) => f.priority).sort()).toEqual(['demand', 'prefetch']);
    for (const f of file.fetches) {
      expect(f.chunk).toBe(2);
      expect(f.endMs, f.priority).toBeCloseTo(5, 3);
    }
    expect(file.faults).toHaveLength(1);
    expect(file.faults[0]!.waitMs).toBeCloseTo(2, 3);
  });

  it('leaves a fetch that settled before its install alone', async () => {
    const file = await recorded((t, t0) => {
      const r = sharedFetch(t0);
      t.fetched(2, 'prefetch', r, t0 + 1);
      t.faultDone({ chunk: 2, needAt: t0 + 9, doneAt: t0 + 10, tier: 'origin0', fetch: r });
    });
    expect(file.fetches[0]!.endMs).toBeCloseTo(8, 3);
  });
});

describe('SessionTrace: a demand fetch span', () => {
  const exporter = new InMemorySpanExporter();
  beforeAll(() => {
    otelTrace.setGlobalTracerProvider(
      new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
    );
  });
  afterAll(() => otelTrace.disable());

  it('counts as retries the requests that were neither the first nor a hedge', async () => {
    await recorded((t, t0) => {
      const fetch = (attempts: number, hedges: number, chunk: number): FetchResult => {
        const r = sharedFetch(t0);
        Object.assign(r.timing!, { attempts, hedges, hedge: hedges > 0 ? 'won' : 'none' });
        t.faultDone({ chunk, needAt: t0 + 9, doneAt: t0 + 10, tier: 'origin0', fetch: r });
        return r;
      };
      fetch(3, 2, 1); // a request, a late hedge and its own hedge: no retry
      fetch(3, 1, 2); // a request, a retry, a hedge
      fetch(2, 0, 3); // a request and a retry
    });
    const retries = new Map(
      exporter
        .getFinishedSpans()
        .filter((s) => s.name === SPAN.fetch)
        .map((s) => [s.attributes[ATTR.chunk], s.attributes[ATTR.retries]]),
    );
    expect(Object.fromEntries(retries)).toEqual({ 1: 0, 2: 1, 3: 1 });
  });
});
