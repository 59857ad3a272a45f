/**
 * Store ids, keys and URLs from hostile strings ('..' in every spelling, absolute paths, NUL, very
 * long, unicode, backslashes, %2e%2e). Every operation is either refused with a typed error or
 * lands strictly inside the store root, checked on the real filesystem: the store root sits in a
 * sandbox next to an `outside` directory that absolute-path keys aim at, and after every case
 * nothing may exist in the sandbox but the root's tree and an empty `outside`.
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';

import fc from 'fast-check';

import {
  assertKey,
  assertSnapshotId,
  chunkKey,
  manifestKey,
  profileKey,
  vmstateKey,
} from '../../store/keys.js';
import { FileStore } from '../../store/file-store.js';
import { openStore } from '../../store/open.js';
import { tempDir } from '../helpers/images.js';
import { hostilePath } from './arbitraries.js';
import {
  CaseClock,
  Tally,
  expectTyped,
  outcome,
  params,
  type FuzzTarget,
  type Outcome,
  type RunOptions,
} from './target.js';

const KEY_BUILDERS: Record<string, (s: string) => string> = {
  raw: (s) => s,
  manifest: (s) => manifestKey(s),
  profile: (s) => profileKey(s),
  vmstate: (s) => vmstateKey(s),
  chunk: (s) => chunkKey(s, 'zstd'),
  prefixed: (s) => `manifests/${s}`,
};

/** The id rules, restated independently of keys.ts's regex. */
function idOk(s: string): boolean {
  return (
    s.length >= 1 &&
    s.length <= 128 &&
    [...s].every((c) => /[A-Za-z0-9._-]/.test(c)) &&
    /[A-Za-z0-9]/.test(s[0]!) &&
    !s.includes('..')
  );
}

function escapes(sandbox: string, root: string): string | undefined {
  const extra = readdirSync(sandbox).filter((n) => n !== 'root' && n !== 'outside');
  if (extra.length)
    return `created outside the store root: ${extra.map((n) => path.join(sandbox, n)).join(', ')}`;
  const out = readdirSync(path.join(sandbox, 'outside'));
  if (out.length) return `created outside the store root: ${path.join(sandbox, 'outside', out[0]!)}`;
  return existsSync(root) ? undefined : 'the store root vanished';
}

export const storeKeys: FuzzTarget = {
  name: 'store.keys',
  surface: 'store ids and keys on a real file store (put/get/has/delete/list)',
  weight: 10,
  quickRuns: 300,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tmp = tempDir('lazysnap-fuzz-');
    const sandbox = tmp.dir;
    const root = path.join(sandbox, 'root');
    mkdirSync(root);
    mkdirSync(path.join(sandbox, 'outside'));
    const store = new FileStore(root);
    const tally = new Tally();
    const op = fc.constantFrom('put', 'get', 'has', 'delete', 'list', 'id');
    const prop = fc.asyncProperty(
      hostilePath(path.join(sandbox, 'outside')),
      fc.constantFrom(...Object.keys(KEY_BUILDERS)),
      op,
      async (s, builder, which) => {
        if (which === 'id') {
          let ok = true;
          try {
            assertSnapshotId(s);
          } catch (e) {
            expectTyped(e, ['LAZYSNAP_INVALID_ARGUMENT'], 'assertSnapshotId');
            ok = false;
          }
          tally.add(ok ? 'id accepted' : 'id refused');
          if (ok !== idOk(s))
            throw new Error(`assertSnapshotId ${ok ? 'accepted' : 'refused'} ${JSON.stringify(s)}`);
          return;
        }
        let key: string;
        try {
          key = KEY_BUILDERS[builder]!(s);
          if (which !== 'list') assertKey(key);
        } catch (e) {
          expectTyped(e, ['LAZYSNAP_INVALID_ARGUMENT'], `building a ${builder} key`);
          key = builder === 'raw' ? s : `manifests/${s}`; // the store itself must refuse it too
        }
        const dest = path.resolve(root, ...key.split('/'));
        let done = false;
        try {
          await clock.timeAsync(async () => {
            if (which === 'put') await store.put(key, Buffer.from('x'));
            else if (which === 'get') await store.get(key);
            else if (which === 'has') await store.has(key);
            else if (which === 'delete') await store.delete(key);
            else for await (const _ of store.list(key)) void _;
          });
          done = true;
          tally.add(`${which} done`);
        } catch (e) {
          expectTyped(
            e,
            ['LAZYSNAP_INVALID_ARGUMENT', 'LAZYSNAP_NOT_FOUND', 'LAZYSNAP_STORE_ERROR'],
            `store.${which}`,
          );
          tally.add(`${which} ${(e as { code: string }).code.replace('LAZYSNAP_', '')}`);
        }
        if (done && which !== 'list' && !dest.startsWith(`${root}${path.sep}`))
          throw new Error(`store.${which} accepted ${JSON.stringify(key)}, which resolves to ${dest}`);
        if (done && which === 'put' && !existsSync(dest))
          throw new Error(`store.put(${JSON.stringify(key)}) wrote somewhere other than ${dest}`);
        const esc = escapes(sandbox, root);
        if (esc) throw new Error(`${esc} (after store.${which}(${JSON.stringify(key)}))`);
      },
    );
    try {
      return { ...outcome(this.name, await fc.check(prop, params(o)), clock), notes: String(tally) };
    } finally {
      tmp.cleanup();
    }
  },
};

