/**
 * Seeing a restore: a session behind a slow origin (nginx behind the delay proxy) with a replayed
 * profile, traced three ways at once: the OpenTelemetry spans (the SDK's in-memory exporter, registered
 * for this file), the trace file `traceDir` writes, and the stall in the summary line. The stall the
 * runtime accounts must be the wait the client measured around its own faults.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { context, trace } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDelayProxy, type DelayProxy } from '../../bench/lib/delay-proxy.js';
import type { SessionSummary } from '../../runtime/session-types.js';
import { parseTraceFile, splitTotal } from '../../runtime/trace-format.js';
import { ATTR, EVENT, SPAN } from '../../runtime/tracing.js';
import { runClient } from '../helpers/fc-client.js';
import { startOtlpReceiver } from '../helpers/otlp-receiver.js';
import { startServe } from '../helpers/serve-process.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { nginxSkipReason, startStaticNginx, type NginxInstance } from '../helpers/nginx.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const MiB = 1024 * 1024;
const CS = 512 * 1024;
/**
 * Long enough that the waits dwarf what the fault thread's stamps cannot see (the kernel handing it the
 * fault, the scheduler waking the faulting thread): on a loaded 2-core runner those came to ~57 ms over
 * one restore, 10% of it, with a 25 ms first byte.
 */
const FIRST_BYTE_MS = 100;

const skip = !hasUffd || !!nginxSkipReason;
const name = nginxSkipReason
  ? `tracing a restore [SKIPPED: ${nginxSkipReason}]`
  : uffdSuite('tracing a restore');

