import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  ProxyTracerProvider,
  ROOT_CONTEXT,
  context,
  propagation,
  trace,
  type Span,
} from '@opentelemetry/api';
import { pino, type Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { OtelConfigError } from '../../core/errors.js';
import { DEFAULT_EXPORT_TIMEOUT_MS, resolveTracingConfig, type Env } from '../../core/otel-config.js';
import { extractTraceparent, injectTraceparent, startTracing, type Tracing } from '../../core/otel.js';
import { moduleCommand } from '../../core/worker.js';
import { ATTR, EVENT, SPAN, TRACER_NAME } from '../../runtime/tracing.js';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver.js';

/** A logger whose lines the test reads back. */
function captureLog(): { log: Logger; text: () => string } {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), text: () => text };
}

const tracer = () => trace.getTracer(TRACER_NAME);

/** The API's globals are process-wide: each test starts from none registered, whatever ran before. */
let tracing: Tracing | undefined;
afterEach(async () => {
  await tracing?.shutdown();
  tracing = undefined;
  trace.disable();
  context.disable();
  propagation.disable();
});

describe('resolveTracingConfig', () => {
  it('is off unless an exporter or an endpoint is named, and off when disabled or none', () => {
    expect(resolveTracingConfig({})).toBeUndefined();
    expect(
      resolveTracingConfig({ OTEL_SERVICE_NAME: 'x', OTEL_TRACES_SAMPLER: 'always_on' }),
    ).toBeUndefined();
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' };
    expect(resolveTracingConfig({ ...endpoint, OTEL_SDK_DISABLED: 'TRUE' })).toBeUndefined();
    expect(resolveTracingConfig({ ...endpoint, OTEL_TRACES_EXPORTER: 'none' })).toBeUndefined();
    // Empty counts as unset; any value but true leaves the SDK enabled (the specification's booleans).
    expect(resolveTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' })).toBeUndefined();
    expect(resolveTracingConfig({ ...endpoint, OTEL_SDK_DISABLED: 'false' })?.exporters).toEqual(['otlp']);
    expect(resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'Console' })?.exporters).toEqual(['console']);
    expect(resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'otlp,console' })?.exporters).toEqual([
      'otlp',
      'console',
    ]);
  });

  it('finds the traces URL: the specific endpoint as is, the general one with v1/traces on its path', () => {
    const url = (env: Env) => resolveTracingConfig(env)?.url;
    expect(url({ OTEL_TRACES_EXPORTER: 'otlp' })).toBe('http://localhost:4318/v1/traces');
    expect(url({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe('http://c:4318/v1/traces');
    expect(url({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://c/otlp/?k=v' })).toBe('https://c/otlp/v1/traces?k=v');
    expect(
      url({
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://general:4318',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://specific:4318/custom',
      }),
    ).toBe('http://specific:4318/custom');
    const c = resolveTracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://u:pw1234@c:4318/p?sig=abcd' });
    expect(c?.endpointForLog).toBe('https://c:4318/p/v1/traces');
    expect(c?.secrets).toEqual(expect.arrayContaining(['pw1234', '?sig=abcd']));
  });

  it('merges headers (traces-specific wins), percent-decoded, names lower-cased', () => {
    const c = resolveTracingConfig({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
      OTEL_EXPORTER_OTLP_HEADERS: 'Authorization=Basic%20YWxhZGRpbjpvcGVuc2VzYW1l, x-tenant = a ,',
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-tenant=b,x-token=abc==',
    });
    expect(c?.headers).toEqual({
      authorization: 'Basic YWxhZGRpbjpvcGVuc2VzYW1l',
      'x-tenant': 'b',
      'x-token': 'abc==',
    });
    expect(c?.secrets).toContain('Basic YWxhZGRpbjpvcGVuc2VzYW1l');
  });

  it('names the service: OTEL_SERVICE_NAME, then the resource attribute, then the caller, then lazysnap', () => {
    const name = (env: Env, serviceName?: string) =>
      resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'console', ...env }, { serviceName })?.serviceName;
    expect(name({})).toBe('lazysnap');
    expect(name({}, 'lazysnap-worker')).toBe('lazysnap-worker');
    expect(name({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs' }, 'w')).toBe('from-attrs');
    expect(name({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs', OTEL_SERVICE_NAME: 'x' })).toBe('x');
    expect(
      resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'console', OTEL_RESOURCE_ATTRIBUTES: 'a=1,b=x%2Cy%3Dz' })
        ?.resourceAttributes,
    ).toEqual({ a: '1', b: 'x,y=z' });
  });

  it('reads the sampler: parentbased_always_on by default, a ratio from OTEL_TRACES_SAMPLER_ARG', () => {
    const s = (env: Env) => resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'console', ...env })?.sampler;
    expect(s({})).toEqual({ name: 'parentbased_always_on', ratio: 1 });
    expect(s({ OTEL_TRACES_SAMPLER: 'TraceIdRatio', OTEL_TRACES_SAMPLER_ARG: '0.25' })).toEqual({
      name: 'traceidratio',
      ratio: 0.25,
    });
    expect(s({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio' })).toEqual({
      name: 'parentbased_traceidratio',
      ratio: 1,
    });
    expect(s({ OTEL_TRACES_SAMPLER: 'always_off', OTEL_TRACES_SAMPLER_ARG: 'ignored' })?.name).toBe(
      'always_off',
    );
  });

  it('takes the export timeout from the environment, 2 s by default', () => {
    const t = (env: Env) => resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'otlp', ...env })?.timeoutMs;
    expect(t({})).toBe(DEFAULT_EXPORT_TIMEOUT_MS);
    expect(t({ OTEL_EXPORTER_OTLP_TIMEOUT: '10000' })).toBe(10_000);
    expect(t({ OTEL_EXPORTER_OTLP_TIMEOUT: '10000', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '500' })).toBe(500);
  });
});

describe('a configuration lazysnap cannot act on', () => {
  const SECRET = 'hunter2-s3cr3t';
  const base: Env = {
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
    OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${SECRET}`,
  };
  const cases: [string, Env, string, RegExp][] = [
    ['grpc', { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, 'OTEL_EXPORTER_OTLP_PROTOCOL', /http\/protobuf.*4317/],
    [
      'http/json for traces',
      { OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' },
      'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL',
      /"http\/json" is not supported.*http\/protobuf/,
    ],
    [
      'an unparseable endpoint',
      { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://user:${SECRET}@[::1` },
      'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
      /not an absolute URL.*not shown/,
    ],
    [
      'an endpoint without a scheme',
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' },
      'OTEL_EXPORTER_OTLP_ENDPOINT',
      /scheme "collector:"; expected http: or https:/,
    ],
    [
      'an endpoint of another scheme',
      { OTEL_EXPORTER_OTLP_ENDPOINT: `ftp://user:${SECRET}@collector/?sig=${SECRET}` },
      'OTEL_EXPORTER_OTLP_ENDPOINT',
      /scheme "ftp:"/,
    ],
    [
      'an unknown exporter',
      { OTEL_TRACES_EXPORTER: 'jaeger' },
      'OTEL_TRACES_EXPORTER',
      /"jaeger" .*accepted: otlp, console, none/,
    ],
    ['none with another', { OTEL_TRACES_EXPORTER: 'none,otlp' }, 'OTEL_TRACES_EXPORTER', /cannot be listed/],
    [
      'a header that is not key=value',
      { OTEL_EXPORTER_OTLP_TRACES_HEADERS: `x-ok=1,authorization Bearer ${SECRET}` },
      'OTEL_EXPORTER_OTLP_TRACES_HEADERS',
      /entry 2 is not key=value.*not shown/,
    ],
    [
      'a header value HTTP cannot carry',
      { OTEL_EXPORTER_OTLP_HEADERS: `authorization=${SECRET}%0D%0Ax-injected=1` },
      'OTEL_EXPORTER_OTLP_HEADERS',
      /entry 1 is not a valid HTTP header/,
    ],
    ['an unknown sampler', { OTEL_TRACES_SAMPLER: 'xray' }, 'OTEL_TRACES_SAMPLER', /accepted: parentbased/],
    [
      'a ratio above 1',
      { OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' },
      'OTEL_TRACES_SAMPLER_ARG',
      /from 0 to 1/,
    ],
    ['a negative timeout', { OTEL_EXPORTER_OTLP_TIMEOUT: '-1' }, 'OTEL_EXPORTER_OTLP_TIMEOUT', /> 0/],
  ];

  it.each(cases)('is refused: %s', (_what, env, variable, message) => {
    let error: unknown;
    try {
      resolveTracingConfig({ ...base, ...env });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(OtelConfigError);
    const e = error as OtelConfigError;
    expect(e).toMatchObject({ code: 'LAZYSNAP_BAD_OTEL_CONFIG', name: 'OtelConfigError', variable });
    expect(e.message.startsWith(`${variable}: `)).toBe(true);
    expect(e.message).toMatch(message);
    expect(e.message).not.toContain(SECRET);
    expect(e.message).not.toContain('user:');
  });

  it('is refused by startTracing before anything is loaded or registered', async () => {
    const { log, text } = captureLog();
    await expect(
      startTracing({ ...base, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, { log }),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_BAD_OTEL_CONFIG',
      variable: 'OTEL_EXPORTER_OTLP_PROTOCOL',
    });
    expect(tracer().startSpan('x').isRecording()).toBe(false);
    expect(text()).toBe('');
  });

  it('a protocol setting is not checked when no OTLP exporter is on', () => {
    expect(
      resolveTracingConfig({ OTEL_TRACES_EXPORTER: 'console', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })
        ?.exporters,
    ).toEqual(['console']);
  });
});

describe('tracing off', () => {
  it('registers nothing: the API tracer does not record, no traceparent goes out or comes in', async () => {
    expect(await startTracing({})).toBeUndefined();
    expect(await startTracing({ OTEL_SDK_DISABLED: 'true', OTEL_TRACES_EXPORTER: 'otlp' })).toBeUndefined();
    const span = tracer().startSpan(SPAN.restore);
    expect(span.isRecording()).toBe(false);
    expect(injectTraceparent(trace.setSpan(context.active(), span))).toBeUndefined();
    expect(extractTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')).toBe(ROOT_CONTEXT);
    span.end();
  });

  it('loads no SDK module (a fresh process; the same probe sees them when tracing is on)', async () => {
    expect(probe({})).toMatchObject({ on: false, packages: ['@opentelemetry/api'] });
    expect(
      probe({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }),
    ).toMatchObject({
      on: false,
      packages: ['@opentelemetry/api'],
    });
    const on = probe({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await closedPort()}` });
    expect(on.on).toBe(true);
    expect(on.packages).toEqual(
      expect.arrayContaining([
        '@opentelemetry/sdk-trace-node',
        '@opentelemetry/resources',
        '@opentelemetry/exporter-trace-otlp-proto',
      ]),
    );
  });
});

/** Runs test/fixtures/otel-probe.ts in a fresh process. */
function probe(env: Env): { on: boolean; packages: string[]; lingerMs: number } {
  const { command, args } = moduleCommand(new URL('../fixtures/otel-probe.js', import.meta.url));
  const r = spawnSync(command, [...args, JSON.stringify(env)], { encoding: 'utf8', timeout: 30_000 });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as { on: boolean; packages: string[]; lingerMs: number };
}

/** A port on 127.0.0.1 nothing listens on (connections are refused): a dead collector. */
async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

describe('tracing on, exporting to a real OTLP/HTTP receiver', () => {
  // One receiver per test: what it holds is exactly what that test sent.
  let receiver: OtlpReceiver;
  beforeEach(async () => {
    receiver = await startOtlpReceiver();
  });
  afterEach(async () => {
    await tracing?.shutdown();
    await receiver.close();
    expect(receiver.rejected()).toEqual([]);
  });

  const SECRET = 't0ken-s3cr3t';
  const env = (more: Env = {}): Env => ({
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/v1/traces`,
    OTEL_SERVICE_NAME: 'x',
    OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=test,team=a%2Cb',
    OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${SECRET}`,
    ...more,
  });

  it('delivers a span tree with its ids, attributes, events and resource', async () => {
    const { log, text } = captureLog();
    const t0 = BigInt(Date.now()) * 1_000_000n;
    tracing = await startTracing(env(), { log });
    expect(tracing).toBeDefined();

    const ids: Record<string, { traceId: string; spanId: string }> = {};
    const keep = (name: string, span: Span) => (ids[name] = span.spanContext());
    await tracer().startActiveSpan(
      SPAN.restore,
      { attributes: { [ATTR.snapshotId]: 'vm1', [ATTR.regions]: 2, [ATTR.hedge]: false } },
      async (root) => {
        keep(SPAN.restore, root);
        root.addEvent(EVENT.handshake, { [ATTR.shape]: 'firecracker' });
        // Across an await: the context manager (AsyncLocalStorage) keeps `root` the active span.
        await sleep(1);
        const fetch = tracer().startSpan(SPAN.fetch, {
          attributes: { [ATTR.chunk]: 7, [ATTR.tier]: 'origin' },
        });
        keep(SPAN.fetch, fetch);
        fetch.addEvent(EVENT.fault, { [ATTR.faultWaitMs]: 1.5 });
        fetch.end();
        const prefetch = tracer().startSpan(SPAN.prefetch, { attributes: { [ATTR.batchChunks]: 3 } });
        keep(SPAN.prefetch, prefetch);
        prefetch.end();
        root.setAttribute(ATTR.outcome, 'ok');
        root.end();
      },
    );
    await tracing!.shutdown();

    const got = receiver.spans();
    expect(got.map((s) => s.name).sort()).toEqual([SPAN.fetch, SPAN.prefetch, SPAN.restore].sort());
    const byName = Object.fromEntries(got.map((s) => [s.name, s]));
    const root = byName[SPAN.restore]!;
    const fetch = byName[SPAN.fetch]!;
    expect(root).toMatchObject({
      traceId: ids[SPAN.restore]!.traceId,
      spanId: ids[SPAN.restore]!.spanId,
      parentSpanId: '',
      scope: TRACER_NAME,
      attributes: { [ATTR.snapshotId]: 'vm1', [ATTR.regions]: 2, [ATTR.hedge]: false, [ATTR.outcome]: 'ok' },
      resource: { 'service.name': 'x', 'deployment.environment': 'test', team: 'a,b' },
    });
    expect(root.events).toEqual([
      { name: EVENT.handshake, timeNs: expect.any(BigInt), attributes: { [ATTR.shape]: 'firecracker' } },
    ]);
    for (const child of [fetch, byName[SPAN.prefetch]!]) {
      expect(child.traceId).toBe(root.traceId);
      expect(child.parentSpanId).toBe(root.spanId);
      expect(child.spanId).toBe(ids[child.name]!.spanId);
    }
    expect(fetch.attributes).toEqual({ [ATTR.chunk]: 7, [ATTR.tier]: 'origin' });
    expect(fetch.events).toMatchObject([{ name: EVENT.fault, attributes: { [ATTR.faultWaitMs]: 1.5 } }]);
    // Times are wall-clock nanoseconds of this run. Not compared across spans: the SDK anchors each
    // trace's clock to performance.now() and corrects it, so sibling ends can be out of order by µs.
    const t1 = BigInt(Date.now()) * 1_000_000n;
    for (const span of got) {
      expect(span.startNs).toBeGreaterThanOrEqual(t0 - 10_000_000n);
      expect(span.endNs).toBeGreaterThanOrEqual(span.startNs);
      expect(span.endNs).toBeLessThanOrEqual(t1 + 10_000_000n);
    }

    // Over HTTP with protobuf bodies, with the configured header; which never reached the log.
    const posts = receiver.requests();
    expect(posts.length).toBeGreaterThan(0);
    for (const r of posts) {
      expect(r.headers['content-type']).toBe('application/x-protobuf');
      expect(r.headers.authorization).toBe(`Bearer ${SECRET}`);
    }
    expect(text()).toContain('tracing on');
    expect(text()).not.toContain(SECRET);
    // Shut down: the API is back to no-op.
    expect(tracer().startSpan('after').isRecording()).toBe(false);
  });

  it('sends gzip bodies when the SDK is told to (OTEL_EXPORTER_OTLP_COMPRESSION, read from process.env)', async () => {
    process.env.OTEL_EXPORTER_OTLP_TRACES_COMPRESSION = 'gzip';
    try {
      tracing = await startTracing(env({ OTEL_SERVICE_NAME: 'gzipped' }), { log: captureLog().log });
    } finally {
      delete process.env.OTEL_EXPORTER_OTLP_TRACES_COMPRESSION;
    }
    tracer().startSpan('compressed').end();
    await tracing!.forceFlush();
    const spans = await receiver.waitFor((s) => s.some((x) => x.name === 'compressed'));
    expect(spans.find((x) => x.name === 'compressed')?.resource['service.name']).toBe('gzipped');
    expect(receiver.requests()[0]?.headers['content-encoding']).toBe('gzip');
  });

  it('samples as OTEL_TRACES_SAMPLER says', async () => {
    tracing = await startTracing(env({ OTEL_TRACES_SAMPLER: 'always_off' }), { log: captureLog().log });
    expect(tracer().startSpan('unsampled').isRecording()).toBe(false);
    await tracing!.shutdown();

    tracing = await startTracing(
      env({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' }),
      {
        log: captureLog().log,
      },
    );
    expect(tracer().startSpan('root, ratio 0').isRecording()).toBe(false);
    // Parent-based: a sampled parent from another process is followed whatever the ratio.
    const sampled = extractTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    const child = tracer().startSpan('child', {}, sampled);
    expect(child.isRecording()).toBe(true);
    child.end();
    await tracing!.shutdown();
    expect(receiver.spans().map((s) => s.name)).toEqual(['child']);
  });

  it('carries a trace across a process boundary as a traceparent string', async () => {
    tracing = await startTracing(env(), { log: captureLog().log });
    expect(injectTraceparent()).toBeUndefined();

    const parent = tracer().startSpan('parent');
    const tp = injectTraceparent(trace.setSpan(context.active(), parent));
    const { traceId, spanId } = parent.spanContext();
    expect(tp).toBe(`00-${traceId}-${spanId}-01`);
    const child = tracer().startSpan('child', {}, extractTraceparent(tp));
    expect(child.spanContext().traceId).toBe(traceId);
    child.end();
    parent.end();

    const foreign = extractTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    tracer().startSpan('remote child', {}, foreign).end();
    expect(extractTraceparent('garbage')).toBe(ROOT_CONTEXT);
    expect(extractTraceparent(undefined)).toBe(ROOT_CONTEXT);
    await tracing!.shutdown();

    const spans = receiver.spans();
    expect(spans.find((s) => s.name === 'child' && s.traceId === traceId)?.parentSpanId).toBe(spanId);
    expect(spans.find((s) => s.name === 'remote child')).toMatchObject({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      parentSpanId: 'b7ad6b7169203331',
    });
  });

  it('starts once per process, and again after shutdown', async () => {
    tracing = await startTracing(env(), { log: captureLog().log });
    await expect(startTracing(env(), { log: captureLog().log })).rejects.toThrow(/called again/);
    await tracing!.shutdown();
    await tracing!.shutdown();
    tracing = await startTracing(env(), { log: captureLog().log });
    expect(tracer().startSpan('again').isRecording()).toBe(true);
  });

  it('refuses to start over a provider someone else registered, and leaves it in place', async () => {
    const foreign = new ProxyTracerProvider();
    expect(trace.setGlobalTracerProvider(foreign)).toBe(true);
    await expect(startTracing(env(), { log: captureLog().log })).rejects.toThrow(/already registered/);
    expect((trace.getTracerProvider() as ProxyTracerProvider).getDelegate()).toBe(foreign);
  });
});

describe('the OTLP receiver (test/helpers/otlp-receiver.ts)', () => {
  it('refuses and records what is not an OTLP/HTTP protobuf traces export', async () => {
    const receiver = await startOtlpReceiver();
    try {
      const post = (path: string, type: string, body: string) =>
        fetch(`${receiver.url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
      expect((await post('/v1/metrics', 'application/x-protobuf', '')).status).toBe(404);
      expect((await post('/v1/traces', 'application/json', '{}')).status).toBe(415);
      expect((await post('/v1/traces', 'application/x-protobuf', 'not protobuf')).status).toBe(400);
      expect((await fetch(`${receiver.url}/v1/traces`)).status).toBe(405);
      // An empty request is a valid one (no resource spans).
      expect((await post('/v1/traces', 'application/x-protobuf', '')).status).toBe(200);
      expect(receiver.rejected().map((r) => [r.path, r.status])).toEqual([
        ['/v1/metrics', 404],
        ['/v1/traces', 415],
        ['/v1/traces', 400],
        ['/v1/traces', 405],
      ]);
      expect(receiver.spans()).toEqual([]);
      await expect(receiver.waitFor((s) => s.length > 0, 50)).rejects.toThrow(/received: none/);
    } finally {
      await receiver.close();
    }
  });
});

describe('a dead collector', () => {
  it('costs shutdown at most ~2 s, and the log gets no credential', async () => {
    const port = await closedPort();
    const { log, text } = captureLog();
    tracing = await startTracing(
      {
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://user:pass-s3cr3t@127.0.0.1:${port}/v1/traces?sig=sig-s3cr3t`,
        OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=key-s3cr3t',
      },
      { log },
    );
    tracer().startSpan('lost').end();
    const t0 = performance.now();
    await tracing!.shutdown();
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(text()).toMatch(/tracing shutdown/);
    expect(text()).not.toMatch(/s3cr3t/);
  });

  it('leaves nothing behind that keeps a process from exiting (its retries end with the export timeout)', async () => {
    const { on, lingerMs } = probe({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await closedPort()}` });
    expect(on).toBe(true);
    expect(lingerMs).toBeLessThan(1000);
  });
});