const urlArb = (outside: string): fc.Arbitrary<string> =>
  fc.oneof(
    hostilePath(outside),
    hostilePath(outside).map((p) => `file://${p}`),
    fc
      .tuple(
        fc.constantFrom('file://', 'FILE://', 'file:', 'file:///', 'file://host/', 'file://localhost/'),
        hostilePath(outside),
      )
      .map(([a, b]) => `${a}${b}`),
    fc
      .tuple(
        fc.constantFrom(
          's3://',
          'S3://',
          's3:///',
          's3://a@b/',
          's3://bucket/',
          's3://bucket?x=1/',
          's3://127.0.0.1/',
        ),
        hostilePath(outside),
      )
      .map(([a, b]) => `${a}${b}`),
    fc
      .tuple(
        fc.constantFrom(
          'http://',
          'https://',
          'http://127.0.0.1:9/',
          'http://[::1]/',
          'http://u:p@127.0.0.1/',
          'http:/',
          'ftp://',
        ),
        hostilePath(outside),
      )
      .map(([a, b]) => `${a}${b}`),
    fc.constantFrom(
      '',
      ' ',
      '\0',
      'file://',
      's3://',
      'http://',
      'file:///dev/null',
      'file:///%00',
      'file:///a%2fb',
      'x://y',
    ),
  );

export const storeUrls: FuzzTarget = {
  name: 'store.urls',
  surface: 'store URLs (openStore: paths, file://, s3://, http(s)://, other schemes)',
  weight: 5,
  quickRuns: 200,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tmp = tempDir('lazysnap-fuzz-');
    // Opening a store never touches the network or the disk; nothing here is read or written.
    const prop = fc.asyncProperty(urlArb(path.join(tmp.dir, 'outside')), async (url) => {
      let s;
      try {
        s = await clock.timeAsync(() => openStore(url, { s3Endpoint: 'http://127.0.0.1:9' }));
      } catch (e) {
        expectTyped(
          e,
          ['LAZYSNAP_INVALID_URL', 'LAZYSNAP_INVALID_ARGUMENT'],
          `openStore(${JSON.stringify(url)})`,
        );
        return;
      }
      await s.close();
    });
    try {
      return outcome(this.name, await fc.check(prop, params(o)), clock);
    } finally {
      tmp.cleanup();
    }
  },
};
