/**
 * The base of every error lazysnap raises on purpose, and the list of their codes (core/errors.ts
 * has the classes; import from there).
 */
export const ERROR_CODES = [
  'LAZYSNAP_INVALID_ARGUMENT',
  'LAZYSNAP_NATIVE_UNAVAILABLE',
  'LAZYSNAP_UFFD_UNAVAILABLE',
  'LAZYSNAP_SESSION_CLOSED',
  'LAZYSNAP_HOST_CLOSED',
  'LAZYSNAP_INVALID_URL',
  'LAZYSNAP_NOT_FOUND',
  'LAZYSNAP_STORE_READ_ONLY',
  'LAZYSNAP_STORE_ERROR',
  'LAZYSNAP_BAD_MANIFEST',
  'LAZYSNAP_UNSUPPORTED_FORMAT',
  'LAZYSNAP_INTEGRITY',
  'LAZYSNAP_SOURCE_ERROR',
  'LAZYSNAP_BAD_HANDSHAKE',
  'LAZYSNAP_FETCH_FAILED',
  'LAZYSNAP_BAD_PROFILE',
  'LAZYSNAP_FIRECRACKER',
  'LAZYSNAP_FIRECRACKER_CONNECTION',
  'LAZYSNAP_BAD_SIGNATURE',
  'LAZYSNAP_KEY_UNAVAILABLE',
  'LAZYSNAP_WRONG_KEY',
  'LAZYSNAP_INSECURE_PATH',
  'LAZYSNAP_HANDOVER_REFUSED',
  'LAZYSNAP_WORKER_FAILED',
  'LAZYSNAP_BAD_OTEL_CONFIG',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Whether `code` is one of lazysnap's own (an error that crossed a thread or process boundary). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return (ERROR_CODES as readonly unknown[]).includes(code);
}

export class LazysnapError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}
