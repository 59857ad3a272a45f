/**
 * The OTLP/HTTP JSON encoding of traces read into plain spans
 * (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): `{resourceSpans: [{resource,
 * scopeSpans: [{scope, spans}]}]}`, ids as hex, times as decimal strings of nanoseconds, 64-bit integers
 * as strings (Go's protojson, the Collector) or numbers (the JavaScript SDK), fields with their default
 * value left out. Only what lazysnap's reader needs is kept: names, ids, times, scalar attributes, events.
 * Every error names the place in the document and the span.
 */
import { InvalidArgumentError } from '../../core/errors.js';

export type AttrValue = string | number | boolean;

export interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  start: bigint;
  end: bigint;
  attrs: Map<string, AttrValue>;
  events: { name: string; time: bigint; attrs: Map<string, AttrValue> }[];
  /** For errors: which span this is. */
  where: string;
}

/** Whether parsed JSON looks like an OTLP traces document (rather than a lazysnap trace file). */
export function isOtlpDocument(v: unknown): boolean {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && 'resourceSpans' in v;
}

/** The spans of every document (`docs`: one, or one per line); `what` names the file in errors. */
export function readOtlpSpans(docs: readonly unknown[], what: string): Span[] {
  return docs.flatMap((d, i) => readDocument(d, docs.length > 1 ? `${what} line ${i + 1}` : what));
}

function obj(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new InvalidArgumentError(where, 'an object', v);
  return v as Record<string, unknown>;
}

/** An array field; OTLP JSON leaves out empty repeated fields, so absent is empty. */
function list(o: Record<string, unknown>, key: string, where: string): unknown[] {
  const v = o[key];
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new InvalidArgumentError(`${where}.${key}`, 'an array', v);
  return v;
}

function text(o: Record<string, unknown>, key: string, where: string, dflt?: string): string {
  const v = o[key] ?? dflt;
  if (typeof v !== 'string') throw new InvalidArgumentError(`${where}.${key}`, 'a string', v);
  return v;
}

/** A fixed64 of nanoseconds: a decimal string in OTLP JSON (a number from some encoders). */
function nanos(o: Record<string, unknown>, key: string, where: string): bigint {
  const v = o[key];
  if (typeof v === 'string' && /^\d+$/.test(v)) return BigInt(v);
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  throw new InvalidArgumentError(`${where}.${key}`, 'nanoseconds since the epoch (a decimal string)', v);
}

function attributes(o: Record<string, unknown>, where: string): Map<string, AttrValue> {
  const out = new Map<string, AttrValue>();
  list(o, 'attributes', where).forEach((kv, i) => {
    const at = `${where}.attributes[${i}]`;
    const a = obj(kv, at);
    const key = text(a, 'key', at);
    const value = a.value === undefined ? {} : obj(a.value, `${at}.value`);
    const v = anyValue(value, `${where} attribute ${key}`);
    if (v !== undefined) out.set(key, v);
  });
  return out;
}

/** An AnyValue's scalar; arrays, maps and bytes are none of lazysnap's, so they are skipped. */
function anyValue(v: Record<string, unknown>, where: string): AttrValue | undefined {
  if ('stringValue' in v) {
    if (typeof v.stringValue !== 'string') throw new InvalidArgumentError(where, 'a string', v.stringValue);
    return v.stringValue;
  }
  if ('intValue' in v) {
    // int64: a decimal string in OTLP JSON; counts and sizes here are far below 2^53.
    const n = typeof v.intValue === 'string' && /^-?\d+$/.test(v.intValue) ? Number(v.intValue) : v.intValue;
    if (typeof n !== 'number' || !Number.isSafeInteger(n))
      throw new InvalidArgumentError(where, 'an integer', v.intValue);
    return n;
  }
  if ('doubleValue' in v) {
    const n = typeof v.doubleValue === 'string' ? Number(v.doubleValue) : v.doubleValue;
    if (typeof n !== 'number' || !Number.isFinite(n))
      throw new InvalidArgumentError(where, 'a finite number', v.doubleValue);
    return n;
  }
  if ('boolValue' in v) {
    if (typeof v.boolValue !== 'boolean') throw new InvalidArgumentError(where, 'a boolean', v.boolValue);
    return v.boolValue;
  }
  return undefined;
}

function readDocument(doc: unknown, what: string): Span[] {
  const spans: Span[] = [];
  const d = obj(doc, what);
  if (!('resourceSpans' in d))
    throw new InvalidArgumentError(what, 'an OTLP JSON traces export ({"resourceSpans": [...]})', d);
  list(d, 'resourceSpans', what).forEach((rs, i) => {
    const rsAt = `${what}: resourceSpans[${i}]`;
    list(obj(rs, rsAt), 'scopeSpans', rsAt).forEach((ss, j) => {
      const ssAt = `${rsAt}.scopeSpans[${j}]`;
      list(obj(ss, ssAt), 'spans', ssAt).forEach((sp, k) => spans.push(readSpan(sp, `${ssAt}.spans[${k}]`)));
    });
  });
  return spans;
}

function readSpan(v: unknown, at: string): Span {
  const o = obj(v, at);
  const name = text(o, 'name', at);
  const spanId = text(o, 'spanId', at).toLowerCase();
  const where = `${at} (${name} ${spanId})`;
  return {
    traceId: text(o, 'traceId', where).toLowerCase(),
    spanId,
    parentSpanId: text(o, 'parentSpanId', where, '').toLowerCase(),
    name,
    start: nanos(o, 'startTimeUnixNano', where),
    end: nanos(o, 'endTimeUnixNano', where),
    attrs: attributes(o, where),
    events: list(o, 'events', where).map((e, i) => {
      const eAt = `${where}.events[${i}]`;
      const eo = obj(e, eAt);
      return {
        name: text(eo, 'name', eAt),
        time: nanos(eo, 'timeUnixNano', eAt),
        attrs: attributes(eo, eAt),
      };
    }),
    where,
  };
}

/** Attribute getters for one span (or event) that name it in their errors. */
export type AttributeReader = ReturnType<typeof attributeReader>;

export function attributeReader(attrs: Map<string, AttrValue>, where: string) {
  const get = <T>(key: string, type: 'string' | 'number', dflt: T): string | number | T => {
    const v = attrs.get(key);
    if (v === undefined) return dflt;
    if (typeof v !== type)
      throw new InvalidArgumentError(
        `${where} attribute ${key}`,
        type === 'string' ? 'a string' : 'a number',
        v,
      );
    return v as string | number;
  };
  return {
    str: <T extends string | undefined>(key: string, dflt: T) => get(key, 'string', dflt) as string | T,
    num: <T extends number | undefined>(key: string, dflt: T) => get(key, 'number', dflt) as number | T,
    oneOf<T extends string>(key: string, allowed: readonly T[], dflt: T): T {
      const v = get(key, 'string', dflt);
      if (!allowed.includes(v as T))
        throw new InvalidArgumentError(`${where} attribute ${key}`, `one of ${allowed.join(', ')}`, v);
      return v as T;
    },
    /** The per-tier keys `<prefix>.<tier>`. */
    byTier(prefix: string): Record<string, number> {
      const out: Record<string, number> = {};
      for (const [k, v] of attrs)
        if (k.startsWith(`${prefix}.`)) {
          if (typeof v !== 'number') throw new InvalidArgumentError(`${where} attribute ${k}`, 'a number', v);
          out[k.slice(prefix.length + 1)] = v;
        }
      return out;
    },
  };
}
