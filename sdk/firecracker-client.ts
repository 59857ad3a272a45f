/**
 * A client for Firecracker's REST API on its Unix socket (`--api-sock`), for the calls a snapshot
 * restore needs. The wire format is the swagger spec of Firecracker v1.16.1
 * (test/fixtures/contracts/firecracker-api-v1.16.1.yaml); test/unit/firecracker-client.test.ts checks every call
 * against that file. The TS API is camelCase; bodies use the spec's snake_case names, built field
 * by field (no generic case conversion: a wrong name is rejected by Firecracker, whose serde
 * structs deny unknown fields, so each one is spelled out and tested).
 *
 * Hazards:
 * - Aborting or timing out a call only stops waiting: Firecracker handles one request at a time
 *   and still carries out one it has read (a snapshot load keeps loading). Check the instance
 *   state (describeInstance) before retrying anything that is not idempotent.
 * - Bodies must carry Content-Length: micro_http reads no chunked body (it would arrive empty).
 */
import { Client, type Dispatcher } from 'undici';

import { FirecrackerConnectionError, FirecrackerError, InvalidArgumentError } from '../core/errors.js';

export interface FirecrackerClientOptions {
  /** Path of Firecracker's API socket (`--api-sock`). At most 107 bytes (Linux `sun_path`). */
  socketPath: string;
  /**
   * Time allowed per call, from sending to the end of the response; then the call fails with
   * FirecrackerConnectionError (`timedOut`). Each call can override it (large snapshots take longer
   * to write). @default 10_000
   */
  timeoutMs?: number;
}

export type ResolvedFirecrackerClientOptions = Required<FirecrackerClientOptions>;

export interface CallOptions {
  /** Cancels the call: it rejects with `signal.reason`. */
  signal?: AbortSignal;
  /** Overrides the client's timeoutMs for this call. */
  timeoutMs?: number;
}

/** GET / (the spec's InstanceInfo). */
export interface InstanceInfo {
  appName: string;
  id: string;
  state: 'Not started' | 'Running' | 'Paused';
  vmmVersion: string;
}

/** PUT /machine-config (the spec's MachineConfiguration). Unset optional fields reset to Firecracker's defaults. */
export interface MachineConfig {
  /** 1 to 32; with SMT, 1 or even. */
  vcpuCount: number;
  memSizeMib: number;
  smt?: boolean;
  trackDirtyPages?: boolean;
  /** 2M needs memSizeMib to be a multiple of 2. */
  hugePages?: 'None' | '2M';
}

/** GET /machine-config: what PUT set, plus the deprecated CPU template if one is set. */
export interface MachineConfigInfo extends MachineConfig {
  cpuTemplate?: string;
}

export interface CreateSnapshotParams {
  /** Where Firecracker writes the microVM state, and guest memory. */
  snapshotPath: string;
  memFilePath: string;
  /** @default 'Full' (Firecracker's default when absent) */
  snapshotType?: 'Full' | 'Diff';
}

/** `Uffd`: backendPath is the socket of a page-fault handler such as `lazysnap serve`. */
export interface MemBackend {
  backendType: 'Uffd' | 'File';
  backendPath: string;
}

export interface LoadSnapshotParams {
  snapshotPath: string;
  /** Replaces Firecracker's deprecated `mem_file_path` (use backendType 'File' for a plain file). */
  memBackend: MemBackend;
  resumeVm?: boolean;
  trackDirtyPages?: boolean;
  /** @deprecated Firecracker's former name of trackDirtyPages; give one of them. */
  enableDiffSnapshots?: boolean;
  networkOverrides?: Array<{ ifaceId: string; hostDevName: string }>;
  vsockOverride?: { udsPath: string };
  /** x86_64 only: advance kvmclock by the wall-clock time since the snapshot. */
  clockRealtime?: boolean;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_SOCKET_PATH_BYTES = 107; // Linux sun_path: 108 bytes with the terminating NUL
/** Firecracker's responses are a few hundred bytes; anything far larger is not Firecracker. */
const MAX_RESPONSE_BYTES = 1024 * 1024;
/** The boolean fields of PUT /snapshot/load: TS name, then the spec's. */
const LOAD_FLAGS = [
  ['resumeVm', 'resume_vm'],
  ['trackDirtyPages', 'track_dirty_pages'],
  ['enableDiffSnapshots', 'enable_diff_snapshots'],
  ['clockRealtime', 'clock_realtime'],
] as const;

export function resolveFirecrackerClientOptions(
  options: FirecrackerClientOptions,
): ResolvedFirecrackerClientOptions {
  const o = record('options', options, ['socketPath', 'timeoutMs']);
  const socketPath = text('socketPath', o.socketPath);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES)
    throw new InvalidArgumentError(
      'socketPath',
      `at most ${MAX_SOCKET_PATH_BYTES} bytes (Linux sun_path)`,
      socketPath,
    );
  return {
    socketPath,
    timeoutMs: o.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : integer('timeoutMs', o.timeoutMs, 1),
  };
}

