/**
 * Manifest fuzzing: valid manifests round-trip encode → parse exactly; arbitrary bytes, arbitrary
 * JSON and damaged valid manifests are either accepted with every invariant intact or rejected with
 * ManifestError / UnsupportedFormatError, never a TypeError, RangeError or a hang.
 */
import fc from 'fast-check';

import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { main } from '../../cli/main.js';
import { CODECS, type Codec } from '../../store/chunk.js';
import {
  FORMAT,
  encodeChunks,
  parseManifest,
  serializeManifest,
  type Manifest,
  type SnapshotIndex,
} from '../../store/manifest.js';
import { tempDir } from '../helpers/images.js';
import { deepNesting, jsonTree, junkBytes, mutateBytes, mutateTree, render, toTree } from './arbitraries.js';
import {
  CaseClock,
  Tally,
  expectTyped,
  outcome,
  params,
  shown,
  type FuzzTarget,
  type Outcome,
  type RunOptions,
} from './target.js';

const FIELDS = [
  'format',
  'id',
  'createdAt',
  'source',
  'kind',
  'detail',
  'pageSize',
  'chunkSize',
  'totalSize',
  'regions',
  'offset',
  'size',
  'address',
  'parent',
  'vmstate',
  'key',
  'hash',
  'chunks',
  'hashes',
  'flags',
  'codecs',
];
const idArb = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$/);

/** A valid manifest from a model: regions end to end, chunk tables sized to the chunk count. */
export const validManifest: fc.Arbitrary<Manifest> = fc
  .record({
    pageSize: fc.constantFrom<4096 | 2097152>(4096, 2097152),
    chunkShift: fc.integer({ min: 0, max: 4 }),
    regionPages: fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 5 }),
    id: idArb,
    parent: fc.option(idArb, { nil: null }),
    codecs: fc.uniqueArray(fc.constantFrom<Codec>(...CODECS), { maxLength: CODECS.length }),
    seed: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    flagSeed: fc.array(fc.nat(255), { minLength: 1, maxLength: 64 }),
    vmstate: fc.option(
      fc.record({
        key: fc.constant('vmstate/x'),
        size: fc.nat(1 << 30),
        hash: fc.stringMatching(/^[0-9a-f]{64}$/),
      }),
      { nil: null },
    ),
    addresses: fc.boolean(),
    kind: fc.constantFrom<Manifest['source']['kind']>('memory-file', 'diff-file', 'process', 'raw'),
  })
  .map((r): Manifest => {
    const chunkSize = Math.max(4096, r.pageSize) * 2 ** r.chunkShift;
    let offset = 0;
    const regions = r.regionPages.map((p, i) => {
      const reg = {
        offset,
        size: p * r.pageSize,
        ...(r.addresses ? { address: `0x${(0x7f0000000000 + i * 0x10000000).toString(16)}` } : {}),
      };
      offset += reg.size;
      return reg;
    });
    const count = Math.ceil(offset / chunkSize);
    const hashes = Buffer.alloc(count * 32);
    for (let i = 0; i < hashes.length; i++) hashes[i] = r.seed[i % 32]! ^ (i * 7);
    const flags = new Uint8Array(count).map(
      (_, i) => r.flagSeed[i % r.flagSeed.length]! % (r.codecs.length + 1),
    );
    return {
      format: FORMAT,
      id: r.id,
      createdAt: new Date(0).toISOString(),
      source: { kind: r.kind },
      pageSize: r.pageSize,
      chunkSize,
      totalSize: offset,
      regions,
      parent: r.parent,
      vmstate: r.vmstate,
      chunks: encodeChunks(hashes, flags, r.codecs),
    };
  });

/** The promises an accepted manifest keeps, checked independently of the parser. */
function checkIndex(ix: SnapshotIndex): string | undefined {
  const m = ix.manifest;
  if (ix.count !== Math.ceil(m.totalSize / m.chunkSize))
    return `count ${ix.count} for ${m.totalSize}/${m.chunkSize}`;
  if (ix.hashes.length !== ix.count * 32 || ix.flags.length !== ix.count)
    return 'chunk tables of the wrong size';
  if (ix.flags.some((f) => f > m.chunks.codecs.length)) return 'a flag names an unlisted codec';
  let next = 0;
  for (const r of m.regions) {
    if (r.offset !== next || !(r.size > 0) || r.size % m.pageSize)
      return `region ${JSON.stringify(r)} breaks the layout`;
    next += r.size;
  }
  if (next !== m.totalSize || m.totalSize % m.pageSize || m.chunkSize % m.pageSize)
    return 'sizes do not add up';
  return undefined;
}

