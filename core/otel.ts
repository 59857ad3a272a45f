/**
 * Turns OpenTelemetry tracing on from the standard OTEL_* environment (core/otel-config.ts says what
 * is asked for and refuses what is not supported), and carries a trace context across a process
 * boundary as a W3C `traceparent` string.
 *
 * The runtime emits spans only through @opentelemetry/api (names in runtime/tracing.ts). Until
 * startTracing() registers a provider, every tracer is the API's no-op one; the SDK packages are
 * imported dynamically, here, and only when tracing is on, so a process without OTEL_* loads none of
 * them (test/unit/otel.test.ts checks that in a child process).
 */
import assert from 'node:assert';

import {
  DiagLogLevel,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  context,
  diag,
  propagation,
  trace,
  type Context,
  type DiagLogger,
} from '@opentelemetry/api';
import type { Sampler, SpanProcessor } from '@opentelemetry/sdk-trace-node';

import { componentLogger, type Logger } from './logger.js';
import { resolveTracingConfig, type Env, type TracingConfig } from './otel-config.js';

export type { Env } from './otel-config.js';

export interface Tracing {
  /**
   * Sends the spans still buffered, waiting at most SHUTDOWN_TIMEOUT_MS (an unreachable collector
   * costs that, then they are dropped), and puts the API back to its no-op state. Idempotent.
   */
  shutdown(): Promise<void>;
  /** Sends the spans buffered so far, waiting at most SHUTDOWN_TIMEOUT_MS. Never rejects. */
  forceFlush(): Promise<void>;
}

export interface TracingOptions {
  /** The `service.name` when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES sets one. @default 'lazysnap' */
  serviceName?: string;
  /** Parent of the `{component: 'otel'}` logger: start, shutdown, and the SDK's warnings and errors. @default rootLogger() */
  log?: Logger;
}

/** How long shutdown() and forceFlush() wait for the collector. */
export const SHUTDOWN_TIMEOUT_MS = 2000;

let active = false;
/** The API's no-op provider: what a proxy with no provider registered delegates to. */
const NOOP_TRACER_PROVIDER = new ProxyTracerProvider().getDelegate();

/**
 * Registers a tracer provider, a context manager (AsyncLocalStorage) and the W3C propagators
 * globally when `env` asks for tracing; resolves undefined (and loads nothing) when it does not.
 * Throws OtelConfigError for a configuration lazysnap cannot act on. Once per process, until shutdown.
 */
export async function startTracing(
  env: Env = process.env,
  opts: TracingOptions = {},
): Promise<Tracing | undefined> {
  const config = resolveTracingConfig(env, { serviceName: opts.serviceName });
  if (config === undefined) return undefined;
  assert(!active, 'startTracing() called again before the first Tracing was shut down');
  // register() would leave another's provider in place and ours unused, without a word.
  const current = trace.getTracerProvider();
  assert(
    current instanceof ProxyTracerProvider && current.getDelegate() === NOOP_TRACER_PROVIDER,
    'a tracer provider is already registered with @opentelemetry/api',
  );
  active = true;
  const log = componentLogger('otel', opts.log);
  try {
    return await start(config, log);
  } catch (e) {
    active = false;
    throw e;
  }
}