export class FirecrackerClient {
  readonly socketPath: string;
  readonly #timeoutMs: number;
  readonly #client: Client;
  #closed = false;

  constructor(options: FirecrackerClientOptions) {
    const { socketPath, timeoutMs } = resolveFirecrackerClientOptions(options);
    this.socketPath = socketPath;
    this.#timeoutMs = timeoutMs;
    // Timeouts are ours (per call, through the signal); undici's own would cut long snapshot writes.
    this.#client = new Client('http://localhost', { socketPath, headersTimeout: 0, bodyTimeout: 0 });
  }

  /** GET /: the instance's id, state and Firecracker version. */
  async describeInstance(options?: CallOptions): Promise<InstanceInfo> {
    const r = await this.#call('GET', '/', undefined, options);
    const v = expectFields('GET', '/', r, {
      app_name: 'string',
      id: 'string',
      state: 'string',
      vmm_version: 'string',
    });
    return {
      appName: v.app_name as string,
      id: v.id as string,
      state: v.state as InstanceInfo['state'],
      vmmVersion: v.vmm_version as string,
    };
  }

  /** GET /machine-config: the spec's MachineConfiguration, camelCased. */
  async getMachineConfig(options?: CallOptions): Promise<MachineConfigInfo> {
    const r = await this.#call('GET', '/machine-config', undefined, options);
    const v = expectFields('GET', '/machine-config', r, { vcpu_count: 'number', mem_size_mib: 'number' });
    const out: MachineConfigInfo = {
      vcpuCount: v.vcpu_count as number,
      memSizeMib: v.mem_size_mib as number,
    };
    if (typeof v.smt === 'boolean') out.smt = v.smt;
    if (typeof v.track_dirty_pages === 'boolean') out.trackDirtyPages = v.track_dirty_pages;
    if (v.huge_pages === 'None' || v.huge_pages === '2M') out.hugePages = v.huge_pages;
    if (typeof v.cpu_template === 'string') out.cpuTemplate = v.cpu_template;
    return out;
  }

  /** PUT /machine-config (pre-boot only). */
  async putMachineConfig(config: MachineConfig, options?: CallOptions): Promise<void> {
    const c = record('config', config, ['vcpuCount', 'memSizeMib', 'smt', 'trackDirtyPages', 'hugePages']);
    const body: Record<string, unknown> = {
      vcpu_count: integer('config.vcpuCount', c.vcpuCount, 1, 32),
      mem_size_mib: integer('config.memSizeMib', c.memSizeMib, 1),
    };
    if (c.smt !== undefined) body.smt = flag('config.smt', c.smt);
    if (c.trackDirtyPages !== undefined)
      body.track_dirty_pages = flag('config.trackDirtyPages', c.trackDirtyPages);
    if (c.hugePages !== undefined) body.huge_pages = oneOf('config.hugePages', c.hugePages, ['None', '2M']);
    await this.#call('PUT', '/machine-config', body, options);
  }

  /** PATCH /vm `Paused` (before createSnapshot). */
  async pause(options?: CallOptions): Promise<void> {
    await this.#call('PATCH', '/vm', { state: 'Paused' }, options);
  }
  /** PATCH /vm `Resumed`. */
  async resume(options?: CallOptions): Promise<void> {
    await this.#call('PATCH', '/vm', { state: 'Resumed' }, options);
  }