const CODES = ['LAZYSNAP_BAD_MANIFEST', 'LAZYSNAP_UNSUPPORTED_FORMAT'];

export const manifestRoundTrip: FuzzTarget = {
  name: 'manifest.roundtrip',
  surface: 'manifest encode → parse round trip (valid manifests)',
  weight: 8,
  quickRuns: 200,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const prop = fc.property(validManifest, (m) => {
      const ix = clock.time(() => parseManifest(serializeManifest(m), m.id));
      const back = JSON.stringify(ix.manifest);
      if (back !== JSON.stringify(m))
        throw new Error(`round trip changed the manifest:\n${JSON.stringify(m)}\n${back}`);
      if (
        !ix.hashes.equals(Buffer.from(m.chunks.hashes, 'base64')) ||
        !Buffer.from(ix.flags).equals(Buffer.from(m.chunks.flags, 'base64'))
      )
        throw new Error('chunk tables changed');
      const bad = checkIndex(ix);
      if (bad) throw new Error(bad);
    });
    return outcome(this.name, fc.check(prop, params(o)), clock);
  },
};

const badManifest = fc
  .oneof(
    {
      weight: 5,
      arbitrary: validManifest.chain((m) => mutateTree(toTree(m), FIELDS)).map((t) => Buffer.from(render(t))),
    },
    { weight: 3, arbitrary: validManifest.chain((m) => mutateBytes(serializeManifest(m))) },
    { weight: 2, arbitrary: jsonTree(FIELDS).map((t) => Buffer.from(render(t))) },
    { weight: 1, arbitrary: junkBytes(2048) },
    { weight: 1, arbitrary: deepNesting(100_000) },
  )
  .map(shown);

export const manifestParse: FuzzTarget = {
  name: 'manifest.parse',
  surface: 'manifest parse: arbitrary bytes, arbitrary JSON, damaged valid manifests',
  weight: 20,
  quickRuns: 500,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tally = new Tally();
    const prop = fc.property(badManifest, fc.option(idArb, { nil: undefined }), (bytes, expectedId) => {
      let ix: SnapshotIndex;
      try {
        ix = clock.time(() => parseManifest(bytes, expectedId));
      } catch (e) {
        expectTyped(e, CODES, 'parseManifest');
        tally.add((e as { code: string }).code.replace('LAZYSNAP_', ''));
        return;
      }
      tally.add('accepted');
      if (expectedId !== undefined && ix.manifest.id !== expectedId)
        throw new Error(`accepted id ${ix.manifest.id}, expected ${expectedId}`);
      const bad = checkIndex(ix);
      if (bad) throw new Error(bad);
    });
    return { ...outcome(this.name, fc.check(prop, params(o)), clock), notes: String(tally) };
  },
};

/** Messages that mean an internal error reached the user instead of a typed one. */
const INTERNAL =
  /Cannot read propert|Cannot convert|is not a function|is not defined|is not iterable|Maximum call stack|Invalid array length|Invalid string length|\[object Object\]/;

export const manifestInspect: FuzzTarget = {
  name: 'manifest.inspect',
  surface: 'damaged manifests in a file store, read by `lazysnap inspect` (text and --json)',
  weight: 7,
  quickRuns: 150,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tally = new Tally();
    const tmp = tempDir('lazysnap-fuzz-');
    mkdirSync(path.join(tmp.dir, 'manifests'));
    const file = path.join(tmp.dir, 'manifests', 'vm.json');
    const damaged = fc.oneof(
      validManifest
        .chain((m) => mutateTree(toTree({ ...m, id: 'vm' }), FIELDS))
        .map((t) => Buffer.from(render(t))),
      validManifest.chain((m) => mutateBytes(serializeManifest({ ...m, id: 'vm' }))),
    );
    const prop = fc.asyncProperty(damaged.map(shown), fc.boolean(), async (bytes, json) => {
      writeFileSync(file, bytes);
      let err = '';
      const code = await clock.timeAsync(() =>
        main(['inspect', '--store', tmp.dir, '--id', 'vm', ...(json ? ['--json'] : [])], {
          out: () => {},
          err: (s) => (err += s),
        }),
      );
      tally.add(`exit ${code}`);
      if (code !== 0 && code !== 1) throw new Error(`exit ${code}: ${err}`);
      if (code === 1 && (!/^lazysnap: [^\n]+\n$/.test(err) || INTERNAL.test(err)))
        throw new Error(`inspect failed without a clear error: ${JSON.stringify(err)}`);
    });
    try {
      return { ...outcome(this.name, await fc.check(prop, params(o)), clock), notes: String(tally) };
    } finally {
      tmp.cleanup();
    }
  },
};