async function start(config: TracingConfig, log: Logger): Promise<Tracing> {
  const [sdk, resources, core, otlp] = await Promise.all([
    import('@opentelemetry/sdk-trace-node'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/core'),
    config.exporters.includes('otlp') ? import('@opentelemetry/exporter-trace-otlp-proto') : undefined,
  ]);
  const spanProcessors: SpanProcessor[] = [];
  if (otlp) {
    const exporter = new otlp.OTLPTraceExporter({
      url: config.url,
      headers: config.headers,
      timeoutMillis: config.timeoutMs,
    });
    spanProcessors.push(new sdk.BatchSpanProcessor(exporter));
  }
  // Simple, not batched: the console exporter is for looking at spans as they end.
  if (config.exporters.includes('console')) {
    spanProcessors.push(new sdk.SimpleSpanProcessor(new sdk.ConsoleSpanExporter()));
  }
  const { name: samplerName, ratio } = config.sampler;
  const root: Sampler = samplerName.endsWith('always_off')
    ? new sdk.AlwaysOffSampler()
    : samplerName.endsWith('traceidratio')
      ? new sdk.TraceIdRatioBasedSampler(ratio)
      : new sdk.AlwaysOnSampler();
  const provider = new sdk.NodeTracerProvider({
    resource: resources.defaultResource().merge(
      resources.resourceFromAttributes({
        ...config.resourceAttributes,
        'service.name': config.serviceName,
      }),
    ),
    sampler: samplerName.startsWith('parentbased_') ? new sdk.ParentBasedSampler({ root }) : root,
    spanProcessors,
  });

  const scrub = scrubber(config.secrets);
  diag.setLogger(diagToLog(log, scrub), { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
  // A failed export (once per batch while the collector is unreachable) comes here, not through diag.
  core.setGlobalErrorHandler((e) =>
    log.warn({ err: scrub(describe(e)) }, 'tracing: the SDK reports an error'),
  );
  provider.register();
  log.info(
    {
      exporters: config.exporters,
      endpoint: config.endpointForLog,
      serviceName: config.serviceName,
      sampler: samplerName,
      ratio,
    },
    'tracing on',
  );

  const settle = async (what: string, p: Promise<void>): Promise<void> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), SHUTDOWN_TIMEOUT_MS).unref();
    });
    try {
      if ((await Promise.race([p.then(() => 'done' as const), timeout])) === 'timeout') {
        log.warn(
          { timeoutMs: SHUTDOWN_TIMEOUT_MS },
          `tracing ${what}: spans not delivered in time (collector unreachable?), not waiting longer`,
        );
      }
    } catch (e) {
      log.warn({ err: scrub(describe(e)) }, `tracing ${what} failed`);
    } finally {
      clearTimeout(timer);
    }
  };
  let closing: Promise<void> | undefined;
  return {
    shutdown: () =>
      (closing ??= settle('shutdown', provider.shutdown()).finally(() => {
        unregister();
        core.setGlobalErrorHandler(core.loggingErrorHandler());
        active = false;
      })),
    forceFlush: () => (closing ? Promise.resolve() : settle('flush', provider.forceFlush())),
  };
}

function unregister(): void {
  trace.disable();
  propagation.disable();
  context.disable();
  diag.disable();
}

/**
 * The W3C `traceparent` of the span current in `ctx`, to hand to another process; undefined when
 * there is none or tracing is off (no propagator registered).
 */
export function injectTraceparent(ctx: Context = context.active()): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier.traceparent;
}

/**
 * The context a `traceparent` from another process names, to start spans in as its children:
 * ROOT_CONTEXT for undefined, a malformed value, or when tracing is off.
 */
export function extractTraceparent(traceparent: string | undefined): Context {
  if (traceparent === undefined) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, { traceparent });
}

/** The SDK reports export failures through `diag`: to the log, at warn and above, secrets removed. */
function diagToLog(log: Logger, scrub: (s: string) => string): DiagLogger {
  const at =
    (level: 'error' | 'warn' | 'info' | 'debug' | 'trace') =>
    (message: string, ...args: unknown[]) => {
      const detail = args.map((a) => scrub(describe(a)));
      log[level](detail.length > 0 ? { detail } : {}, scrub(message));
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), verbose: at('trace') };
}

function scrubber(secrets: string[]): (s: string) => string {
  // Longest first, so that a URL goes whole before its password inside it.
  const sorted = [...secrets].sort((a, b) => b.length - a.length);
  return (s) => sorted.reduce((out, secret) => out.split(secret).join('[redacted]'), s);
}

function describe(v: unknown): string {
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  if (typeof v === 'string') return v;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return Object.prototype.toString.call(v);
  }
}