  /** PUT /snapshot/create (the VM must be paused). */
  async createSnapshot(params: CreateSnapshotParams, options?: CallOptions): Promise<void> {
    const p = record('params', params, ['snapshotPath', 'memFilePath', 'snapshotType']);
    const body: Record<string, unknown> = {
      snapshot_path: text('params.snapshotPath', p.snapshotPath),
      mem_file_path: text('params.memFilePath', p.memFilePath),
    };
    if (p.snapshotType !== undefined)
      body.snapshot_type = oneOf('params.snapshotType', p.snapshotType, ['Full', 'Diff']);
    await this.#call('PUT', '/snapshot/create', body, options);
  }

  /**
   * PUT /snapshot/load (a fresh Firecracker only). With backendType 'Uffd', Firecracker connects to
   * backendPath and faults pages in while this call runs, so the handler must already be serving.
   * Never sends `mem_file_path`: Firecracker rejects it together with `mem_backend`.
   */
  async loadSnapshot(params: LoadSnapshotParams, options?: CallOptions): Promise<void> {
    const keys = [
      'snapshotPath',
      'memBackend',
      'resumeVm',
      'trackDirtyPages',
      'enableDiffSnapshots',
      'networkOverrides',
      'vsockOverride',
      'clockRealtime',
    ];
    const p = record('params', params, keys, {
      memFilePath: "memBackend: { backendType: 'File', backendPath } (Firecracker deprecated mem_file_path)",
    });
    const mb = record('params.memBackend', p.memBackend, ['backendType', 'backendPath']);
    const body: Record<string, unknown> = {
      snapshot_path: text('params.snapshotPath', p.snapshotPath),
      mem_backend: {
        backend_type: oneOf('params.memBackend.backendType', mb.backendType, ['Uffd', 'File']),
        backend_path: text('params.memBackend.backendPath', mb.backendPath),
      },
    };
    if (p.trackDirtyPages !== undefined && p.enableDiffSnapshots !== undefined) {
      throw new InvalidArgumentError(
        'params.enableDiffSnapshots',
        'absent when trackDirtyPages is given (it is the deprecated name of trackDirtyPages)',
        p.enableDiffSnapshots,
      );
    }
    for (const [key, wire] of LOAD_FLAGS)
      if (p[key] !== undefined) body[wire] = flag(`params.${key}`, p[key]);
    if (p.networkOverrides !== undefined) {
      if (!Array.isArray(p.networkOverrides))
        throw new InvalidArgumentError(
          'params.networkOverrides',
          'an array of { ifaceId, hostDevName }',
          p.networkOverrides,
        );
      body.network_overrides = p.networkOverrides.map((n: unknown, i) => {
        const o = record(`params.networkOverrides[${i}]`, n, ['ifaceId', 'hostDevName']);
        return {
          iface_id: text(`params.networkOverrides[${i}].ifaceId`, o.ifaceId),
          host_dev_name: text(`params.networkOverrides[${i}].hostDevName`, o.hostDevName),
        };
      });
    }
    if (p.vsockOverride !== undefined) {
      const v = record('params.vsockOverride', p.vsockOverride, ['udsPath']);
      body.vsock_override = { uds_path: text('params.vsockOverride.udsPath', v.udsPath) };
    }
    await this.#call('PUT', '/snapshot/load', body, options);
  }

