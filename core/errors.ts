/**
 * Every error lazysnap raises on purpose is a LazysnapError with a stable `code`. Match on `code`,
 * never on the message: messages are for people and may change.
 *
 * Errors from the kernel (through the native addon) are Node-style system errors instead
 * (`code: 'EEXIST'`, `errno`, `syscall`), the same shape as `fs` errors; see `isSystemError`.
 */
import { STATUS_CODES } from 'node:http';

import { LazysnapError } from './lazysnap-error.js';

export { ERROR_CODES, LazysnapError, isErrorCode, type ErrorCode } from './lazysnap-error.js';

/** A value outside what an option or argument accepts. `expected` and `received` say both sides. */
export class InvalidArgumentError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_INVALID_ARGUMENT';
  readonly argument: string;
  constructor(argument: string, expected: string, received: unknown) {
    super('LAZYSNAP_INVALID_ARGUMENT', `${argument} must be ${expected}, received ${describe(received)}`);
    this.argument = argument;
  }
}

/** The native addon could not be loaded (not built, or built for another Node ABI). */
export class NativeUnavailableError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_NATIVE_UNAVAILABLE';
  constructor(message: string, cause?: unknown) {
    super('LAZYSNAP_NATIVE_UNAVAILABLE', message, { cause });
  }
}

/**
 * userfaultfd cannot be used by this process: no /dev/userfaultfd access and the syscall refused
 * (vm.unprivileged_userfaultfd = 0 without CAP_SYS_PTRACE). `remedy` says what to do.
 */
export class UffdUnavailableError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_UFFD_UNAVAILABLE';
  readonly remedy: string;
  constructor(remedy: string, cause?: unknown) {
    super('LAZYSNAP_UFFD_UNAVAILABLE', `userfaultfd is not available to this process: ${remedy}`, { cause });
    this.remedy = remedy;
  }
}

export class SessionClosedError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_SESSION_CLOSED';
  constructor() {
    super('LAZYSNAP_SESSION_CLOSED', 'the fault session is closed');
  }
}

/** A RestoreHost used after close(): it starts no server and restores nothing. */
export class HostClosedError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_HOST_CLOSED';
  constructor() {
    super('LAZYSNAP_HOST_CLOSED', 'the restore host is closed');
  }
}

/** A store URL that cannot be used. The message says which part is wrong and what is accepted. */
export class InvalidUrlError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_INVALID_URL';
  readonly url: string;
  constructor(url: string, reason: string) {
    super('LAZYSNAP_INVALID_URL', `invalid store URL ${JSON.stringify(redactUrl(url))}: ${reason}`);
    this.url = redactUrl(url);
  }
}

/** The object does not exist in the store (HTTP 404, S3 NoSuchKey, ENOENT). */
export class NotFoundError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_NOT_FOUND';
  readonly key: string;
  readonly store: string;
  constructor(store: string, key: string, cause?: unknown) {
    super('LAZYSNAP_NOT_FOUND', `${key} not found in ${store}`, { cause });
    this.key = key;
    this.store = store;
  }
}

export class StoreReadOnlyError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_STORE_READ_ONLY';
  readonly store: string;
  constructor(store: string) {
    super(
      'LAZYSNAP_STORE_READ_ONLY',
      `${store} is a read-only store (HTTP origins serve, they do not accept writes)`,
    );
    this.store = store;
  }
}

/** A store operation failed for another reason than absence: I/O, network, status, timeout. */
export class StoreError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_STORE_ERROR';
  readonly store: string;
  readonly key: string | undefined;
  /** HTTP status when the backend speaks HTTP. */
  readonly status: number | undefined;
  /** Whether retrying the same request may succeed (5xx, 429, timeouts, resets). */
  readonly retryable: boolean;
  constructor(
    store: string,
    key: string | undefined,
    message: string,
    opts: { status?: number; retryable?: boolean; cause?: unknown } = {},
  ) {
    super('LAZYSNAP_STORE_ERROR', `${store}${key ? ` ${key}` : ''}: ${message}`, { cause: opts.cause });
    this.store = store;
    this.key = key;
    this.status = opts.status;
    this.retryable = opts.retryable ?? false;
  }
}

