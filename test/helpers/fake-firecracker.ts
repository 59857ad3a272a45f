/**
 * A fake Firecracker API for contract tests: node:http on a Unix socket in a temp dir that checks
 * every request against Firecracker's own swagger spec (v1.16.1) before answering. A request that
 * breaks the spec gets 400 `{"fault_message": ...}`, as Firecracker would answer, and is recorded in
 * `violations`, so a test can assert that a client produced none.
 *
 * What is checked: path and method (404/405), the JSON body against the operation's `in: body`
 * schema (a small validator for the subset of JSON Schema the spec's definitions use: $ref, type,
 * required, properties, enum, items, minimum, maximum, additionalProperties), unknown fields
 * (Firecracker's serde structs `deny_unknown_fields`), the cross-field rule the spec states only in
 * prose (exactly one of `mem_backend` / `mem_file_path` on /snapshot/load), and the transport rules
 * of Firecracker's micro_http (a body needs Content-Length, no chunked encoding, at most 51200
 * bytes by default, Content-Type application/json). Success answers use the spec's success status;
 * GET bodies are built from a little instance state and are themselves checked against the spec.
 *
 * The spec ships with the repository (test/fixtures/contracts/, verbatim from Firecracker's v1.16.1
 * release), so the contract suites run in any checkout; LAZYSNAP_FIRECRACKER_SPEC points them at
 * another release's spec.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { parse as parseYaml } from 'yaml';
import { repoRoot } from './fixtures.js';

export const FIRECRACKER_SPEC =
  process.env.LAZYSNAP_FIRECRACKER_SPEC ??
  path.join(repoRoot, 'test', 'fixtures', 'contracts', 'firecracker-api-v1.16.1.yaml');
/** micro_http's default `--http-api-max-payload-size`. */
const MAX_PAYLOAD = 51_200;

export interface Schema {
  $ref?: string;
  type?: string;
  required?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: boolean | Schema;
  enum?: unknown[];
  items?: Schema;
  minimum?: number;
  maximum?: number;
}

interface Operation {
  parameters?: Array<{ in: string; name: string; required?: boolean; schema?: Schema }>;
  responses: Record<string, { schema?: Schema } | undefined>;
}

export interface Spec {
  info: { version: string };
  paths: Record<string, Record<string, Operation | undefined>>;
  definitions: Record<string, Schema>;
}

const specs = new Map<string, Spec>();

export function loadFirecrackerSpec(file = FIRECRACKER_SPEC): Spec {
  let spec = specs.get(file);
  if (!spec) {
    spec = parseYaml(readFileSync(file, 'utf8')) as Spec;
    if (typeof spec?.paths !== 'object' || typeof spec.definitions !== 'object')
      throw new Error(`${file}: not a swagger 2.0 document`);
    specs.set(file, spec);
  }
  return spec;
}

/** Where `value` breaks `schema`, one line per problem ("$.mem_backend.backend_type: ..."); empty if valid. */
export function validateSchema(
  schema: Schema,
  value: unknown,
  definitions: Record<string, Schema>,
  at = '$',
): string[] {
  if (schema.$ref !== undefined) {
    const target = /^#\/definitions\/(.+)$/.exec(schema.$ref)?.[1];
    const resolved = target === undefined ? undefined : definitions[target];
    return resolved
      ? validateSchema(resolved, value, definitions, at)
      : [`${at}: unresolvable $ref ${schema.$ref}`];
  }
  const type = schema.type ?? (schema.properties ? 'object' : undefined);
  const actual = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  const typeOk =
    type === undefined ||
    (type === 'integer'
      ? Number.isInteger(value)
      : type === 'number'
        ? typeof value === 'number' && Number.isFinite(value)
        : actual === type);
  if (!typeOk)
    return [`${at}: expected ${type}, got ${actual === 'number' ? `number ${String(value)}` : actual}`];
  const errors: string[] = [];
  if (schema.enum && !schema.enum.includes(value))
    errors.push(
      `${at}: ${JSON.stringify(value)} is not one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}`,
    );
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum)
      errors.push(`${at}: ${value} is below the minimum ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum)
      errors.push(`${at}: ${value} is above the maximum ${schema.maximum}`);
  }
  if (Array.isArray(value) && schema.items)
    value.forEach((item, i) =>
      errors.push(...validateSchema(schema.items!, item, definitions, `${at}[${i}]`)),
    );
  if (actual === 'object') {
    const o = value as Record<string, unknown>;
    for (const field of schema.required ?? [])
      if (!(field in o)) errors.push(`${at}: missing required field \`${field}\``);
    for (const [key, v] of Object.entries(o)) {
      const property = schema.properties?.[key];
      if (property) errors.push(...validateSchema(property, v, definitions, `${at}.${key}`));
      else if (typeof schema.additionalProperties === 'object')
        errors.push(...validateSchema(schema.additionalProperties, v, definitions, `${at}.${key}`));
      else if (schema.properties && schema.additionalProperties !== true)
        errors.push(
          `${at}: unknown field \`${key}\`, expected one of ${Object.keys(schema.properties).join(', ')}`,
        );
    }
  }
  return errors;
}