describe.skipIf(skip)(name, () => {
  let tmp: ReturnType<typeof tempDir>;
  let img: ReturnType<typeof makeImage>;
  let nginx: NginxInstance;
  let proxy: DelayProxy;
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

  /** fc-client against `socket`, restoring the test image, with these workload flags. */
  const restoreWith = (socket: string, args: string[]) =>
    runClient(['--socket', socket, '--image', img.path, ...args]);

  beforeAll(async () => {
    tmp = tempDir();
    img = makeImage(tmp.dir, 16 * MiB, CS, { zeroEvery: 4 });
    const store = path.join(tmp.dir, 'store');
    await snapshotTo(store, img.path, 'vm', CS);
    // A profile recorded by another run: half the chunks, from the local store.
    const rec = await serve(tmp.dir, { stores: [store], id: 'vm', prefetch: 'record' });
    try {
      const r = await restoreWith(rec.socketPath, [
        '--touch',
        'cluster',
        '--cluster-fraction',
        '0.5',
        '--chunk-size',
        String(CS),
      ]);
      expect(r.report?.ok).toBe(true);
      await summaries(rec, 1);
    } finally {
      await rec.close(0);
    }
    nginx = await startStaticNginx(store);
    proxy = await startDelayProxy({
      target: { host: '127.0.0.1', port: nginx.port },
      firstByteMs: FIRST_BYTE_MS,
      bytesPerSecond: 50e6,
    });
    trace.setGlobalTracerProvider(provider);
  });
  afterAll(async () => {
    trace.disable();
    context.disable();
    await proxy?.close();
    await nginx?.stop();
    tmp?.cleanup();
  });

  it('has one session span, a fetch span per demanded chunk, and a stall that is the wait the client measured', async () => {
    const traceDir = path.join(tmp.dir, 'traces');
    const server = await serve(tmp.dir, {
      stores: [proxy.url],
      profileStore: path.join(tmp.dir, 'store'),
      id: 'vm',
      traceDir,
    });
    let summary!: SessionSummary;
    try {
      // Every chunk's first page, one thread, shuffled: each fault is timed by the client.
      const r = await restoreWith(server.socketPath, [
        '--touch',
        'chunk',
        '--chunk-size',
        String(CS),
        '--order',
        'random',
        '--seed',
        '7',
        '--threads',
        '1',
        '--time-faults',
      ]);
      expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
      summary = (await summaries(server, 1))[0]!;
      // The summary's stall: faults that crossed into JS, and their wait adds up to what the client saw
      // on those faults, which are (within a few ms) the client's slowest: most waited for a 100 ms first
      // byte. The others were served by the fault thread alone; on a loaded runner their waits for a CPU
      // would swell the client's total with time no stall covers.
      const stall = summary.stall;
      expect(stall.faults).toBeGreaterThan(0);
      const slowest = r.report!.faultNs!.slowest;
      expect(slowest.length).toBeGreaterThan(stall.faults); // the first fault served natively is faster
      const clientWaitMs = slowest.slice(0, stall.faults).reduce((n, ns) => n + ns, 0) / 1e6;
      expect(Math.abs(stall.totalMs - clientWaitMs)).toBeLessThanOrEqual(0.05 * clientWaitMs);
      // Behind a 100 ms first byte, the fetch is most of it, and it is the origin's.
      expect(stall.fetchMs.origin0!).toBeGreaterThan(stall.faults * FIRST_BYTE_MS * 0.9);
      expect(Math.abs(splitTotal(stall) - stall.totalMs)).toBeLessThan(0.01 * stall.totalMs + 0.01);
    } finally {
      await server.close(0);
    }

    // The trace file.
    const file = parseTraceFile(
      JSON.parse(readFileSync(path.join(traceDir, `${summary.restoreId}.trace.json`), 'utf8')),
    );
    expect(file.faults.length).toBe(summary.stall.faults);
    const sum = file.faults.reduce((a, f) => a + f.waitMs, 0);
    expect(Math.abs(sum - file.stall.totalMs)).toBeLessThan(0.01 * sum + 0.01);
    for (const f of file.faults)
      expect(Math.abs(splitTotal(f) - f.waitMs)).toBeLessThan(0.01 * f.waitMs + 0.005);
    const demanded = new Set(file.faults.map((f) => f.chunk));
    expect([...file.chunks].filter((c) => c === 'd').length).toBe(demanded.size);
    expect([...file.chunks].filter((c) => c === 'p').length).toBe(summary.prefetchedChunks);
    for (const z of img.zeroChunks) expect(file.chunks[z]).toBe('z');
    expect(file.milestones.map((m) => m.name)).toEqual(
      expect.arrayContaining([EVENT.handshake, EVENT.firstFaultServed, EVENT.profileInstalled]),
    );
    const fetchedChunks = new Set(file.fetches.filter((f) => f.tier === 'origin0').map((f) => f.chunk));
    expect(fetchedChunks.size).toBe(summary.hitsByTier.origin0);

    // The spans: one session span, a fetch span per demanded chunk with the tier that answered.
    const spans = exporter.getFinishedSpans();
    const sessions = spans.filter((s) => s.name === SPAN.restore);
    expect(sessions).toHaveLength(1);
    const root = sessions[0]!;
    expect(root.attributes[ATTR.restoreId]).toBe(summary.restoreId);
    expect(root.attributes[ATTR.snapshotId]).toBe('vm');
    expect(root.attributes[ATTR.stallTotal]).toBeCloseTo(summary.stall.totalMs, 1);
    expect(root.attributes[ATTR.chunkMap]).toBe(file.chunks);
    expect(root.events.map((e) => e.name)).toEqual(expect.arrayContaining([EVENT.firstFaultServed]));
    const children = (n: string): ReadableSpan[] =>
      spans.filter((s) => s.name === n && s.parentSpanContext?.spanId === root.spanContext().spanId);
    const fetches = children(SPAN.fetch);
    expect(new Set(fetches.map((s) => s.attributes[ATTR.chunk]))).toEqual(demanded);
    for (const s of fetches) {
      const f = file.faults.find((x) => x.chunk === s.attributes[ATTR.chunk])!;
      expect(s.attributes[ATTR.tier]).toBe(f.tier);
      expect(s.events.map((e) => e.name)).toContain(EVENT.fault);
    }
    expect(fetches.filter((s) => s.attributes[ATTR.tier] === 'origin0').length).toBeGreaterThan(0);
    expect(children(SPAN.prefetch)).toHaveLength(1);
    // Opening the snapshot, before the VM connected: the manifest and the profile.
    const open = spans.find((s) => s.name === SPAN.open)!;
    expect(
      spans
        .filter((s) => s.parentSpanContext?.spanId === open.spanContext().spanId)
        .map((s) => s.name)
        .sort(),
    ).toEqual([SPAN.manifest, SPAN.profile]);
  });

  it('exports the same spans over OTLP from `lazysnap serve` (its worker process), to a receiver speaking the protocol', async () => {
    const receiver = await startOtlpReceiver();
    const socket = path.join(tmp.dir, 'otlp', 'uffd.sock');
    const sp = await startServe(
      socket,
      ['--store', proxy.url, '--profile-store', path.join(tmp.dir, 'store'), '--id', 'vm'],
      { env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_SERVICE_NAME: 'restore-host-7' } },
    );
    try {
      const r = await restoreWith(socket, ['--touch', 'chunk', '--chunk-size', String(CS)]);
      expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
      const summary = await sp.waitForLog((l) => l.msg === 'restore session summary', 20_000, 'summary');
      // SIGTERM drains: the worker shuts its tracer down, which exports what is left.
      expect(await sp.stop('SIGTERM')).toMatchObject({ code: 0 });
      const spans = await receiver.waitFor((s) => s.some((x) => x.name === SPAN.restore), 10_000);
      expect(receiver.rejected()).toEqual([]);
      const root = spans.find((s) => s.name === SPAN.restore)!;
      expect(root.resource['service.name']).toBe('restore-host-7');
      expect(root.scope).toBe('lazysnap');
      expect(root.attributes).toMatchObject({
        [ATTR.snapshotId]: 'vm',
        [ATTR.restoreId]: summary.restoreId,
        [ATTR.peerPid]: r.report!.pid,
        [ATTR.outcome]: 'ended',
        [ATTR.fetchedChunks]: summary.fetchedChunks,
      });
      const stall = summary.stall as { totalMs: number; faults: number };
      expect(root.attributes[ATTR.stallTotal]).toBeCloseTo(stall.totalMs, 1);
      expect(root.events.map((e) => e.name)).toEqual(expect.arrayContaining([EVENT.firstFaultServed]));
      const fetches = spans.filter((s) => s.name === SPAN.fetch && s.parentSpanId === root.spanId);
      expect(fetches).toHaveLength(stall.faults);
      for (const f of fetches) {
        expect(f.traceId).toBe(root.traceId);
        expect(['origin0', 'memory']).toContain(f.attributes[ATTR.tier]);
        expect(f.endNs).toBeGreaterThan(f.startNs);
      }
      expect(spans.map((s) => s.name)).toEqual(
        expect.arrayContaining([SPAN.open, SPAN.manifest, SPAN.profile]),
      );
    } finally {
      await sp.stop('SIGKILL').catch(() => {});
      await receiver.close();
    }
  });
});
