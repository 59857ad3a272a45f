/**
 * The platform's one call, RestoreHost.restore(): it starts or reuses the snapshot's restore server,
 * fetches the vmstate, and drives Firecracker's load with the Uffd backend. Firecracker's API is the
 * spec-validating fake (every request checked against the real v1.16.1 spec); its memory side is the
 * exact-handshake client, which the fake starts during the load as Firecracker connects to the
 * backend then, and which verifies every page it touches.
 */
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT_CONTEXT, context, trace } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { ATTR, SPAN } from '../../runtime/tracing.js';
import { RestoreHost } from '../../sdk/platform.js';
import { snapshot } from '../../sdk/snapshot.js';
import { FileStore } from '../../store/file-store.js';
import { vmstateKey } from '../../store/keys.js';
import { startFakeFirecracker, type FakeFirecracker } from '../helpers/fake-firecracker.js';
import { startClient, type RunningClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;

describe('RestoreHost after close()', () => {
  it("refuses with its own code, not a fault session's", async () => {
    const tmp = tempDir();
    try {
      const host = new RestoreHost({ runtimeDir: path.join(tmp.dir, 'run') });
      await host.close();
      const snapshot = { id: 'vm', stores: [`file://${tmp.dir}/store`] };
      expect(() => host.server(snapshot)).toThrow(
        expect.objectContaining({ code: 'LAZYSNAP_HOST_CLOSED', name: 'HostClosedError' }),
      );
      await expect(host.restore({ snapshot, firecracker: '/nonexistent.sock' })).rejects.toMatchObject({
        code: 'LAZYSNAP_HOST_CLOSED',
      });
    } finally {
      tmp.cleanup();
    }
  });
});

describe.skipIf(!hasUffd)(uffdSuite('RestoreHost: one-call lazy Firecracker restore'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let host: RestoreHost | undefined;
  let fc: FakeFirecracker | undefined;
  const clients: RunningClient[] = [];
  const loads: Record<string, unknown>[] = [];
  const vmstate = Buffer.from('{"vmstate":"the microVM state Firecracker reads at load"}');

  async function startFc(): Promise<FakeFirecracker> {
    return startFakeFirecracker({
      onLoad: async (body) => {
        loads.push(body);
        // What Firecracker does during the load: read the vmstate, then connect to the backend.
        expect(readFileSync(body.snapshot_path as string)).toEqual(vmstate);
        const mem = body.mem_backend as { backend_type: string; backend_path: string };
        const c = startClient([
          '--socket',
          mem.backend_path,
          '--image',
          img.path,
          '--threads',
          '2',
          '--wait',
        ]);
        clients.push(c);
        await c.ready;
      },
    });
  }

  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 8 * MiB, CS, { zeroEvery: 4 });
    writeFileSync(path.join(tmp.dir, 'vmstate'), vmstate);
    await snapshot({
      store,
      id: 'fn',
      source: { memoryFile: img.path },
      vmstateFile: path.join(tmp.dir, 'vmstate'),
      chunkSize: CS,
    });
    host = new RestoreHost({ runtimeDir: path.join(tmp.dir, 'run'), serve: { prefetch: 'off' } });
    fc = await startFc();
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.child.kill('SIGKILL');
    loads.splice(0);
    await host?.close(0);
    await fc?.close();
    tmp.cleanup();
  });

  it('restores three microVMs of one snapshot through one shared server: every page right, the third served from memory', async () => {
    const sessions: string[] = [];
    const first = await host!.restore({
      snapshot: { id: 'fn', stores: [store] },
      firecracker: fc!.socketPath,
    });
    first.server.on('session', (s) => sessions.push(s.restoreId));
    expect(first.reusedServer).toBe(false);
    expect(loads[0]).toMatchObject({
      mem_backend: { backend_type: 'Uffd', backend_path: first.socketPath },
      resume_vm: true,
    });
    clients[0]!.go();
    expect((await clients[0]!.result).report).toMatchObject({
      ok: true,
      mismatches: 0,
      pagesVerified: 2048,
    });

    // The second and third restores reuse the server. A local store's chunk is cheap to read again, so
    // the memory tier keeps it from its second load on (MemoryTier.keepLoaded), not its first.
    for (const n of [1, 2]) {
      const fcN = await startFc();
      try {
        const next = await host!.restore({
          snapshot: { id: 'fn', stores: [store] },
          firecracker: fcN.socketPath,
          resumeVm: false,
        });
        expect(next.reusedServer).toBe(true);
        expect(next.server).toBe(first.server);
        expect(next.vmstatePath).toBe(first.vmstatePath);
        expect(loads[n]).toMatchObject({ resume_vm: false });
        clients[n]!.go();
        expect((await clients[n]!.result).report).toMatchObject({
          ok: true,
          mismatches: 0,
          pagesVerified: 2048,
        });
        expect(fcN.violations).toEqual([]);
        for (let i = 0; i < 200 && first.server.summaries.length < n + 1; i++)
          await new Promise((r) => setTimeout(r, 10));
      } finally {
        await fcN.close();
      }
    }
    expect(fc!.violations).toEqual([]);
    expect(sessions).toHaveLength(2); // the later restores' sessions, seen through the server's events
    // The first fetched every data chunk; the second read again those it found neither resident nor
    // still in a stage; the third found them all resident.
    const [a, b, c] = first.server.summaries;
    const data = 32 - img.zeroChunks.length;
    expect(a!.fetchedChunks).toBe(data);
    expect(b!.fetchedChunks).toBeLessThanOrEqual(data);
    expect(c!.fetchedChunks).toBe(0);
  });

  it("reports Firecracker's own fault message, a snapshot without vmstate, and a vmstate that lies", async () => {
    fc!.failNext(400, 'Load snapshot error: Cannot restore microvm state');
    await expect(
      host!.restore({ snapshot: { id: 'fn', stores: [store] }, firecracker: fc!.socketPath }),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_FIRECRACKER',
      message: expect.stringContaining('Cannot restore microvm state'),
    });

    await snapshot({ store, id: 'novm', source: { memoryFile: img.path }, chunkSize: CS });
    await expect(
      host!.restore({ snapshot: { id: 'novm', stores: [store] }, firecracker: fc!.socketPath }),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_NOT_FOUND',
      message: expect.stringMatching(/vmstate of snapshot novm/),
    });

    // (a vmstate of its own: the host keeps verified vmstate files by hash and would reuse fn's)
    writeFileSync(path.join(tmp.dir, 'vmstate2'), 'another microVM state');
    await snapshot({
      store,
      id: 'liar',
      source: { memoryFile: img.path },
      vmstateFile: path.join(tmp.dir, 'vmstate2'),
      chunkSize: CS,
    });
    await new FileStore(store).put(vmstateKey('liar'), Buffer.from('tampered'));
    await expect(
      host!.restore({ snapshot: { id: 'liar', stores: [store] }, firecracker: fc!.socketPath }),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_FETCH_FAILED',
      message: expect.stringMatching(/stored object has the wrong length \(expected \d+, got 8\)/),
    });
    // Nothing reached Firecracker for the two bad snapshots.
    expect(loads).toHaveLength(0);
    expect(fc!.requests.filter((r) => r.path === '/snapshot/load')).toHaveLength(1);
  });

  it("one caller's abort detaches only that caller: the shared server start goes on for the others", async () => {
    const ref = { id: 'fn', stores: [store] };
    const ac = new AbortController();
    const a = host!.server(ref, ac.signal);
    const b = host!.server(ref);
    ac.abort(new Error('caller gone'));
    await expect(a).rejects.toThrow('caller gone');
    expect((await b).snapshot).toMatchObject({ id: 'fn', chunks: 32 });
  });

  it("puts the restore inside the platform's trace: its request span, then the host's restore, then the session", async () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    trace.setGlobalTracerProvider(provider);
    try {
      const request = provider.getTracer('platform').startSpan('invoke function');
      const r = await host!.restore({
        snapshot: { id: 'fn', stores: [store] },
        firecracker: fc!.socketPath,
        traceContext: trace.setSpan(ROOT_CONTEXT, request),
      });
      clients[0]!.go();
      expect((await clients[0]!.result).report).toMatchObject({ ok: true, mismatches: 0 });
      for (let i = 0; i < 200 && r.server.summaries.length < 1; i++)
        await new Promise((res) => setTimeout(res, 10));
      request.end();
      const spans = exporter.getFinishedSpans();
      const hostSpan = spans.find((s) => s.name === SPAN.hostRestore)!;
      const session = spans.find((s) => s.name === SPAN.restore)!;
      expect(hostSpan.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
      expect(session.parentSpanContext?.spanId).toBe(hostSpan.spanContext().spanId);
      expect(session.spanContext().traceId).toBe(request.spanContext().traceId);
      expect(session.attributes[ATTR.restoreId]).toBe(r.server.summaries[0]!.restoreId);
      expect(session.attributes[ATTR.peerPid]).toBe(clients[0]!.child.pid);
      expect(spans.filter((s) => s.name === SPAN.restore)).toHaveLength(1);
    } finally {
      trace.disable();
      context.disable();
    }
  });

  it('refuses a runtime directory others can write', () => {
    const dir = path.join(tmp.dir, 'open');
    host = new RestoreHost({ runtimeDir: dir });
    // (created 0700 above; now loosen it as a careless deploy would)
    chmodSync(dir, 0o777);
    expect(() => new RestoreHost({ runtimeDir: dir })).toThrow(
      expect.objectContaining({
        code: 'LAZYSNAP_INSECURE_PATH',
        message: expect.stringMatching(/writable by/),
      }),
    );
  });
});