/** A manifest that does not parse or breaks an invariant. `field` points at the offending part. */
export class ManifestError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_BAD_MANIFEST';
  readonly field: string;
  constructor(field: string, message: string) {
    super('LAZYSNAP_BAD_MANIFEST', `invalid manifest: ${field}: ${message}`);
    this.field = field;
  }
}

/** A manifest of a format this version does not read (an unknown major version). */
export class UnsupportedFormatError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_UNSUPPORTED_FORMAT';
  readonly format: string;
  constructor(format: string, supported: string) {
    super(
      'LAZYSNAP_UNSUPPORTED_FORMAT',
      `manifest format ${JSON.stringify(format)} is not supported (this lazysnap reads ${supported}); upgrade lazysnap`,
    );
    this.format = format;
  }
}

/**
 * Bytes that are not what they are stored under (a wrong hash, a wrong length, an object too long to
 * be the chunk, an undecodable or unauthentic object): never installed, never cached. `reason` says
 * which; `expected` and `actual` are set when there is a value to compare (a hash, a length).
 */
export class IntegrityError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_INTEGRITY';
  readonly key: string;
  readonly reason: string;
  readonly expected: string | undefined;
  readonly actual: string | undefined;
  constructor(
    key: string,
    reason: string,
    details: { expected?: string | number; actual?: string | number; cause?: unknown } = {},
  ) {
    const vs = details.expected !== undefined ? ` (expected ${details.expected}, got ${details.actual})` : '';
    super('LAZYSNAP_INTEGRITY', `${key}: ${reason}${vs}`, { cause: details.cause });
    this.key = key;
    this.reason = reason;
    this.expected = details.expected === undefined ? undefined : String(details.expected);
    this.actual = details.actual === undefined ? undefined : String(details.actual);
  }
}

/**
 * A snapshot source (memory file, process) that cannot be read. `input` is true when the source as
 * given is unusable (missing file, no such process): the CLI reports that as a usage error.
 */
export class SourceError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_SOURCE_ERROR';
  readonly input: boolean;
  constructor(message: string, cause?: unknown, options: { input?: boolean } = {}) {
    super('LAZYSNAP_SOURCE_ERROR', message, { cause });
    this.input = options.input ?? false;
  }
}

/** A UFFD handshake that breaks the protocol (docs/PROTOCOL.md). The connection is closed; others go on. */
export class HandshakeError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_BAD_HANDSHAKE';
  constructor(reason: string) {
    super('LAZYSNAP_BAD_HANDSHAKE', `invalid UFFD handshake: ${reason}`);
  }
}

/**
 * A handover between two serves of the same socket did not happen: nothing is serving there to take
 * over from, or one side cannot read what the other would hand over (another version). The serve that
 * was running keeps serving.
 */
export class HandoverRefusedError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_HANDOVER_REFUSED';
  constructor(reason: string, cause?: unknown) {
    super('LAZYSNAP_HANDOVER_REFUSED', `handover refused: ${reason}`, { cause });
  }
}

/**
 * A supervised serve has no worker that can serve: workers died before becoming ready too many times
 * in a row (the message says how the last one ended). Live sessions were failed closed.
 */
export class WorkerFailedError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_WORKER_FAILED';
  constructor(message: string) {
    super('LAZYSNAP_WORKER_FAILED', message);
  }
}

/**
 * An OpenTelemetry environment variable (`OTEL_*`) lazysnap cannot act on: a value outside what it
 * accepts, or a choice it does not support (an OTLP protocol other than http/protobuf). `variable`
 * names it. The message says what is accepted and never holds the value of a variable that may carry
 * credentials (endpoints are shown without userinfo and query; header values never).
 */
export class OtelConfigError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_BAD_OTEL_CONFIG';
  readonly variable: string;
  constructor(variable: string, reason: string) {
    super('LAZYSNAP_BAD_OTEL_CONFIG', `${variable}: ${reason}`);
    this.variable = variable;
  }
}

