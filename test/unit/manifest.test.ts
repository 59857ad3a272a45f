import { randomBytes } from 'node:crypto';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { Compressor } from 'zstd-napi';

import { ManifestError, UnsupportedFormatError } from '../../core/errors.js';
import { decodeChunk, encodeChunk, hashChunk, isZero, maxStoredSize } from '../../store/chunk.js';
import { FileStore } from '../../store/file-store.js';
import { assertKey, chunkKey, parseChunkKey } from '../../store/keys.js';
import {
  FORMAT,
  chunkCodec,
  chunkHash,
  encodeChunks,
  parseManifest,
  serializeManifest,
  type Manifest,
} from '../../store/manifest.js';
import { readChunk } from '../../store/reader.js';
import { tempDir } from '../helpers/images.js';

function manifest(over: Partial<Manifest> = {}): Manifest {
  const n = 4;
  const hashes = Buffer.alloc(n * 32);
  const flags = new Uint8Array([1, 0, 2, 1]);
  for (const i of [0, 2, 3]) hashes.write(hashChunk(Buffer.from([i])), i * 32, 'hex');
  return {
    format: FORMAT,
    id: 'snap-1',
    createdAt: '2026-11-25T00:00:00.000Z',
    source: { kind: 'memory-file' },
    pageSize: 4096,
    chunkSize: 65536,
    totalSize: 4 * 65536,
    regions: [
      { offset: 0, size: 3 * 65536 },
      { offset: 3 * 65536, size: 65536, address: '0x7f0000000000' },
    ],
    parent: null,
    vmstate: null,
    chunks: encodeChunks(hashes, flags, ['zstd', 'none']),
    ...over,
  };
}

describe('manifest lazysnap/1', () => {
  it('round-trips and exposes per-chunk hash and codec (null for zero chunks)', () => {
    const ix = parseManifest(serializeManifest(manifest()), 'snap-1');
    expect(ix.count).toBe(4);
    expect(chunkHash(ix, 1)).toBeNull();
    expect(chunkCodec(ix, 1)).toBeNull();
    expect(chunkHash(ix, 2)).toBe(hashChunk(Buffer.from([2])));
    expect([0, 2, 3].map((i) => chunkCodec(ix, i))).toEqual(['zstd', 'none', 'zstd']);
    expectTypeOf(ix.manifest.pageSize).toEqualTypeOf<4096 | 2097152>();
  });

  it('accepts minor versions and rejects other majors with UnsupportedFormatError', () => {
    expect(parseManifest(serializeManifest(manifest({ format: 'lazysnap/1.7' }))).count).toBe(4);
    const e = (() => {
      try {
        parseManifest(serializeManifest(manifest({ format: 'lazysnap/2' })));
      } catch (x) {
        return x;
      }
    })();
    expect(e).toBeInstanceOf(UnsupportedFormatError);
    expect(e).toMatchObject({ code: 'LAZYSNAP_UNSUPPORTED_FORMAT', format: 'lazysnap/2' });
  });

  it.each([
    ['not JSON', '{', '(document)'],
    ['an array', '[]', '(document)'],
    ['a foreign format', JSON.stringify(manifest({ format: 'other/1' })), 'format'],
    ['a bad id', JSON.stringify(manifest({ id: '../x' })), 'id'],
    ['page size 12345', JSON.stringify(manifest({ pageSize: 12345 as 4096 })), 'pageSize'],
    ['a chunk size not a power of two', JSON.stringify(manifest({ chunkSize: 65536 * 3 })), 'chunkSize'],
    [
      'a gap between regions',
      JSON.stringify(
        manifest({
          regions: [
            { offset: 0, size: 65536 },
            { offset: 131072, size: 131072 },
          ],
        }),
      ),
      'regions[1].offset',
    ],
    [
      'regions short of totalSize',
      JSON.stringify(manifest({ regions: [{ offset: 0, size: 65536 }] })),
      'regions',
    ],
    [
      'an unaligned region',
      JSON.stringify(manifest({ regions: [{ offset: 0, size: 100 }] })),
      'regions[0].size',
    ],
    [
      'a bad address',
      JSON.stringify(manifest({ regions: [{ offset: 0, size: 4 * 65536, address: '12' }] })),
      'regions[0].address',
    ],
    [
      'too few hashes',
      JSON.stringify(
        manifest({ chunks: { ...manifest().chunks, hashes: Buffer.alloc(64).toString('base64') } }),
      ),
      'chunks.hashes',
    ],
    [
      'an unknown codec',
      JSON.stringify(manifest({ chunks: { ...manifest().chunks, codecs: ['zstd', 'lz4' as 'none'] } })),
      'chunks.codecs',
    ],
    [
      'a flag naming no codec',
      JSON.stringify(manifest({ chunks: { ...manifest().chunks, codecs: ['zstd'] } })),
      'chunks.flags',
    ],
  ])('rejects %s, naming the field', (_name, text, field) => {
    let err: unknown;
    try {
      parseManifest(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ManifestError);
    expect(err).toMatchObject({ code: 'LAZYSNAP_BAD_MANIFEST', field });
  });

  it('rejects a manifest stored under another id', () => {
    expect(() => parseManifest(serializeManifest(manifest()), 'other')).toThrow(
      /id: is "snap-1", expected "other"/,
    );
  });
});

describe('chunks and keys', () => {
  it('hashes uncompressed bytes, detects zero without allocating, and verifies on decode', () => {
    const bytes = Buffer.alloc(65536, 3);
    const h = hashChunk(bytes);
    expect(h).toMatch(/^[0-9a-f]{64}$/);
    expect(isZero(Buffer.alloc(65536))).toBe(true);
    expect(isZero(Buffer.concat([Buffer.alloc(65535), Buffer.from([1])]))).toBe(false);
    const z = encodeChunk('zstd', bytes);
    expect(z.length).toBeLessThan(1000);
    expect(decodeChunk('k', 'zstd', z, h, 65536).equals(bytes)).toBe(true);
    expect(() =>
      decodeChunk(
        'k',
        'zstd',
        z,
        h.replace(/^./, (c) => (c === '0' ? '1' : '0')),
        65536,
      ),
    ).toThrow(/content hash mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)/);
    expect(() => decodeChunk('k', 'zstd', Buffer.from('garbage'), h, 65536)).toThrow(
      expect.objectContaining({ code: 'LAZYSNAP_INTEGRITY' }),
    );
    expect(() => decodeChunk('k', 'none', bytes.subarray(1), h, 65536)).toThrow(
      /stored object has the wrong length \(expected 65536, got 65535\)/,
    );
  });

  it('decodes a zstd bomb to at most one chunk: refused by its declared size, or when the output would pass the length', () => {
    // 48 KB that decode to 1.5 GiB of zeros: the object. With the size in the frame header it
    // is refused before decoding; without it the decoder stops at the chunk's length.
    const c = new Compressor();
    const huge = Buffer.alloc(1536 * 1024 * 1024);
    const declared = encodeChunk('zstd', huge);
    c.setParameters({ contentSizeFlag: false });
    const undeclared = c.compress(huge);
    expect(undeclared.length).toBeLessThan(64 * 1024);
    const h = hashChunk(Buffer.alloc(65536));
    const before = process.memoryUsage().rss;
    const t0 = performance.now();
    expect(() => decodeChunk('k', 'zstd', declared, h, 65536)).toThrow(
      /zstd frame declares another length \(expected 65536, got 1610612736\)/,
    );
    expect(() => decodeChunk('k', 'zstd', undeclared, h, 65536)).toThrow(
      expect.objectContaining({ code: 'LAZYSNAP_INTEGRITY', message: expect.stringMatching(/undecodable/) }),
    );
    // One chunk's work, not 1.5 GiB of it: well under what decoding the whole frame takes (~1 s here).
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(process.memoryUsage().rss - before).toBeLessThan(64 * 1024 * 1024);
  });

  it('lays chunks out as chunks/<2 hex>/<hash>[.codec] and parses them back', () => {
    const h = hashChunk(Buffer.from('x'));
    expect(chunkKey(h, 'zstd')).toBe(`chunks/${h.slice(0, 2)}/${h}.zstd`);
    expect(chunkKey(h, 'none')).toBe(`chunks/${h.slice(0, 2)}/${h}`);
    expect(parseChunkKey(chunkKey(h, 'zstd'))).toEqual({ hash: h, codec: 'zstd' });
    expect(parseChunkKey(`chunks/zz/${h}`)).toBeUndefined();
    expect(() => chunkKey('ABC', 'none')).toThrow(/64-digit lowercase hex/);
    expect(() => assertKey('a/../b')).toThrow();
  });
});

