/**
 * What tracing the standard OpenTelemetry environment asks for, resolved and checked before any SDK
 * module is loaded: core/otel.ts loads the SDK only when this returns a config. The variables and their
 * meaning are the specification's
 * (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/,
 * https://opentelemetry.io/docs/specs/otel/protocol/exporter/), with two deliberate differences:
 * tracing is off unless an exporter or an OTLP endpoint is named (the specification defaults the
 * exporter to otlp), and a value lazysnap cannot act on is refused with an OtelConfigError rather
 * than warned about and ignored (a mistyped sampler would otherwise sample everything, silently).
 *
 * Endpoints and headers may carry credentials (userinfo, a signed query, an API key header): no
 * message here holds a header value, a URL's userinfo or its query.
 */
import { OtelConfigError, showUntrusted } from './errors.js';

/** An environment: `process.env`, or a plain object in tests. */
export type Env = Readonly<Record<string, string | undefined>>;

export type TracesExporter = 'otlp' | 'console';

export const SAMPLERS = [
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
  'always_on',
  'always_off',
  'traceidratio',
] as const;

export type SamplerName = (typeof SAMPLERS)[number];

export interface TracingConfig {
  exporters: TracesExporter[];
  /** The OTLP/HTTP traces URL, when `exporters` has otlp. May hold credentials: log `endpointForLog`. */
  url: string | undefined;
  /** `url` without userinfo and query. */
  endpointForLog: string | undefined;
  /**
   * How long one export may take, retries included (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, then
   * OTEL_EXPORTER_OTLP_TIMEOUT). Defaults to DEFAULT_EXPORT_TIMEOUT_MS, not the specification's 10 s.
   */
  timeoutMs: number;
  /** Sent with every export (OTEL_EXPORTER_OTLP_HEADERS, then ..._TRACES_HEADERS), names lower-cased. */
  headers: Record<string, string>;
  serviceName: string;
  /** OTEL_RESOURCE_ATTRIBUTES, decoded. */
  resourceAttributes: Record<string, string>;
  /** `ratio` is OTEL_TRACES_SAMPLER_ARG for the traceidratio samplers, else 1. */
  sampler: { name: SamplerName; ratio: number };
  /** Every configured value that may be a credential: to scrub from the SDK's diagnostics. */
  secrets: string[];
}

const TRACES_ENDPOINT = 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT';
const ENDPOINT = 'OTEL_EXPORTER_OTLP_ENDPOINT';
/** The specification's default for OTLP/HTTP. */
const DEFAULT_URL = 'http://localhost:4318/v1/traces';
/**
 * The default export timeout. An export retries a refused connection until its timeout, on timers
 * nothing can cancel, and those hold a process's event loop: with the specification's 10 s, a process
 * that exits by draining its loop lingers up to 10 s on a dead collector, whatever shutdown() awaits.
 * 2 s bounds that, and is ample for a collector on the host or the network nearby; a distant one can
 * be given more (OTEL_EXPORTER_OTLP_TIMEOUT), at that cost.
 */
export const DEFAULT_EXPORT_TIMEOUT_MS = 2000;
/** RFC 9110 token: what Node's http accepts as a header name. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** What Node's http refuses in a header value (ERR_INVALID_CHAR): controls other than tab. */
const HEADER_VALUE_BAD = /[^\t\x20-\x7e\x80-\xff]/;

/** The tracing `env` asks for, or undefined when tracing is off. Throws OtelConfigError. */
export function resolveTracingConfig(
  env: Env,
  defaults: { serviceName?: string } = {},
): TracingConfig | undefined {
  if (read(env, 'OTEL_SDK_DISABLED')?.toLowerCase() === 'true') return undefined;
  const exporters = tracesExporters(env);
  if (exporters.length === 0) return undefined;

  let url: URL | undefined;
  let timeoutMs = DEFAULT_EXPORT_TIMEOUT_MS;
  let headers: Record<string, string> = {};
  const secrets: string[] = [];
  if (exporters.includes('otlp')) {
    checkProtocol(env);
    url = otlpUrl(env);
    timeoutMs = exportTimeout(env);
    headers = {
      ...keyValues(env, 'OTEL_EXPORTER_OTLP_HEADERS', 'header'),
      ...keyValues(env, 'OTEL_EXPORTER_OTLP_TRACES_HEADERS', 'header'),
    };
    secrets.push(url.href, url.username, url.password, url.search, ...Object.values(headers));
    for (const v of [TRACES_ENDPOINT, ENDPOINT]) secrets.push(read(env, v) ?? '');
    for (const s of [url.username, url.password]) secrets.push(safeDecode(s) ?? '');
  }
  const resourceAttributes = keyValues(env, 'OTEL_RESOURCE_ATTRIBUTES', 'attribute');
  return {
    exporters,
    url: url?.href,
    endpointForLog: url && `${url.protocol}//${url.host}${url.pathname}`,
    timeoutMs,
    headers,
    serviceName:
      read(env, 'OTEL_SERVICE_NAME') ??
      resourceAttributes['service.name'] ??
      defaults.serviceName ??
      'lazysnap',
    resourceAttributes,
    sampler: sampler(env),
    // Short strings would scrub ordinary words from a message; a secret that short protects nothing.
    secrets: [...new Set(secrets)].filter((s) => s.length >= 4),
  };
}

/** A variable's value, trimmed; empty counts as unset (the specification says so). */
function read(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === '' ? undefined : v;
}

