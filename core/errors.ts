/**
 * Every error lazysnap raises on purpose is a LazysnapError with a stable `code`. Match on `code`,
 * never on the message: messages are for people and may change.
 *
 * Errors from the kernel (through the native addon) are Node-style system errors instead
 * (`code: 'EEXIST'`, `errno`, `syscall`), the same shape as `fs` errors; see `isSystemError`.
 */

export type ErrorCode =
  | 'LAZYSNAP_INVALID_ARGUMENT'
  | 'LAZYSNAP_NATIVE_UNAVAILABLE'
  | 'LAZYSNAP_UFFD_UNAVAILABLE'
  | 'LAZYSNAP_SESSION_CLOSED';

export class LazysnapError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

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
  return e instanceof Error && typeof (e as SystemError).syscall === 'string' && typeof (e as SystemError).code === 'string';
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (v === null || typeof v !== 'object') return String(v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  return `an object of type ${v.constructor?.name ?? 'Object'}`;
}
