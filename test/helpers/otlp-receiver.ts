/**
 * A real OTLP/HTTP traces receiver (what an OpenTelemetry Collector's otlphttp receiver does for
 * `POST /v1/traces`), on 127.0.0.1 at an ephemeral port. Bodies are decoded with protobufjs from the
 * official opentelemetry-proto definitions, which @opentelemetry/otlp-grpc-exporter-base 0.38 ships
 * (the dev dependency is there for them), not with the SDK's own serializer: a test sees what a
 * collector would, and a serializer bug cannot cancel itself out.
 *
 * Every request is recorded; those not answered 200 (another path, content type or encoding, a body
 * that does not decode) are also in `rejected()`, which a test should expect empty.
 */
import { once } from 'node:events';
import http from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';

import protobuf from 'protobufjs';

/** An attribute as decoded from an OTLP AnyValue (int64 as a number; bytes and kvlists as JSON text). */
export type AttributeValue = string | number | boolean | AttributeValue[];
export type Attributes = Record<string, AttributeValue>;

export interface DecodedSpan {
  /** Hex, as the API's SpanContext has them. */
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Attributes;
  events: { name: string; timeNs: bigint; attributes: Attributes }[];
  /** OTLP StatusCode: 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string };
  resource: Attributes;
  /** The instrumentation scope (the tracer's name). */
  scope: string;
}

export interface ReceivedRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  /** What the receiver answered. */
  status: number;
  /** Why, when not 200. */
  reason?: string;
}

export interface OtlpReceiver {
  /** `http://127.0.0.1:<port>`: a base URL (OTEL_EXPORTER_OTLP_ENDPOINT); traces go to `${url}/v1/traces`. */
  url: string;
  /** Every span received so far, in arrival order. */
  spans(): DecodedSpan[];
  /** Every request, in arrival order. */
  requests(): ReceivedRequest[];
  /** The requests not answered 200. */
  rejected(): ReceivedRequest[];
  /** Resolves with the spans once `pred` holds for them; rejects after `timeoutMs`, naming what came. */
  waitFor(pred: (spans: readonly DecodedSpan[]) => boolean, timeoutMs?: number): Promise<DecodedSpan[]>;
  close(): Promise<void>;
}

const TRACES_PATH = '/v1/traces';
const MAX_BODY = 32 << 20;

/** The shapes of protobufjs's toObject() for the messages read here (camelCase, longs as strings). */
interface AnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string;
  doubleValue?: number;
  arrayValue?: { values?: AnyValue[] };
  kvlistValue?: { values?: KeyValue[] };
  bytesValue?: Uint8Array;
}
interface KeyValue {
  key?: string;
  value?: AnyValue;
}
interface SpanObject {
  traceId?: Uint8Array;
  spanId?: Uint8Array;
  parentSpanId?: Uint8Array;
  name?: string;
  kind?: number;
  startTimeUnixNano?: string;
  endTimeUnixNano?: string;
  attributes?: KeyValue[];
  events?: { timeUnixNano?: string; name?: string; attributes?: KeyValue[] }[];
  status?: { code?: number; message?: string };
}
interface ExportRequest {
  resourceSpans?: {
    resource?: { attributes?: KeyValue[] };
    scopeSpans?: { scope?: { name?: string }; spans?: SpanObject[] }[];
  }[];
}

let types: { request: protobuf.Type; response: protobuf.Type } | undefined;

function protoTypes(): { request: protobuf.Type; response: protobuf.Type } {
  if (types) return types;
  const pkg = createRequire(import.meta.url).resolve('@opentelemetry/otlp-grpc-exporter-base/package.json');
  const protos = path.join(path.dirname(pkg), 'build', 'protos');
  const root = new protobuf.Root();
  // The protos import each other as "opentelemetry/proto/...", relative to the protos directory.
  root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(protos, target));
  root.loadSync('opentelemetry/proto/collector/trace/v1/trace_service.proto');
  types = {
    request: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest'),
    response: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse'),
  };
  return types;
}

