import { describe, expect, expectTypeOf, it } from 'vitest';

import {
  InvalidArgumentError,
  LazysnapError,
  NativeUnavailableError,
  SessionClosedError,
  UffdUnavailableError,
  isSystemError,
  type ErrorCode,
} from '../../core/errors.js';

describe('typed errors', () => {
  it('carry a stable code, a name, and say expected vs received', () => {
    const e = new InvalidArgumentError('chunkSize', 'a power of two', 3000);
    expect(e).toBeInstanceOf(LazysnapError);
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('LAZYSNAP_INVALID_ARGUMENT');
    expect(e.name).toBe('InvalidArgumentError');
    expect(e.argument).toBe('chunkSize');
    expect(e.message).toBe('chunkSize must be a power of two, received 3000');
    expect(new InvalidArgumentError('id', 'a safe name', 'a/../b').message).toBe('id must be a safe name, received "a/../b"');
    expect(new InvalidArgumentError('x', 'y', 5n).message).toMatch(/received 5n$/);
    expect(new InvalidArgumentError('x', 'y', [1, 2]).message).toMatch(/an array of length 2$/);
    expectTypeOf(e.code).toEqualTypeOf<'LAZYSNAP_INVALID_ARGUMENT'>();
    expectTypeOf<LazysnapError['code']>().toEqualTypeOf<ErrorCode>();
  });

  it('keep the underlying error as cause', () => {
    const cause = Object.assign(new Error('EPERM: operation not permitted, userfaultfd'), { code: 'EPERM', errno: -1, syscall: 'userfaultfd' });
    const e = new UffdUnavailableError('run as root', cause);
    expect(e.cause).toBe(cause);
    expect(e.remedy).toBe('run as root');
    expect(e.code).toBe('LAZYSNAP_UFFD_UNAVAILABLE');
    expect(isSystemError(cause)).toBe(true);
    expect(isSystemError(e)).toBe(false);
    expect(new NativeUnavailableError('x', cause).cause).toBe(cause);
    expect(new SessionClosedError().code).toBe('LAZYSNAP_SESSION_CLOSED');
  });
});