  /** Waits for calls in flight (each bounded by its timeout), then closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#client.close();
  }

  /** One API call: the parsed JSON of a 2xx body (undefined for 204), or a typed error. */
  async #call(
    method: 'GET' | 'PUT' | 'PATCH',
    path: string,
    body: Record<string, unknown> | undefined,
    options: CallOptions | undefined,
  ): Promise<unknown> {
    const o = options === undefined ? {} : record('options', options, ['signal', 'timeoutMs']);
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal))
      throw new InvalidArgumentError('options.signal', 'an AbortSignal', o.signal);
    const signal = o.signal;
    const timeoutMs =
      o.timeoutMs === undefined ? this.#timeoutMs : integer('options.timeoutMs', o.timeoutMs, 1);
    signal?.throwIfAborted();
    if (this.#closed)
      throw new FirecrackerConnectionError(method, path, this.socketPath, 'the client is closed');
    const timeout = AbortSignal.timeout(timeoutMs);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let res: Dispatcher.ResponseData, raw: string | undefined;
    try {
      res = await this.#client.request({
        path,
        method,
        // undici sends a string body with Content-Length, never chunked (see Hazards above).
        headers:
          payload === undefined
            ? { accept: 'application/json' }
            : { accept: 'application/json', 'content-type': 'application/json' },
        body: payload,
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
      raw = await readText(res.body);
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (timeout.aborted)
        throw new FirecrackerConnectionError(
          method,
          path,
          this.socketPath,
          `no response within ${timeoutMs} ms`,
          { timedOut: true, cause: e },
        );
      throw new FirecrackerConnectionError(
        method,
        path,
        this.socketPath,
        e instanceof Error ? e.message : String(e),
        { cause: e },
      );
    }
    const status = res.statusCode;
    if (raw === undefined)
      throw new FirecrackerError(method, path, status, {
        detail: `response body over ${MAX_RESPONSE_BYTES} bytes: not a Firecracker API answer`,
      });
    const json = parseJson(raw);
    if (status < 200 || status > 299) {
      const fault = (json.value as { fault_message?: unknown } | null | undefined)?.fault_message;
      if (typeof fault === 'string')
        throw new FirecrackerError(method, path, status, { faultMessage: fault });
      throw new FirecrackerError(method, path, status, {
        detail:
          raw.trim() === ''
            ? 'empty response body'
            : `unexpected response body ${JSON.stringify(raw.slice(0, 200))}`,
      });
    }
    if ('error' in json)
      throw new FirecrackerError(method, path, status, {
        detail: `response body is not JSON: ${JSON.stringify(raw.slice(0, 200))}`,
        cause: json.error,
      });
    return json.value;
  }
}

function parseJson(raw: string): { value?: unknown; error?: unknown } {
  try {
    return { value: raw.trim() === '' ? undefined : JSON.parse(raw) };
  } catch (error) {
    return { error };
  }
}

/** The body as text, or undefined past MAX_RESPONSE_BYTES (leaving the loop destroys the body). */
async function readText(body: Dispatcher.ResponseData['body']): Promise<string | undefined> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_RESPONSE_BYTES) return undefined;
    parts.push(chunk);
  }
  return Buffer.concat(parts, size).toString('utf8');
}

/** Checks a 2xx body has the spec's required fields with the right JSON types. */
function expectFields(
  method: string,
  path: string,
  v: unknown,
  fields: Record<string, 'string' | 'number'>,
): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new FirecrackerError(method, path, 200, { detail: 'response body is not a JSON object' });
  const o = v as Record<string, unknown>;
  for (const [k, type] of Object.entries(fields)) {
    if (typeof o[k] !== type)
      throw new FirecrackerError(method, path, 200, { detail: `response field ${k} is not a ${type}` });
  }
  return o;
}

/** A plain object with only `allowed` keys; `replaced` maps removed names to what replaces them. */
function record(
  name: string,
  v: unknown,
  allowed: readonly string[],
  replaced: Record<string, string> = {},
): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new InvalidArgumentError(name, 'an object', v);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    const replacement = replaced[k];
    if (replacement !== undefined)
      throw new InvalidArgumentError(`${name}.${k}`, `absent: use ${replacement}`, o[k]);
    if (!allowed.includes(k))
      throw new InvalidArgumentError(name, `an object with keys among ${allowed.join(', ')}`, k);
  }
  return o;
}

function text(name: string, v: unknown): string {
  if (typeof v !== 'string' || v === '' || v.includes('\0'))
    throw new InvalidArgumentError(name, 'a non-empty string without NUL', v);
  return v;
}
function flag(name: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw new InvalidArgumentError(name, 'a boolean', v);
  return v;
}

function integer(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
  if (!Number.isSafeInteger(v) || (v as number) < min || (v as number) > max)
    throw new InvalidArgumentError(name, `an integer ${range}`, v);
  return v as number;
}
function oneOf<T extends string>(name: string, v: unknown, values: readonly T[]): T {
  if (!values.includes(v as T))
    throw new InvalidArgumentError(name, `one of ${values.map((x) => JSON.stringify(x)).join(', ')}`, v);
  return v as T;
}