function tracesExporters(env: Env): TracesExporter[] {
  const raw = read(env, 'OTEL_TRACES_EXPORTER');
  if (raw === undefined) return read(env, TRACES_ENDPOINT) || read(env, ENDPOINT) ? ['otlp'] : [];
  const names = [...new Set(raw.split(',').map((s) => s.trim().toLowerCase()))].filter(Boolean);
  for (const name of names) {
    if (name !== 'otlp' && name !== 'console' && name !== 'none') {
      throw new OtelConfigError(
        'OTEL_TRACES_EXPORTER',
        `${showUntrusted(name)} is not a traces exporter lazysnap has; accepted: otlp, console, none`,
      );
    }
  }
  if (names.includes('none')) {
    if (names.length > 1) {
      throw new OtelConfigError(
        'OTEL_TRACES_EXPORTER',
        `none turns tracing off and cannot be listed with others`,
      );
    }
    return [];
  }
  return names as TracesExporter[];
}

/** The traces-specific variable wins over the general one, as for every OTLP setting. */
function checkProtocol(env: Env): void {
  for (const variable of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL']) {
    const value = read(env, variable);
    if (value === undefined) continue;
    if (value.toLowerCase() === 'http/protobuf') return;
    throw new OtelConfigError(
      variable,
      `${showUntrusted(value)} is not supported: lazysnap exports traces as OTLP over HTTP with protobuf ` +
        `bodies only; set http/protobuf or unset it, and point the endpoint at the collector's OTLP/HTTP ` +
        `receiver (port 4318 by default${value.toLowerCase() === 'grpc' ? '; 4317 is gRPC' : ''})`,
    );
  }
}

/**
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the URL as is; OTEL_EXPORTER_OTLP_ENDPOINT is a base to which
 * `v1/traces` is appended (to its path, not after its query string).
 */
function otlpUrl(env: Env): URL {
  const specific = read(env, TRACES_ENDPOINT);
  if (specific !== undefined) return httpUrl(TRACES_ENDPOINT, specific);
  const base = read(env, ENDPOINT);
  if (base === undefined) return new URL(DEFAULT_URL);
  const url = httpUrl(ENDPOINT, base);
  url.pathname = `${url.pathname.replace(/\/$/, '')}/v1/traces`;
  return url;
}

function httpUrl(variable: string, value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new OtelConfigError(
      variable,
      'is not an absolute URL (expected e.g. http://collector:4318; the value is not shown: an endpoint may hold credentials)',
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    // Only the scheme: `collector:4318` parses with the scheme "collector:", the rest is opaque.
    throw new OtelConfigError(
      variable,
      `has the scheme ${JSON.stringify(url.protocol)}; expected http: or https: (e.g. http://collector:4318)`,
    );
  }
  return url;
}

function exportTimeout(env: Env): number {
  for (const variable of ['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT', 'OTEL_EXPORTER_OTLP_TIMEOUT']) {
    const value = read(env, variable);
    if (value === undefined) continue;
    const ms = Number(value);
    if (!Number.isSafeInteger(ms) || ms <= 0) {
      throw new OtelConfigError(
        variable,
        `${showUntrusted(value)} is not a timeout; expected milliseconds, > 0`,
      );
    }
    return ms;
  }
  return DEFAULT_EXPORT_TIMEOUT_MS;
}

/**
 * A `key=value,key=value` list, percent-decoded (the specification's format for headers and resource
 * attributes). Entries are named by position only: a misplaced comma puts part of a secret where a key
 * would be.
 */
function keyValues(env: Env, variable: string, what: 'header' | 'attribute'): Record<string, string> {
  const raw = read(env, variable);
  const out: Record<string, string> = {};
  if (raw === undefined) return out;
  const hidden = what === 'header' ? ' (values are not shown: headers may hold credentials)' : '';
  raw.split(',').forEach((entry, i) => {
    if (entry.trim() === '') return;
    const eq = entry.indexOf('=');
    const key = eq > 0 ? safeDecode(entry.slice(0, eq).trim()) : undefined;
    const value = eq > 0 ? safeDecode(entry.slice(eq + 1).trim()) : undefined;
    if (!key || value === undefined) {
      throw new OtelConfigError(variable, `entry ${i + 1} is not key=value with percent-encoding${hidden}`);
    }
    if (what === 'header' && (!HEADER_NAME.test(key) || HEADER_VALUE_BAD.test(value))) {
      throw new OtelConfigError(variable, `entry ${i + 1} is not a valid HTTP header${hidden}`);
    }
    out[what === 'header' ? key.toLowerCase() : key] = value;
  });
  return out;
}

function safeDecode(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

function sampler(env: Env): TracingConfig['sampler'] {
  const raw = read(env, 'OTEL_TRACES_SAMPLER')?.toLowerCase() ?? 'parentbased_always_on';
  const name = SAMPLERS.find((s) => s === raw);
  if (name === undefined) {
    throw new OtelConfigError(
      'OTEL_TRACES_SAMPLER',
      `${showUntrusted(raw)} is not a sampler lazysnap has; accepted: ${SAMPLERS.join(', ')}`,
    );
  }
  const arg = read(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (!name.endsWith('traceidratio') || arg === undefined) return { name, ratio: 1 };
  const ratio = Number(arg);
  if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
    throw new OtelConfigError(
      'OTEL_TRACES_SAMPLER_ARG',
      `${showUntrusted(arg)} is not a sampling probability for ${name}; expected a number from 0 to 1`,
    );
  }
  return { name, ratio };
}