/** Decodes an ExportTraceServiceRequest body into flat spans. */
export function decodeTraces(body: Uint8Array): DecodedSpan[] {
  const { request } = protoTypes();
  const req = request.toObject(request.decode(body), { longs: String, arrays: true }) as ExportRequest;
  const out: DecodedSpan[] = [];
  for (const rs of req.resourceSpans ?? []) {
    const resource = attributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          parentSpanId: hex(s.parentSpanId),
          name: s.name ?? '',
          kind: s.kind ?? 0,
          startNs: BigInt(s.startTimeUnixNano ?? 0),
          endNs: BigInt(s.endTimeUnixNano ?? 0),
          attributes: attributes(s.attributes),
          events: (s.events ?? []).map((e) => ({
            name: e.name ?? '',
            timeNs: BigInt(e.timeUnixNano ?? 0),
            attributes: attributes(e.attributes),
          })),
          status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
          resource,
          scope: ss.scope?.name ?? '',
        });
      }
    }
  }
  return out;
}

function hex(b: Uint8Array | undefined): string {
  return b ? Buffer.from(b).toString('hex') : '';
}

function attributes(kvs: KeyValue[] | undefined): Attributes {
  return Object.fromEntries((kvs ?? []).map((kv) => [kv.key ?? '', anyValue(kv.value)]));
}

function anyValue(v: AnyValue | undefined): AttributeValue {
  if (v === undefined) return '';
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  // int64: exact up to 2^53, which is all a test compares.
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue !== undefined) return (v.arrayValue.values ?? []).map(anyValue);
  if (v.kvlistValue !== undefined) return JSON.stringify(attributes(v.kvlistValue.values));
  if (v.bytesValue !== undefined) return hex(v.bytesValue);
  return '';
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const { response } = protoTypes();
  const empty = response.encode(response.create({})).finish();
  const spans: DecodedSpan[] = [];
  const requests: ReceivedRequest[] = [];
  const waiters = new Set<() => void>();

  const answer = (res: http.ServerResponse, r: ReceivedRequest, status: number, reason?: string): void => {
    r.status = status;
    if (reason !== undefined) r.reason = reason;
    if (status === 200) {
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(empty);
    } else {
      res.writeHead(status, { 'content-type': 'text/plain' }).end(reason);
    }
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const r: ReceivedRequest = {
      method: req.method ?? '',
      path: req.url ?? '',
      headers: req.headers,
      status: 0,
    };
    requests.push(r);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY) return answer(res, r, 413, `body over ${MAX_BODY} bytes`);
      chunks.push(chunk);
    }
    if (new URL(r.path, 'http://x').pathname !== TRACES_PATH) return answer(res, r, 404, `no ${r.path} here`);
    if (r.method !== 'POST') return answer(res, r, 405, `${r.method} ${TRACES_PATH}`);
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/x-protobuf') return answer(res, r, 415, `content-type ${type || 'missing'}`);
    const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    if (encoding !== 'identity' && encoding !== 'gzip') {
      return answer(res, r, 415, `content-encoding ${encoding}`);
    }
    let decoded: DecodedSpan[];
    try {
      const raw = Buffer.concat(chunks);
      decoded = decodeTraces(encoding === 'gzip' ? gunzipSync(raw) : raw);
    } catch (e) {
      return answer(res, r, 400, `undecodable body: ${(e as Error).message}`);
    }
    spans.push(...decoded);
    answer(res, r, 200);
    for (const w of waiters) w();
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      res.destroy(e as Error);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    spans: () => [...spans],
    requests: () => [...requests],
    rejected: () => requests.filter((r) => r.status !== 200),
    waitFor: (pred, timeoutMs = 5000) =>
      new Promise((resolve, reject) => {
        if (pred(spans)) return resolve([...spans]);
        const check = (): void => {
          if (!pred(spans)) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve([...spans]);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          const names = spans.map((s) => s.name).join(', ') || 'none';
          reject(new Error(`OTLP receiver: no matching spans within ${timeoutMs} ms (received: ${names})`));
        }, timeoutMs);
        waiters.add(check);
      }),
    close: async () => {
      const closed = once(server, 'close');
      server.close();
      // The exporter's agent keeps its connection alive: close() alone would wait for it.
      server.closeAllConnections();
      await closed;
    },
  };
}
