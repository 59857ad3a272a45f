/**
 * The uffd primitives on memory this process registers itself. Reads go through process_vm_readv,
 * a kernel-side access: on pages already present it never faults, so the test thread never waits on
 * itself (the deadlock rule in docs/DESIGN.md).
 */
import { afterEach, beforeEach, describe, expect, expectTypeOf, it } from 'vitest';

import { InvalidArgumentError, isSystemError, type SystemError } from '../../core/errors.js';
import {
  ChunkTable,
  FaultSession,
  constants,
  createUffd,
  closeFd,
  mmapAnonymous,
  munmap,
  processVmRead,
  uffdApi,
  uffdCopy,
  uffdPoison,
  uffdRegister,
  uffdUnregister,
  uffdWake,
  uffdZeropage,
} from '../../native/index.js';
import { addon } from '../../native/addon.js';
import { hasUffd, kernelHasPoison, uffdSuite } from '../helpers/skip.js';

const hasPoison = kernelHasPoison();

const PAGE = 4096;
const pattern = (n: number, seed: number) =>
  Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

function catchErr(f: () => unknown): SystemError {
  try {
    f();
  } catch (e) {
    if (isSystemError(e)) return e;
    throw e;
  }
  throw new Error('expected a system error');
}

describe.skipIf(!hasUffd)(uffdSuite('userfaultfd primitives'), () => {
  let uffd: number;
  let addr: bigint;
  const size = 16 * PAGE;
  beforeEach(() => {
    uffd = createUffd();
    addr = mmapAnonymous(size);
  });
  afterEach(() => {
    munmap(addr, size);
    closeFd(uffd);
  });

  it('negotiates the API and reports the kernel features (EVENT_REMOVE, POISON on 6.6+)', () => {
    const c = constants();
    const api = uffdApi(uffd, c.UFFD_FEATURE_EVENT_REMOVE);
    expectTypeOf(api.features).toEqualTypeOf<bigint>();
    expect(api.features & c.UFFD_FEATURE_EVENT_REMOVE).toBe(c.UFFD_FEATURE_EVENT_REMOVE);
    // UFFDIO_API may be done once per uffd.
    expect(catchErr(() => uffdApi(uffd, 0n))).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_API)' });
    const ioctls = uffdRegister(uffd, addr, size);
    expect(ioctls & c.IOCTL_COPY).toBe(c.IOCTL_COPY);
    expect(ioctls & c.IOCTL_ZEROPAGE).toBe(c.IOCTL_ZEROPAGE);
  });

  it('copy skips present pages and continues past them (EEXIST / partial-copy rule)', () => {
    uffdApi(uffd, 0n);
    uffdRegister(uffd, addr, size);
    const data = pattern(size, 7);
    // Pages 3 and 9 get other bytes first; a whole-range copy must keep them and fill the rest.
    const early = pattern(PAGE, 99);
    uffdCopy(uffd, addr + BigInt(3 * PAGE), early);
    uffdCopy(uffd, addr + BigInt(9 * PAGE), early);
    const r = uffdCopy(uffd, addr, data);
    expect(r).toEqual({ bytes: 14 * PAGE, pagesPresent: 2 });
    const got = Buffer.alloc(size);
    expect(processVmRead(process.pid, addr, got)).toBe(size);
    for (let p = 0; p < 16; p++) {
      const want = p === 3 || p === 9 ? early : data.subarray(p * PAGE, (p + 1) * PAGE);
      expect(got.subarray(p * PAGE, (p + 1) * PAGE).equals(want), `page ${p}`).toBe(true);
    }
    // Everything present: a second copy copies nothing and says so.
    expect(uffdCopy(uffd, addr, data)).toEqual({ bytes: 0, pagesPresent: 16 });
  });

  it('zeropage maps zeros without overwriting present pages; wake is accepted on any range', () => {
    uffdApi(uffd, 0n);
    uffdRegister(uffd, addr, size);
    uffdCopy(uffd, addr, pattern(PAGE, 1));
    expect(uffdZeropage(uffd, addr, size)).toEqual({ bytes: 15 * PAGE, pagesPresent: 1 });
    const got = Buffer.alloc(size);
    processVmRead(process.pid, addr, got);
    expect(got.subarray(0, PAGE).equals(pattern(PAGE, 1))).toBe(true);
    expect(got.subarray(PAGE).every((b) => b === 0)).toBe(true);
    expect(() => uffdWake(uffd, addr, size)).not.toThrow();
  });

  it.skipIf(!hasPoison)(
    `poison marks missing pages so that any access fails${hasPoison ? '' : ' [SKIPPED: kernel < 6.6]'}`,
    () => {
      uffdApi(uffd, 0n);
      uffdRegister(uffd, addr, size);
      expect(uffdPoison(uffd, addr + BigInt(PAGE), PAGE)).toEqual({ bytes: PAGE, pagesPresent: 0 });
      uffdZeropage(uffd, addr, PAGE);
      // process_vm_readv stops at the poisoned page: page 0 reads, page 1 does not.
      expect(processVmRead(process.pid, addr, Buffer.alloc(2 * PAGE))).toBe(PAGE);
    },
  );

  it('unregister ends delivery for the range: later ioctls there fail with ENOENT', () => {
    uffdApi(uffd, 0n);
    uffdRegister(uffd, addr, size);
    uffdUnregister(uffd, addr, size);
    expect(catchErr(() => uffdCopy(uffd, addr, pattern(PAGE, 2)))).toMatchObject({
      code: 'ENOENT',
      errno: -2,
    });
  });

  it('reports kernel errors shaped like Node system errors', () => {
    const e = catchErr(() => uffdCopy(9999, addr, pattern(PAGE, 0)));
    expect(e).toMatchObject({ code: 'EBADF', errno: -9, syscall: 'ioctl(UFFDIO_COPY)' });
    expect(e.message).toBe('EBADF: bad file descriptor, ioctl(UFFDIO_COPY)');
    expect(catchErr(() => uffdRegister(uffd, addr, size))).toMatchObject({ code: 'EINVAL' }); // API not done yet
  });
});