/** Rules the spec states in prose only, with Firecracker's own messages (api_server/request/snapshot.rs). */
const PROSE_RULES: Record<string, (body: Record<string, unknown>) => string | undefined> = {
  'PUT /snapshot/load': (b) =>
    'mem_backend' in b && 'mem_file_path' in b
      ? 'too many fields: either `mem_backend` or `mem_file_path` exclusively is required'
      : !('mem_backend' in b) && !('mem_file_path' in b)
        ? 'missing field: either `mem_backend` or `mem_file_path` is required'
        : undefined,
};

export interface RecordedRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  /** The body as received, and parsed (undefined when empty or not JSON). */
  raw: string;
  body: unknown;
  status: number | undefined;
  violations: string[];
}

export interface FakeFirecracker {
  readonly socketPath: string;
  readonly spec: Spec;
  readonly requests: RecordedRequest[];
  /** Every violation of every request, as "METHOD /path: problem". */
  readonly violations: string[];
  /** The next request that passes validation is answered `status` and this raw body instead. */
  answerNext(status: number, rawBody: string): void;
  /** The next request that passes validation is answered `status` with Firecracker's Error object. */
  failNext(status: number, faultMessage: string): void;
  /** The next request is read and recorded but never answered (until close). */
  hangNext(): void;
  close(): Promise<void>;
}

export interface FakeFirecrackerOptions {
  specPath?: string;
  /**
   * Runs for a valid PUT /snapshot/load before it is answered, as Firecracker connects to a Uffd
   * backend during the load: a test does the memory side here (the exact-handshake client). A
   * rejection is answered 400 with its message as Firecracker's fault_message.
   */
  onLoad?: (body: Record<string, unknown>) => Promise<void>;
}