/** No origin delivered a verified chunk. `errors` has one line per attempt, in order. */
export class FetchError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_FETCH_FAILED';
  readonly key: string;
  readonly errors: string[];
  constructor(key: string, errors: string[]) {
    super(
      'LAZYSNAP_FETCH_FAILED',
      `${key}: no origin delivered a verified chunk (${errors.join('; ') || 'no origins'})`,
    );
    this.key = key;
    this.errors = errors;
  }
}

/** A working-set profile that does not parse or does not fit its snapshot. Replay is skipped. */
export class ProfileError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_BAD_PROFILE';
  constructor(message: string) {
    super('LAZYSNAP_BAD_PROFILE', `invalid working-set profile: ${message}`);
  }
}

/**
 * Firecracker answered, but not with success: a non-2xx status, whose body is the spec's `Error`
 * object (`fault_message`), or a 2xx whose body is not what the spec promises (then `detail` says
 * what was wrong and `faultMessage` is undefined).
 */
export class FirecrackerError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_FIRECRACKER';
  /** The API call, e.g. `PUT` and `/snapshot/load`. */
  readonly method: string;
  readonly path: string;
  readonly statusCode: number;
  /** Firecracker's own explanation (`fault_message` of the response), verbatim. */
  readonly faultMessage: string | undefined;
  constructor(
    method: string,
    path: string,
    statusCode: number,
    info: { faultMessage?: string; detail?: string; cause?: unknown } = {},
  ) {
    const reason = info.faultMessage ?? info.detail ?? 'no fault_message in the response';
    super(
      'LAZYSNAP_FIRECRACKER',
      `${method} ${path}: ${statusCode} ${STATUS_CODES[statusCode] ?? 'Unknown Status'}: ${reason}`,
      { cause: info.cause },
    );
    this.method = method;
    this.path = path;
    this.statusCode = statusCode;
    this.faultMessage = info.faultMessage;
  }
}

/**
 * No answer from the API socket: it does not exist, refuses connections, the connection broke, the
 * call timed out (`timedOut`), or the client is closed. The underlying error is in `cause`
 * (`ENOENT`, `ECONNREFUSED`, `ECONNRESET`, undici's `UND_ERR_*`, a `TimeoutError`).
 */
export class FirecrackerConnectionError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_FIRECRACKER_CONNECTION';
  readonly method: string;
  readonly path: string;
  readonly socketPath: string;
  /** True when the call's timeoutMs elapsed; Firecracker may still carry the request out. */
  readonly timedOut: boolean;
  constructor(
    method: string,
    path: string,
    socketPath: string,
    reason: string,
    info: { timedOut?: boolean; cause?: unknown } = {},
  ) {
    super(
      'LAZYSNAP_FIRECRACKER_CONNECTION',
      `${method} ${path}: Firecracker API at ${socketPath}: ${reason}`,
      { cause: info.cause },
    );
    this.method = method;
    this.path = path;
    this.socketPath = socketPath;
    this.timedOut = info.timedOut ?? false;
  }
}

export { InsecurePathError, KeyUnavailableError, SignatureError, WrongKeyError } from './security-errors.js';

/**
 * An untrusted value (a peer's, a document's) in a message, at most 40 characters. Not String():
 * {"toString": 1} makes that throw a TypeError.
 */
export function showUntrusted(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

/** A URL safe to log: credentials and query strings (presigned signatures) removed. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = 'redacted';
      u.password = '';
    }
    if (u.search) u.search = '?redacted';
    return u.toString();
  } catch {
    return url;
  }
}

/** A kernel error as the native layer reports it, shaped like Node's own system errors. */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  /** Set on session errors: the chunk the failed operation was for. */
  chunk?: number;
  /** Set on partial uffd fills: bytes done before the error. */
  bytesDone?: number;
}

export function isSystemError(e: unknown): e is SystemError {
  return (
    e instanceof Error &&
    typeof (e as SystemError).syscall === 'string' &&
    typeof (e as SystemError).code === 'string'
  );
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (v === null || typeof v !== 'object') return String(v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  return `an object of type ${v.constructor?.name ?? 'Object'}`;
}
