/**
 * The behaviour every StoreBackend owes its callers, as one suite run against each backend with its
 * real peer (a directory, s3rver, nginx). `make` returns a store whose prefix is empty and private
 * to the test; `seed` (for read-only stores) writes an object behind the store's back.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';

import {
  IntegrityError,
  InvalidArgumentError,
  NotFoundError,
  StoreReadOnlyError,
} from '../../core/errors.js';
import type { StoreBackend } from '../../store/backend.js';

export interface ContractTarget {
  store: StoreBackend;
  /** Writes key=body so that `store` can read it (the store itself for writable ones). */
  seed(key: string, body: Buffer): Promise<void>;
  cleanup(): Promise<void>;
  /** False for stores that cannot enumerate (plain HTTP origins): list() must then reject. */
  canList?: boolean;
}

async function collect(it: AsyncIterable<{ key: string; size: number }>): Promise<Map<string, number>> {
  const m = new Map<string, number>();
  for await (const o of it) m.set(o.key, o.size);
  return m;
}

export function storeContract(
  name: string,
  make: () => Promise<ContractTarget>,
  opts: { skip?: string } = {},
): void {
  describe.skipIf(!!opts.skip)(`${name} store contract${opts.skip ? ` [SKIPPED: ${opts.skip}]` : ''}`, () => {
    const withTarget = (f: (t: ContractTarget) => Promise<void>) => async () => {
      const t = await make();
      try {
        await f(t);
      } finally {
        await t.cleanup();
      }
    };

    it(
      'reads back what was stored',
      withTarget(async (t) => {
        const body = randomBytes(300_000);
        await t.seed('chunks/ab/obj', body);
        expect((await t.store.get('chunks/ab/obj')).equals(body)).toBe(true);
        expect(await t.store.has('chunks/ab/obj')).toBe(true);
        expect(await t.store.has('chunks/ab/other')).toBe(false);
      }),
    );

    it(
      'reads an object of up to maxBytes whole and refuses a longer one with IntegrityError',
      withTarget(async (t) => {
        const body = randomBytes(300_000);
        await t.seed('chunks/ab/obj', body);
        await t.seed('chunks/ab/empty', Buffer.alloc(0));
        for (const maxBytes of [300_000, 300_001, Number.MAX_SAFE_INTEGER])
          expect((await t.store.get('chunks/ab/obj', { maxBytes })).equals(body), `${maxBytes}`).toBe(true);
        expect((await t.store.get('chunks/ab/empty', { maxBytes: 0 })).length).toBe(0);
        for (const maxBytes of [299_999, 4096, 0]) {
          const e = await t.store.get('chunks/ab/obj', { maxBytes }).catch((x: unknown) => x);
          expect(e, `${maxBytes}`).toBeInstanceOf(IntegrityError);
          expect(e).toMatchObject({
            code: 'LAZYSNAP_INTEGRITY',
            key: 'chunks/ab/obj',
            expected: `at most ${maxBytes} bytes`,
            actual: '300000 bytes',
          });
          expect(e).not.toHaveProperty('retryable', true);
        }
        // The refusal leaves the store usable: the same object still reads with room for it.
        expect((await t.store.get('chunks/ab/obj', { maxBytes: 300_000 })).equals(body)).toBe(true);
      }),
    );

    it(
      'refuses a maxBytes that is not a safe integer >= 0 before touching the backend',
      withTarget(async (t) => {
        for (const maxBytes of [-1, 1.5, Number.NaN, Infinity, 2 ** 53, '10' as unknown as number]) {
          const e = await t.store.get('chunks/ab/obj', { maxBytes }).catch((x: unknown) => x);
          expect(e, String(maxBytes)).toBeInstanceOf(InvalidArgumentError);
          expect(e).toMatchObject({ code: 'LAZYSNAP_INVALID_ARGUMENT', argument: 'maxBytes' });
        }
      }),
    );

    it(
      'reports a missing object as NotFoundError with the key',
      withTarget(async (t) => {
        const e = await t.store.get('manifests/nope.json').catch((x: unknown) => x);
        expect(e).toBeInstanceOf(NotFoundError);
        expect(e).toMatchObject({ code: 'LAZYSNAP_NOT_FOUND', key: 'manifests/nope.json' });
      }),
    );

    it(
      'lists by prefix with sizes (or refuses to, where the protocol cannot)',
      withTarget(async (t) => {
        if (t.canList === false) {
          await expect(collect(t.store.list('chunks/'))).rejects.toMatchObject({
            code: 'LAZYSNAP_STORE_ERROR',
          });
          return;
        }
        await t.seed('chunks/00/a', Buffer.alloc(10));
        await t.seed('chunks/01/b', Buffer.alloc(20));
        await t.seed('manifests/m.json', Buffer.from('{}'));
        expect(await collect(t.store.list('chunks/'))).toEqual(
          new Map([
            ['chunks/00/a', 10],
            ['chunks/01/b', 20],
          ]),
        );
        expect((await collect(t.store.list(''))).size).toBe(3);
        expect((await collect(t.store.list('profiles/'))).size).toBe(0);
      }),
    );

    it(
      'refuses unsafe keys before touching the backend',
      withTarget(async (t) => {
        for (const key of ['../etc/passwd', '/abs', 'a//b', 'a/./b', 'nul\0byte', '', 'x'.repeat(2000)]) {
          await expect(t.store.get(key)).rejects.toBeInstanceOf(InvalidArgumentError);
        }
      }),
    );

    it(
      'rejects at once with the signal reason when already aborted',
      withTarget(async (t) => {
        const reason = new Error('stop');
        await expect(t.store.get('chunks/ab/obj', { signal: AbortSignal.abort(reason) })).rejects.toBe(
          reason,
        );
      }),
    );

    it(
      'writes atomically and overwrites, or refuses writes when read-only',
      withTarget(async (t) => {
        if (!t.store.writable) {
          await expect(t.store.put('chunks/aa/x', Buffer.alloc(1))).rejects.toBeInstanceOf(
            StoreReadOnlyError,
          );
          await expect(t.store.delete('chunks/aa/x')).rejects.toBeInstanceOf(StoreReadOnlyError);
          return;
        }
        await t.store.put('vmstate/s1', Buffer.from('one'));
        await t.store.put('vmstate/s1', Buffer.from('two!'));
        expect((await t.store.get('vmstate/s1')).toString()).toBe('two!');
        expect(await collect(t.store.list('vmstate/'))).toEqual(new Map([['vmstate/s1', 4]]));
        await t.store.delete('vmstate/s1');
        await t.store.delete('vmstate/s1'); // deleting what is gone is not an error
        expect(await t.store.has('vmstate/s1')).toBe(false);
      }),
    );
  });
}
