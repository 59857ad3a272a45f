/**
 * Generators of bad input for the fuzz properties (properties.ts). JSON is built as a tree and
 * rendered here rather than through JSON.stringify of generated objects, so the text can hold what
 * hostile JSON holds and objects cannot: duplicate keys, "__proto__" as a key, numbers that parse to
 * Infinity, and keys such as "toString" that break code which interpolates parsed values.
 */
import fc from 'fast-check';

/** A JSON document as a tree; `raw` is text spliced in verbatim (e.g. `1e400`, `-0`). */
export type Json =
  | { t: 'obj'; entries: [string, Json][] }
  | { t: 'arr'; items: Json[] }
  | { t: 'raw'; text: string }
  | { t: 'val'; v: string | number | boolean | null };

export function render(j: Json): string {
  switch (j.t) {
    case 'obj':
      return `{${j.entries.map(([k, v]) => `${JSON.stringify(k)}:${render(v)}`).join(',')}}`;
    case 'arr':
      return `[${j.items.map(render).join(',')}]`;
    case 'raw':
      return j.text;
    case 'val':
      return JSON.stringify(j.v);
  }
}

/** A plain value (objects and arrays included) as a tree, for building valid documents. */
export function toTree(v: unknown): Json {
  if (Array.isArray(v)) return { t: 'arr', items: v.map(toTree) };
  if (v !== null && typeof v === 'object')
    return { t: 'obj', entries: Object.entries(v).map(([k, x]) => [k, toTree(x)]) };
  return { t: 'val', v: v as string | number | boolean | null };
}

/** Keys that code reading parsed JSON trips over: prototype names, conversion hooks, lengths. */
export const NASTY_KEYS = [
  '__proto__',
  'toString',
  'valueOf',
  'constructor',
  'toJSON',
  'hasOwnProperty',
  'length',
  'then',
  'name',
];

/** Numbers at and around every limit the parsers check. */
export const nastyNumber: fc.Arbitrary<Json> = fc.oneof(
  fc
    .constantFrom(
      0,
      1,
      -1,
      4095,
      4096,
      4097,
      8192,
      2097152,
      2 ** 31,
      2 ** 32,
      2 ** 53 - 1,
      2 ** 53,
      2 ** 64,
      1.5,
      -4096,
      1e308,
    )
    .map((v): Json => ({ t: 'val', v })),
  fc
    .constantFrom(
      '1e400',
      '-1e400',
      '-0',
      '0.0',
      '4096.0',
      '4.096e3',
      '1E3',
      '9007199254740993',
      '1' + '0'.repeat(400),
    )
    .map((text): Json => ({ t: 'raw', text })),
  fc.integer().map((v): Json => ({ t: 'val', v })),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((v): Json => ({ t: 'val', v })),
  fc.nat(1 << 20).map((n): Json => ({ t: 'val', v: n * 4096 })),
);

export const nastyString: fc.Arbitrary<string> = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
  fc.constantFrom(
    '',
    '..',
    '.',
    '/',
    '\0',
    '%2e%2e',
    '\\',
    'lazysnap/1',
    'lazysnap/2',
    'lazysnap/1.9',
    'none',
    'zstd',
    '0x',
    '0x1000',
    'a'.repeat(300),
  ),
);

/** A key: usually one the target reads (`fields`), sometimes a nasty or random one. */
function keyArb(fields: readonly string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fields.length ? fc.constantFrom(...fields) : fc.string({ maxLength: 8 }) },
    { weight: 2, arbitrary: fc.constantFrom(...NASTY_KEYS) },
    { weight: 1, arbitrary: fc.string({ maxLength: 8 }) },
  );
}

/** Any JSON tree, keys biased to `fields` and the nasty ones. */
export function jsonTree(fields: readonly string[] = [], maxDepth = 4): fc.Arbitrary<Json> {
  const { tree } = fc.letrec<{ tree: Json }>((tie) => ({
    tree: fc.oneof(
      { depthSize: 'small', maxDepth, withCrossShrink: true },
      fc.oneof(
        nastyNumber,
        nastyString.map((v): Json => ({ t: 'val', v })),
        fc.constantFrom<Json>({ t: 'val', v: true }, { t: 'val', v: false }, { t: 'val', v: null }),
      ),
      fc.array(tie('tree'), { maxLength: 5 }).map((items): Json => ({ t: 'arr', items })),
      fc
        .array(fc.tuple(keyArb(fields), tie('tree')), { maxLength: 6 })
        .map((entries): Json => ({ t: 'obj', entries })),
    ),
  }));
  return tree;
}

/** Paths into a tree: each step an index into an object's entries or an array's items. */
function nodeAt(j: Json, path: number[]): { parent: Json; index: number } | undefined {
  let cur = j;
  let found: { parent: Json; index: number } | undefined;
  for (const step of path) {
    const kids = cur.t === 'obj' ? cur.entries.length : cur.t === 'arr' ? cur.items.length : 0;
    if (kids === 0) break;
    const index = step % kids;
    found = { parent: cur, index };
    cur = cur.t === 'obj' ? cur.entries[index]![1] : (cur as { items: Json[] }).items[index]!;
  }
  return found;
}

const clone = (j: Json): Json => JSON.parse(JSON.stringify(j)) as Json;

/**
 * Structural mutations of a valid document: replace a value, delete or duplicate an entry, add an
 * entry (nasty keys included), swap in a nasty number. Applied 1–3 times at random places.
 */
