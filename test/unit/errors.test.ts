import { describe, expect, expectTypeOf, it } from 'vitest';

import {
  ERROR_CODES,
  HostClosedError,
  InsecurePathError,
  InvalidArgumentError,
  KeyUnavailableError,
  LazysnapError,
  NativeUnavailableError,
  OtelConfigError,
  SessionClosedError,
  SignatureError,
  UffdUnavailableError,
  WrongKeyError,
  isErrorCode,
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
    expect(new InvalidArgumentError('id', 'a safe name', 'a/../b').message).toBe(
      'id must be a safe name, received "a/../b"',
    );
    expect(new InvalidArgumentError('x', 'y', 5n).message).toMatch(/received 5n$/);
    expect(new InvalidArgumentError('x', 'y', [1, 2]).message).toMatch(/an array of length 2$/);
    expectTypeOf(e.code).toEqualTypeOf<'LAZYSNAP_INVALID_ARGUMENT'>();
    expectTypeOf<LazysnapError['code']>().toEqualTypeOf<ErrorCode>();
  });

  it('keep the underlying error as cause', () => {
    const cause = Object.assign(new Error('EPERM: operation not permitted, userfaultfd'), {
      code: 'EPERM',
      errno: -1,
      syscall: 'userfaultfd',
    });
    const e = new UffdUnavailableError('run as root', cause);
    expect(e.cause).toBe(cause);
    expect(e.remedy).toBe('run as root');
    expect(e.code).toBe('LAZYSNAP_UFFD_UNAVAILABLE');
    expect(isSystemError(cause)).toBe(true);
    expect(isSystemError(e)).toBe(false);
    expect(new NativeUnavailableError('x', cause).cause).toBe(cause);
    expect(new SessionClosedError().code).toBe('LAZYSNAP_SESSION_CLOSED');
    expect(new HostClosedError().code).toBe('LAZYSNAP_HOST_CLOSED');
  });

  it('know their own codes at run time (errors that crossed a thread keep their class only by code)', () => {
    expect(new Set(ERROR_CODES).size).toBe(ERROR_CODES.length);
    expect(isErrorCode('LAZYSNAP_HOST_CLOSED')).toBe(true);
    expect(isErrorCode('EFAULT')).toBe(false);
    expectTypeOf<(typeof ERROR_CODES)[number]>().toEqualTypeOf<ErrorCode>();
  });

  it('a refused OpenTelemetry setting names its variable', () => {
    const e = new OtelConfigError('OTEL_EXPORTER_OTLP_PROTOCOL', '"grpc" is not supported');
    expect(e).toMatchObject({
      code: 'LAZYSNAP_BAD_OTEL_CONFIG',
      name: 'OtelConfigError',
      variable: 'OTEL_EXPORTER_OTLP_PROTOCOL',
      message: 'OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" is not supported',
    });
    expect(isErrorCode(e.code)).toBe(true);
    expectTypeOf(e.code).toEqualTypeOf<'LAZYSNAP_BAD_OTEL_CONFIG'>();
  });

  it('security refusals carry their codes and context, never key material', () => {
    const sig = new SignatureError('vm', 'mismatch', 'its signature does not verify', {
      expectedKey: 'ed25519:aa',
      signedBy: 'ed25519:bb',
    });
    expect(sig).toMatchObject({
      code: 'LAZYSNAP_BAD_SIGNATURE',
      name: 'SignatureError',
      id: 'vm',
      reason: 'mismatch',
      expectedKey: 'ed25519:aa',
      signedBy: 'ed25519:bb',
    });
    expect(sig.message).toBe('manifest "vm" refused: its signature does not verify');
    expectTypeOf(sig.reason).toEqualTypeOf<'missing' | 'malformed' | 'mismatch'>();
    expect(new KeyUnavailableError('prod', 'set LAZYSNAP_CHUNK_KEY')).toMatchObject({
      code: 'LAZYSNAP_KEY_UNAVAILABLE',
      keyId: 'prod',
      message: 'no chunk key for key id "prod": set LAZYSNAP_CHUNK_KEY',
    });
    expect(new WrongKeyError('prod', 'snapshot "vm"')).toMatchObject({
      code: 'LAZYSNAP_WRONG_KEY',
      keyId: 'prod',
    });
    expect(new InsecurePathError('/run/x', 'owned by uid 5')).toMatchObject({
      code: 'LAZYSNAP_INSECURE_PATH',
      path: '/run/x',
      message: 'refusing to use /run/x: owned by uid 5',
    });
  });
});