describe('native argument validation (no kernel needed)', () => {
  it('rejects bad arguments with typed errors that state expected and received', () => {
    expect(() => new ChunkTable(0, 4096)).toThrow(InvalidArgumentError);
    expect(() => new ChunkTable(1 << 20, 3000)).toThrow(/chunkSize must be an integer in \[4096/);
    expect(() => new ChunkTable(1 << 20, 12288)).toThrow(/chunkSize must be a power of two, received 12288/);
    const t = new ChunkTable(1 << 20, 65536);
    expect(() => t.put(0, Buffer.alloc(10))).toThrow(/chunk 0 must be 65536 bytes long, received 10/);
    expect(() => t.put(16, Buffer.alloc(65536))).toThrow(/chunkIndex must be below 16, received 16/);
    expect(() => t.markZero(new Uint8Array(3))).toThrow(/one byte per chunk \(16\)/);
    expect(() => new FaultSession(3, { table: t, pageSize: 8192 as 4096, regions: [] }, () => {})).toThrow(
      /pageSize must be 4096 or 2097152, received 8192/,
    );
    expect(() => new FaultSession(3, { table: t, pageSize: 4096, regions: [] }, () => {})).toThrow(
      InvalidArgumentError,
    );
    try {
      new ChunkTable(-1, 4096);
    } catch (e) {
      expect(e).toMatchObject({ code: 'LAZYSNAP_INVALID_ARGUMENT', argument: 'totalSize' });
    }
  });

  it('the addon itself refuses malformed calls with a TypeError coded LAZYSNAP_INVALID_ARGUMENT', () => {
    const a = addon();
    const t = a.tableCreate(1 << 20, 65536);
    const bad = [
      () => a.tableCreate(1 << 20, 5000),
      () => a.tablePut({} as never, 0, Buffer.alloc(1)),
      () => a.uffdCopy(-1, 0n, Buffer.alloc(4096)),
      () => a.uffdZeropage(3, 4097n, 4096),
      () => a.mmapAnonymous(4095, false),
      () =>
        a.sessionCreate(
          3,
          { table: t, pageSize: 4096, regions: [{ base: 4096n, size: 8192, offset: 1 << 20 }] },
          () => {},
        ),
      () =>
        a.sessionCreate(
          3,
          { table: t, pageSize: 4096, regions: [{ base: 1n, size: 4096, offset: 0 }] },
          () => {},
        ),
      () => a.kill(0, 9),
      () => a.sockListen('x'.repeat(200), 1),
    ];
    for (const f of bad) {
      let err: unknown;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err, f.toString()).toBeInstanceOf(TypeError);
      expect((err as { code: string }).code).toBe('LAZYSNAP_INVALID_ARGUMENT');
    }
  });
});