export function mutateTree(valid: Json, fields: readonly string[]): fc.Arbitrary<Json> {
  const op = fc.oneof(
    fc.record({
      kind: fc.constant('replace' as const),
      path: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
      value: jsonTree(fields, 2),
    }),
    fc.record({
      kind: fc.constant('number' as const),
      path: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
      value: nastyNumber,
    }),
    fc.record({
      kind: fc.constant('delete' as const),
      path: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
    }),
    fc.record({
      kind: fc.constant('duplicate' as const),
      path: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
      value: jsonTree(fields, 1),
    }),
    fc.record({
      kind: fc.constant('add' as const),
      path: fc.array(fc.nat(), { maxLength: 5 }),
      key: keyArb(fields),
      value: jsonTree(fields, 2),
    }),
  );
  return fc.array(op, { minLength: 1, maxLength: 3 }).map((ops) => {
    const j = clone(valid);
    for (const o of ops) {
      if (o.kind === 'add') {
        const at = o.path.length ? nodeAt(j, o.path) : undefined;
        const target = at
          ? at.parent.t === 'obj'
            ? at.parent.entries[at.index]![1]
            : (at.parent as { items: Json[] }).items[at.index]!
          : j;
        if (target.t === 'obj') target.entries.push([o.key, o.value]);
        else if (target.t === 'arr') target.items.push(o.value);
        continue;
      }
      const at = nodeAt(j, o.path);
      if (!at) continue;
      const { parent, index } = at;
      if (parent.t === 'obj') {
        if (o.kind === 'delete') parent.entries.splice(index, 1);
        else if (o.kind === 'duplicate') parent.entries.push([parent.entries[index]![0], o.value]);
        else parent.entries[index]![1] = o.value;
      } else if (parent.t === 'arr') {
        if (o.kind === 'delete') parent.items.splice(index, 1);
        else if (o.kind === 'duplicate') parent.items.push(clone(parent.items[index]!));
        else parent.items[index] = o.value;
      }
    }
    return j;
  });
}

/** Byte-level damage to a document: truncate, flip, insert, splice in garbage or invalid UTF-8. */
export function mutateBytes(text: Buffer): fc.Arbitrary<Buffer> {
  const len = text.length;
  return fc.oneof(
    fc.nat(len).map((n) => text.subarray(0, n)),
    fc.tuple(fc.nat(Math.max(0, len - 1)), fc.integer({ min: 0, max: 255 })).map(([i, b]) => {
      const c = Buffer.from(text);
      if (c.length) c[i] = b;
      return c;
    }),
    fc
      .tuple(fc.nat(len), fc.uint8Array({ minLength: 1, maxLength: 16 }))
      .map(([i, ins]) => Buffer.concat([text.subarray(0, i), ins, text.subarray(i)])),
    fc
      .tuple(
        fc.nat(len),
        fc.constantFrom(
          '\0',
          '\uFFFD',
          '\uD800',
          ']',
          '}',
          ',',
          '"',
          '\\',
          '[',
          '{',
          'null',
          ' '.repeat(100),
        ),
      )
      .map(([i, s]) => Buffer.concat([text.subarray(0, i), Buffer.from(s), text.subarray(i)])),
    fc
      .constantFrom(Buffer.from([0xc3]), Buffer.from([0xff, 0xfe]), Buffer.from([0xed, 0xa0, 0x80]))
      .map((b) => Buffer.concat([text, b])),
  );
}

/** Deeply nested arrays/objects, closed or not: parsers with recursion limits choke here. */
export function deepNesting(maxDepth: number): fc.Arbitrary<Buffer> {
  return fc
    .tuple(fc.integer({ min: 1, max: maxDepth }), fc.constantFrom('[', '{"a":'), fc.boolean())
    .map(([d, open, closed]) => {
      const close = open === '[' ? ']' : '}';
      return Buffer.from(`${open.repeat(d)}${closed ? `0${close.repeat(d)}` : ''}`);
    });
}

/** Raw bytes, biased towards JSON punctuation so some of them get past the first character. */
export const junkBytes = (maxLength: number): fc.Arbitrary<Buffer> =>
  fc.oneof(
    fc.uint8Array({ maxLength }).map((a) => Buffer.from(a)),
    fc
      .array(fc.constantFrom(...'[]{}",:0123456789.eE-+ nulltruefalse\\'.split('')), { maxLength })
      .map((a) => Buffer.from(a.join(''))),
  );

/**
 * Hostile path-like strings for store ids, keys and CLI paths: traversal in every spelling,
 * absolute paths (under `outside`, so an escape lands where a test can see it), NUL, very long,
 * unicode look-alikes, backslashes, percent-encoding.
 */
export function hostilePath(outside: string): fc.Arbitrary<string> {
  const piece = fc.oneof(
    fc.constantFrom(
      '..',
      '.',
      '',
      '...',
      '%2e%2e',
      '%2E%2E',
      '%2f',
      '..%2f',
      '..\\',
      '\\..\\',
      '\0',
      'a\0b',
      '．．',
      '\u2024\u2024',
      '\u202e',
      'manifests',
      'chunks',
      'x.json',
      '~',
      '-',
      '_',
      'a',
      'vm',
      'CON',
      '.tmp-1',
    ),
    fc.string({ maxLength: 12 }),
    fc.string({ unit: 'binary', maxLength: 12 }),
    fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/),
  );
  return fc.oneof(
    {
      weight: 4,
      arbitrary: fc
        .array(piece, { minLength: 1, maxLength: 6 })
        .chain((ps) => fc.constantFrom('/', '\\').map((sep) => ps.join(sep))),
    },
    { weight: 1, arbitrary: fc.array(piece, { maxLength: 3 }).map((ps) => `${outside}/${ps.join('/')}`) },
    { weight: 1, arbitrary: fc.array(piece, { maxLength: 3 }).map((ps) => `../${ps.join('/')}`) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.integer({ min: 100, max: 5000 }), fc.constantFrom('a', '../', 'é', '/'))
        .map(([n, s]) => s.repeat(n)),
    },
    { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,130}$/) },
  );
}