describe('reading chunks from a store (store/reader.ts)', () => {
  it('asks the store for at most what a chunk can be stored as, so a longer object is refused unread', async () => {
    const tmp = tempDir('lazysnap-reader-');
    try {
      const store = new FileStore(tmp.dir);
      const bytes = [randomBytes(65536), randomBytes(65536)];
      const hashes = Buffer.concat(bytes.map((b) => Buffer.from(hashChunk(b), 'hex')));
      const ix = parseManifest(
        serializeManifest(
          manifest({
            totalSize: 2 * 65536,
            regions: [{ offset: 0, size: 2 * 65536 }],
            chunks: encodeChunks(hashes, new Uint8Array([1, 2]), ['zstd', 'none']),
          }),
        ),
      );
      const keys = [chunkKey(hashChunk(bytes[0]!), 'zstd'), chunkKey(hashChunk(bytes[1]!), 'none')];
      await store.put(keys[0]!, encodeChunk('zstd', bytes[0]!));
      await store.put(keys[1]!, bytes[1]!);
      const asked: (number | undefined)[] = [];
      const get = store.get.bind(store);
      store.get = (key, options) => (asked.push(options?.maxBytes), get(key, options));
      expect((await readChunk(store, ix, 0)).equals(bytes[0]!)).toBe(true);
      expect((await readChunk(store, ix, 1)).equals(bytes[1]!)).toBe(true);
      expect(asked).toEqual([maxStoredSize('zstd', 65536, false), 65536]);

      // One byte too many: the store's refusal, not the decoder's, so the object was never buffered.
      await store.put(keys[1]!, Buffer.concat([bytes[1]!, Buffer.from([0])]));
      await expect(readChunk(store, ix, 1)).rejects.toMatchObject({
        code: 'LAZYSNAP_INTEGRITY',
        reason: 'object is longer than maxBytes',
        expected: 'at most 65536 bytes',
      });
    } finally {
      tmp.cleanup();
    }
  });
});