export async function startFakeFirecracker(options: FakeFirecrackerOptions = {}): Promise<FakeFirecracker> {
  const spec = loadFirecrackerSpec(options.specPath);
  const dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-fc-'));
  const socketPath = path.join(dir, 'firecracker.sock');
  const requests: RecordedRequest[] = [];
  const violations: string[] = [];
  let next: { status: number; body: string } | 'hang' | undefined;
  const state = {
    instance: 'Not started' as string,
    machine: {
      vcpu_count: 1,
      mem_size_mib: 128,
      smt: false,
      track_dirty_pages: false,
      huge_pages: 'None',
    } as Record<string, unknown>,
  };

  const handle = (req: http.IncomingMessage, raw: string, res: http.ServerResponse): void => {
    const method = req.method ?? '';
    const url = (req.url ?? '').split('?')[0] ?? '';
    const rec: RecordedRequest = {
      method,
      path: url,
      headers: req.headers,
      raw,
      body: undefined,
      status: undefined,
      violations: [],
    };
    requests.push(rec);
    const answer = (status: number, body?: unknown): void => {
      rec.status = status;
      const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
      res
        .writeHead(
          status,
          text ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } : {},
        )
        .end(text);
    };
    const reject = (status: number, problems: string[]): void => {
      rec.violations.push(...problems);
      violations.push(...problems.map((p) => `${method} ${url}: ${p}`));
      answer(status, { fault_message: problems.join('; ') });
    };
    if (next === 'hang') {
      next = undefined;
      return;
    }
    const template = Object.keys(spec.paths).find((t) =>
      new RegExp(`^${t.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+')}$`).test(url),
    );
    if (template === undefined) return reject(404, [`no path ${url} in the Firecracker API spec`]);
    const op = spec.paths[template]?.[method.toLowerCase()];
    if (!op)
      return reject(405, [
        `${template} has no ${method} in the spec (it has ${Object.keys(spec.paths[template] ?? {}).join(', ')})`,
      ]);

    const problems: string[] = [];
    const param = op.parameters?.find((p) => p.in === 'body');
    if (raw !== '') {
      if (!param) problems.push(`${method} ${template} takes no body`);
      if (req.headers['content-length'] === undefined || req.headers['transfer-encoding'] !== undefined) {
        problems.push(
          `body without Content-Length (Transfer-Encoding ${req.headers['transfer-encoding'] ?? 'none'}): Firecracker's micro_http reads bodies by Content-Length only`,
        );
      }
      if (Buffer.byteLength(raw) > MAX_PAYLOAD)
        problems.push(`body of ${Buffer.byteLength(raw)} bytes exceeds micro_http's ${MAX_PAYLOAD}`);
      if (req.headers['content-type']?.split(';')[0]?.trim() !== 'application/json')
        problems.push(
          `Content-Type ${req.headers['content-type'] ?? 'absent'}, the spec consumes application/json`,
        );
    }
    if (param?.schema) {
      if (raw === '') problems.push(`${method} ${template} needs a JSON body (${param.name})`);
      else {
        try {
          rec.body = JSON.parse(raw);
          problems.push(...validateSchema(param.schema, rec.body, spec.definitions));
          const rule = PROSE_RULES[`${method} ${template}`];
          const broken =
            rule && problems.length === 0 ? rule(rec.body as Record<string, unknown>) : undefined;
          if (broken) problems.push(broken);
        } catch (e) {
          problems.push(`body is not JSON: ${(e as Error).message}`);
        }
      }
    }
    if (problems.length > 0) return reject(400, problems);

    if (next !== undefined) {
      const { status, body } = next;
      next = undefined;
      return answer(status, body);
    }
    const success = Object.keys(op.responses)
      .filter((s) => /^2\d\d$/.test(s))
      .sort()[0];
    if (success === undefined)
      return reject(500, [`the spec has no success response for ${method} ${template}`]);
    const body = method === 'GET' ? respond(template, state) : undefined;
    const schema = op.responses[success]?.schema;
    if (schema && body === undefined) return reject(501, [`the fake has no answer for GET ${template}`]);
    const own = schema ? validateSchema(schema, body, spec.definitions) : [];
    if (own.length > 0)
      return reject(
        500,
        own.map((p) => `the fake's own response breaks the spec: ${p}`),
      );
    if (options.onLoad && `${method} ${template}` === 'PUT /snapshot/load') {
      options.onLoad(rec.body as Record<string, unknown>).then(
        () => {
          apply(`${method} ${template}`, rec.body as Record<string, unknown>, state);
          answer(Number(success), body);
        },
        (e: unknown) => answer(400, { fault_message: `Load snapshot error: ${(e as Error).message}` }),
      );
      return;
    }
    apply(`${method} ${template}`, rec.body as Record<string, unknown>, state);
    answer(Number(success), body);
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handle(req, Buffer.concat(chunks).toString('utf8'), res));
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(socketPath, resolve));

  return {
    socketPath,
    spec,
    requests,
    violations,
    answerNext: (status, body) => void (next = { status, body }),
    failNext: (status, faultMessage) =>
      void (next = { status, body: JSON.stringify({ fault_message: faultMessage }) }),
    hangNext: () => void (next = 'hang'),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Bodies of the GETs the fake answers, from its state. */
function respond(template: string, state: { instance: string; machine: Record<string, unknown> }): unknown {
  if (template === '/')
    return {
      app_name: 'Firecracker',
      id: 'anonymous-instance',
      state: state.instance,
      vmm_version: '1.16.1',
    };
  if (template === '/machine-config') return state.machine;
  if (template === '/version') return { firecracker_version: '1.16.1' };
  return undefined;
}

/** The state changes of the calls a restore makes, as Firecracker applies them. */
function apply(
  call: string,
  body: Record<string, unknown>,
  state: { instance: string; machine: Record<string, unknown> },
): void {
  if (call === 'PUT /machine-config')
    state.machine = { smt: false, track_dirty_pages: false, huge_pages: 'None', ...body };
  if (call === 'PATCH /vm') state.instance = body.state === 'Paused' ? 'Paused' : 'Running';
  if (call === 'PUT /snapshot/load') state.instance = body.resume_vm === true ? 'Running' : 'Paused';
}

/** One request with exactly these bytes, bypassing the client (for checking the fake itself). */
export function rawRequest(
  socketPath: string,
  method: string,
  urlPath: string,
  body?: string,
  headers: http.OutgoingHttpHeaders = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    // A header given as undefined is left out (e.g. content-length, to send a chunked body).
    const merged =
      body === undefined
        ? headers
        : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers };
    const h = Object.fromEntries(Object.entries(merged).filter(([, v]) => v !== undefined));
    const req = http.request({ socketPath, method, path: urlPath, headers: h }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
      );
    });
    req.on('error', reject);
    req.end(body);
  });
}
