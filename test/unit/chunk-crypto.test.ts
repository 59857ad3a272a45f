/**
 * Chunk encryption and key material (store/chunk-crypto.ts, store/key-provider.ts): ids, sealing,
 * authentication failures, key parsing and the environment provider, manifest validation.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { IntegrityError, KeyUnavailableError, ManifestError, WrongKeyError } from '../../core/errors.js';
import { decodeChunk, encodeChunk, hashChunk } from '../../store/chunk.js';
import {
  ChunkCrypto,
  SEAL_OVERHEAD,
  keyCheckOf,
  openChunkCrypto,
  type EncryptionInfo,
} from '../../store/chunk-crypto.js';
import { envKeyProvider, parseKeyMaterial, staticKeyProvider } from '../../store/key-provider.js';
import {
  FORMAT,
  encodeChunks,
  parseManifest,
  serializeManifest,
  type Manifest,
} from '../../store/manifest.js';
import { tempDir } from '../helpers/images.js';

const K = Buffer.from('0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff', 'hex');
const K2 = Buffer.alloc(32, 7);
const chunk = (seed: number, n = 65536) => Buffer.alloc(n, seed).fill('lazysnap plaintext marker ', 0, 1024);

function catchErr(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('did not throw');
}

describe('chunk ids and sealing', () => {
  it('convergent: equal plaintexts give equal ids and byte-identical objects; ids are keyed, not plain BLAKE3', () => {
    const a = ChunkCrypto.create(K, 'convergent', 'k1');
    const b = ChunkCrypto.create(K, 'convergent', 'k1');
    const p = chunk(1);
    expect(a.id(p)).toBe(b.id(p));
    expect(a.id(p)).toMatch(/^[0-9a-f]{64}$/);
    expect(a.id(p)).not.toBe(hashChunk(p));
    expect(ChunkCrypto.create(K2, 'convergent', 'k1').id(p)).not.toBe(a.id(p));
    const id = a.id(p);
    expect(a.seal(id, p).equals(b.seal(id, p))).toBe(true);
    expect(a.seal(id, p).length).toBe(p.length + SEAL_OVERHEAD);
    // Different chunks get different keys and nonces: their nonce fields differ.
    const q = chunk(2);
    expect(a.seal(a.id(q), q).subarray(1, 13).equals(a.seal(id, p).subarray(1, 13))).toBe(false);
  });

  it('convergent: two encodings of one chunk (another codec or zstd level: same id, same key) never share a nonce', () => {
    const c = ChunkCrypto.create(K, 'convergent', 'k1');
    const plain = Buffer.alloc(64 * 1024, 7);
    const id = c.id(plain);
    const a = c.seal(id, plain); // codec none
    const b = c.seal(id, encodeChunk('zstd', plain)); // zstd
    const nonce = (o: Buffer) => o.subarray(1, 13).toString('hex');
    expect(nonce(a)).not.toBe(nonce(b));
    expect(c.seal(id, plain).equals(a)).toBe(true); // still deterministic: dedup holds
    expect(c.open('k', id, a).equals(plain)).toBe(true);
    expect(c.open('k', id, b).equals(encodeChunk('zstd', plain))).toBe(true);
  });

  it('random: snapshots are salted apart (ids and objects differ), each seal draws a fresh nonce', () => {
    const a = ChunkCrypto.create(K, 'random', 'k1');
    const b = ChunkCrypto.create(K, 'random', 'k1');
    const p = chunk(1);
    expect(a.info.salt).toMatch(/^[0-9a-f]{32}$/);
    expect(a.id(p)).not.toBe(b.id(p));
    const id = a.id(p);
    const s1 = a.seal(id, p);
    const s2 = a.seal(id, p);
    expect(s1.equals(s2)).toBe(false);
    expect(a.open('k', id, s1).equals(p)).toBe(true);
    expect(a.open('k', id, s2).equals(p)).toBe(true);
    // Reopened from its manifest entry with the same key, the snapshot's cipher is the same.
    const again = ChunkCrypto.forSnapshot(K, a.info, 'snapshot x');
    expect(again.id(p)).toBe(id);
    expect(again.open('k', id, s1).equals(p)).toBe(true);
  });

  it('the stored object never contains the plaintext', () => {
    const c = ChunkCrypto.create(K, 'convergent', 'k1');
    const p = chunk(3);
    const sealed = c.seal(c.id(p), encodeChunk('none', p));
    expect(sealed.includes(Buffer.from('lazysnap plaintext marker'))).toBe(false);
    expect(sealed.includes(p.subarray(2048, 2048 + 64))).toBe(false);
  });

  it.each([
    ['the version byte', 0],
    ['the nonce', 5],
    ['the ciphertext', 100],
    ['the tag', -1],
  ])('rejects an object with a flipped bit in %s (IntegrityError, no bytes returned)', (_name, at) => {
    for (const mode of ['convergent', 'random'] as const) {
      const c = ChunkCrypto.create(K, mode, 'k1');
      const p = chunk(4);
      const id = c.id(p);
      const sealed = c.seal(id, p);
      const i = at < 0 ? sealed.length + at : at;
      sealed[i]! ^= 0x01;
      const e = catchErr(() => c.open('chunks/ab/x', id, sealed));
      expect(e, mode).toBeInstanceOf(IntegrityError);
      expect(e).toMatchObject({ code: 'LAZYSNAP_INTEGRITY', key: 'chunks/ab/x' });
      expect((e as IntegrityError).reason).toMatch(/unauthentic|not an encrypted lazysnap object/);
    }
  });

  it('rejects a wrong key, an object moved to another id, and a truncated object', () => {
    for (const mode of ['convergent', 'random'] as const) {
      const c = ChunkCrypto.create(K, mode, 'k1');
      const wrong = ChunkCrypto.forSnapshot(K2, { ...c.info, keyCheck: keyCheckOf(K2) }, 'x');
      const p = chunk(5);
      const q = chunk(6);
      const id = c.id(p);
      const sealed = c.seal(id, p);
      expect(
        catchErr(() => wrong.open('k', id, sealed)),
        mode,
      ).toBeInstanceOf(IntegrityError);
      expect(
        catchErr(() => c.open('k', c.id(q), sealed)),
        mode,
      ).toBeInstanceOf(IntegrityError);
      expect(
        catchErr(() => c.open('k', id, sealed.subarray(0, 20))),
        mode,
      ).toBeInstanceOf(IntegrityError);
    }
  });

  it('decodeChunk authenticates, decompresses and checks the keyed id; a plain reader fails closed on ciphertext', () => {
    const c = ChunkCrypto.create(K, 'convergent', 'k1');
    const p = chunk(7);
    const id = c.id(p);
    const stored = c.seal(id, encodeChunk('zstd', p));
    expect(decodeChunk('k', 'zstd', stored, id, p.length, c).equals(p)).toBe(true);
    // Sealed bytes of another chunk under this id: authentic for their own id only.
    expect(catchErr(() => decodeChunk('k', 'zstd', stored, c.id(chunk(8)), p.length, c))).toBeInstanceOf(
      IntegrityError,
    );
    // A reader that ignores encryption: undecodable (zstd) or wrong length (none), never installed.
    expect(catchErr(() => decodeChunk('k', 'zstd', stored, id, p.length))).toBeInstanceOf(IntegrityError);
    expect(catchErr(() => decodeChunk('k', 'none', c.seal(id, p), id, p.length))).toBeInstanceOf(
      IntegrityError,
    );
  });

  it('refuses a key whose check does not match the snapshot (WrongKeyError) before any chunk is read', async () => {
    const c = ChunkCrypto.create(K, 'convergent', 'k1');
    expect(catchErr(() => ChunkCrypto.forSnapshot(K2, c.info, 'snapshot "vm"'))).toMatchObject({
      code: 'LAZYSNAP_WRONG_KEY',
      keyId: 'k1',
    });
    await expect(openChunkCrypto(c.info, staticKeyProvider({ k1: K2 }), 'x')).rejects.toBeInstanceOf(
      WrongKeyError,
    );
    await expect(openChunkCrypto(c.info, staticKeyProvider({ other: K }), 'x')).rejects.toBeInstanceOf(
      KeyUnavailableError,
    );
    expect((await openChunkCrypto(c.info, staticKeyProvider({ k1: K }), 'x')).id(chunk(1))).toBe(
      c.id(chunk(1)),
    );
  });

  it('holds no key material in anything a serializer can reach', () => {
    const c = ChunkCrypto.create(K, 'convergent', 'k1');
    const text = JSON.stringify({
      c,
      p: staticKeyProvider({ k1: K }),
      e: envKeyProvider({ LAZYSNAP_CHUNK_KEY: K.toString('hex') }),
    });
    expect(text).not.toContain(K.toString('hex'));
    expect(text).not.toContain(K.toString('base64'));
    expect(Object.keys(c)).toEqual(['info']);
  });
});

describe('key material', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => (tmp = tempDir()));
  afterEach(() => tmp.cleanup());

  it('parses 64 hex digits, base64 and base64url of 32 bytes, ignoring surrounding whitespace', () => {
    const k = randomBytes(32);
    for (const text of [
      k.toString('hex'),
      k.toString('hex').toUpperCase(),
      k.toString('base64'),
      k.toString('base64url'),
      `  ${k.toString('hex')}\n`,
    ]) {
      expect(parseKeyMaterial(text, 'X').equals(k)).toBe(true);
    }
  });

  it('rejects keys of the wrong size without quoting them', () => {
    for (const bad of [
      randomBytes(31).toString('hex'),
      randomBytes(16).toString('base64'),
      'correct horse battery staple',
      randomBytes(33).toString('base64'),
    ]) {
      const e = catchErr(() => parseKeyMaterial(bad, 'LAZYSNAP_CHUNK_KEY')) as Error;
      expect(e.message).toMatch(/LAZYSNAP_CHUNK_KEY must hold 32 bytes/);
      expect(e.message).not.toContain(bad.trim());
    }
  });

  it('the environment provider reads LAZYSNAP_CHUNK_KEY or LAZYSNAP_CHUNK_KEY_FILE, and honours LAZYSNAP_CHUNK_KEY_ID', async () => {
    const hex = K.toString('hex');
    expect((await envKeyProvider({ LAZYSNAP_CHUNK_KEY: hex }).getKey('any')).equals(K)).toBe(true);
    const file = path.join(tmp.dir, 'key');
    writeFileSync(file, `${K.toString('base64')}\n`, { mode: 0o600 });
    expect((await envKeyProvider({ LAZYSNAP_CHUNK_KEY_FILE: file }).getKey('any')).equals(K)).toBe(true);
    await expect(
      envKeyProvider({ LAZYSNAP_CHUNK_KEY: hex, LAZYSNAP_CHUNK_KEY_ID: 'prod' }).getKey('staging'),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_KEY_UNAVAILABLE',
      message: expect.stringMatching(/"staging".*"prod"/),
    });
    await expect(envKeyProvider({}).getKey('k')).rejects.toMatchObject({
      code: 'LAZYSNAP_KEY_UNAVAILABLE',
      message: expect.stringContaining('LAZYSNAP_CHUNK_KEY'),
    });
    await expect(
      envKeyProvider({ LAZYSNAP_CHUNK_KEY: hex, LAZYSNAP_CHUNK_KEY_FILE: file }).getKey('k'),
    ).rejects.toThrow(/set one/);
    const short = envKeyProvider({ LAZYSNAP_CHUNK_KEY: hex.slice(2) }).getKey('k');
    await expect(short).rejects.toBeInstanceOf(KeyUnavailableError);
    await expect(short).rejects.not.toThrow(hex.slice(2));
    await expect(
      envKeyProvider({ LAZYSNAP_CHUNK_KEY_FILE: path.join(tmp.dir, 'none') }).getKey('k'),
    ).rejects.toThrow(/ENOENT/);
  });
});

describe('the manifest records encryption', () => {
  function manifest(encryption: unknown): Buffer {
    const m: Manifest = {
      format: FORMAT,
      id: 'e',
      createdAt: '2026-11-25T00:00:00.000Z',
      source: { kind: 'raw' },
      pageSize: 4096,
      chunkSize: 65536,
      totalSize: 65536,
      regions: [{ offset: 0, size: 65536 }],
      parent: null,
      vmstate: null,
      chunks: encodeChunks(Buffer.alloc(32, 1), new Uint8Array([1]), ['zstd']),
      encryption: encryption as EncryptionInfo,
    };
    return serializeManifest(m);
  }

  it('round-trips a valid encryption field: algorithm, mode, key id and key check, never the key', () => {
    const c = ChunkCrypto.create(K, 'random', 'prod/2026');
    const text = manifest(c.info);
    expect(parseManifest(text).manifest.encryption).toEqual(c.info);
    expect(text.toString()).not.toContain(K.toString('hex'));
    expect(text.toString()).not.toContain(K.toString('base64'));
  });

  it.each([
    ['not an object', 'aes', 'encryption'],
    [
      'another algorithm',
      { alg: 'chacha20', mode: 'convergent', keyId: 'k', keyCheck: '0'.repeat(32) },
      'encryption.alg',
    ],
    [
      'an unknown mode',
      { alg: 'aes-256-gcm', mode: 'ecb', keyId: 'k', keyCheck: '0'.repeat(32) },
      'encryption.mode',
    ],
    [
      'a bad key id',
      { alg: 'aes-256-gcm', mode: 'convergent', keyId: '../k', keyCheck: '0'.repeat(32) },
      'encryption.keyId',
    ],
    [
      'a bad key check',
      { alg: 'aes-256-gcm', mode: 'convergent', keyId: 'k', keyCheck: 'xyz' },
      'encryption.keyCheck',
    ],
    [
      'random without salt',
      { alg: 'aes-256-gcm', mode: 'random', keyId: 'k', keyCheck: '0'.repeat(32) },
      'encryption.salt',
    ],
    [
      'convergent with salt',
      { alg: 'aes-256-gcm', mode: 'convergent', keyId: 'k', keyCheck: '0'.repeat(32), salt: '0'.repeat(32) },
      'encryption.salt',
    ],
  ])('rejects %s with ManifestError naming the field', (_n, enc, field) => {
    const e = catchErr(() => parseManifest(manifest(enc)));
    expect(e).toBeInstanceOf(ManifestError);
    expect(e).toMatchObject({ field });
  });
});
