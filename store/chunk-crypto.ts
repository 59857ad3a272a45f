/**
 * Client-side chunk encryption (AES-256-GCM). The snapshotter encrypts each encoded (compressed)
 * chunk before upload; the runtime decrypts, decodes and verifies before any byte is installed.
 * Stores, caches in front of them and anyone who can list a bucket see ciphertext and names that
 * say nothing about the plaintext without the key.
 *
 * Everything derives from one 32-byte key K (see key-provider.ts) with HKDF-SHA256:
 *   keyCheck = HKDF(K, salt = "", "lazysnap/1 key check")[0..16]   (recorded: tells a wrong key)
 *   idKey    = HKDF(K, salt, "lazysnap/1 chunk id")
 *   encKey   = HKDF(K, salt, "lazysnap/1 chunk encryption")
 * salt is empty in convergent mode and 16 random bytes per snapshot in random mode.
 *
 * Chunk identity: the 32-byte value the manifest holds per chunk, which names the stored object, is
 * BLAKE3 keyed with idKey over the plaintext (not the plain BLAKE3 an unencrypted snapshot uses).
 * Without the key nobody can compute it, so the store's names and the manifest do not let a reader
 * confirm a guessed chunk (the attack plain convergent encryption is open to); and it is still a
 * hash of the plaintext, checked after decryption exactly like the plain BLAKE3 is.
 *
 * Modes:
 * - convergent: each distinct chunk gets its own key and nonce, HKDF(encKey, salt = id), so equal
 *   plaintexts under one K give byte-identical objects under one name: dedup across snapshots and
 *   hosts keeps working, and concurrent writers of a chunk write the same bytes. Leaks to a store
 *   reader which chunks are equal (within and across snapshots of that K), never what they are.
 * - random: ids and keys are salted per snapshot and each object gets a random 96-bit nonce under
 *   the snapshot's encKey, so snapshots share nothing (no dedup across snapshots; a chunk repeated
 *   within one snapshot is still stored once). At most 2^32 objects per snapshot (NIST's bound for
 *   random GCM nonces), far above the 131,072 chunks of a 64 GiB snapshot.
 *
 * Object layout: version byte 0x01 | nonce (12) | ciphertext | GCM tag (16). The additional
 * authenticated data is "lazysnap/1 chunk\0" and the 32-byte id, so an object is bound to its name.
 * Compression happens before encryption, so an object's size tells how compressible the chunk
 * was; use --compress none where even that matters.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';
import { Blake3Hasher } from '@napi-rs/blake-hash';

import { IntegrityError, ManifestError, WrongKeyError } from '../core/errors.js';
import { KEY_BYTES, isKeyId, type KeyProvider } from './key-provider.js';

export const ENCRYPTION_ALG = 'aes-256-gcm';
export const ENCRYPTION_MODES = ['convergent', 'random'] as const;
export type EncryptionMode = (typeof ENCRYPTION_MODES)[number];

/** The manifest's `encryption` field: how the chunks were encrypted, and with which key. */
export interface EncryptionInfo {
  alg: typeof ENCRYPTION_ALG;
  mode: EncryptionMode;
  /** The name a KeyProvider resolves; never the key. */
  keyId: string;
  /** 32 hex digits derived from the key: a wrong key is refused before any chunk is fetched. */
  keyCheck: string;
  /** random mode only: 32 hex digits, this snapshot's salt. */
  salt?: string;
}

const VERSION = 1;
const NONCE = 12;
const TAG = 16;
/** Bytes an encrypted object adds to its encoded chunk. */
export const SEAL_OVERHEAD = 1 + NONCE + TAG;
const AAD_PREFIX = Buffer.from('lazysnap/1 chunk\0');
const EMPTY = Buffer.alloc(0);

function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, length));
}

/** The key check recorded in manifests: identifies a key without revealing anything about it. */
export function keyCheckOf(key: Uint8Array): string {
  return hkdf(key, EMPTY, 'lazysnap/1 key check', 16).toString('hex');
}

/** Validates a manifest's `encryption` field (ManifestError naming the field otherwise). */
export function validateEncryptionInfo(e: unknown): asserts e is EncryptionInfo {
  const bad = (field: string, msg: string) => new ManifestError(`encryption${field}`, msg);
  if (e === null || typeof e !== 'object' || Array.isArray(e)) throw bad('', 'must be an object');
  const x = e as Record<string, unknown>;
  if (x.alg !== ENCRYPTION_ALG)
    throw bad('.alg', `must be ${JSON.stringify(ENCRYPTION_ALG)}, is ${JSON.stringify(x.alg)}`);
  if (!ENCRYPTION_MODES.includes(x.mode as EncryptionMode))
    throw bad('.mode', `must be one of ${ENCRYPTION_MODES.join(', ')}`);
  if (!isKeyId(x.keyId)) throw bad('.keyId', 'must be 1-128 characters of [A-Za-z0-9._:/-]');
  if (typeof x.keyCheck !== 'string' || !/^[0-9a-f]{32}$/.test(x.keyCheck))
    throw bad('.keyCheck', 'must be 32 lowercase hex digits');
  if (
    x.mode === 'random' ? typeof x.salt !== 'string' || !/^[0-9a-f]{32}$/.test(x.salt) : x.salt !== undefined
  ) {
    throw bad(
      '.salt',
      x.mode === 'random'
        ? 'must be 32 lowercase hex digits in random mode'
        : 'must be absent in convergent mode',
    );
  }
}

/** A ChunkCrypto's derived keys as posted to a worker thread (toTransfer / fromTransfer). */
export interface ChunkCryptoTransfer {
  info: EncryptionInfo;
  idKey: Uint8Array;
  encKey: Uint8Array;
}

/**
 * One snapshot's chunk cipher. Holds derived keys only, in #private fields (never serialized,
 * never logged); the key K itself is not kept.
 */
export class ChunkCrypto {
  readonly info: EncryptionInfo;
  readonly #idKey: Buffer;
  readonly #encKey: Buffer;
  readonly #convergent: boolean;

  private constructor(info: EncryptionInfo, idKey: Buffer, encKey: Buffer) {
    this.info = Object.freeze({ ...info });
    this.#idKey = idKey;
    this.#encKey = encKey;
    this.#convergent = info.mode === 'convergent';
  }

  static #derive(key: Uint8Array, info: EncryptionInfo): ChunkCrypto {
    if (key.length !== KEY_BYTES) throw new RangeError(`a chunk key is ${KEY_BYTES} bytes`);
    const salt = info.salt ? Buffer.from(info.salt, 'hex') : EMPTY;
    return new ChunkCrypto(
      info,
      hkdf(key, salt, 'lazysnap/1 chunk id', 32),
      hkdf(key, salt, 'lazysnap/1 chunk encryption', 32),
    );
  }

  /**
   * The derived keys, for a thread of this process that decodes chunks (runtime/chunk-loader.ts): posted
   * to a worker, never written anywhere. The key K itself is not among them.
   */
  toTransfer(): ChunkCryptoTransfer {
    return { info: this.info, idKey: Buffer.from(this.#idKey), encKey: Buffer.from(this.#encKey) };
  }

  static fromTransfer(t: ChunkCryptoTransfer): ChunkCrypto {
    validateEncryptionInfo(t.info);
    return new ChunkCrypto(t.info, Buffer.from(t.idKey), Buffer.from(t.encKey));
  }

  /** For a new snapshot: random mode draws its salt here. */
  static create(key: Uint8Array, mode: EncryptionMode, keyId: string): ChunkCrypto {
    const info: EncryptionInfo = { alg: ENCRYPTION_ALG, mode, keyId, keyCheck: keyCheckOf(key) };
    if (mode === 'random') info.salt = randomBytes(16).toString('hex');
    validateEncryptionInfo(info);
    return ChunkCrypto.#derive(key, info);
  }

  /** For an existing snapshot; `what` names it in the WrongKeyError a mismatched key gets. */
  static forSnapshot(key: Uint8Array, info: EncryptionInfo, what: string): ChunkCrypto {
    if (
      key.length !== KEY_BYTES ||
      !timingSafeEqual(Buffer.from(keyCheckOf(key), 'hex'), Buffer.from(info.keyCheck, 'hex'))
    ) {
      throw new WrongKeyError(info.keyId, what);
    }
    return ChunkCrypto.#derive(key, info);
  }

  /** The chunk's id (64 hex): BLAKE3 keyed with idKey. Replaces hashChunk for encrypted snapshots. */
  id(plaintext: Uint8Array): string {
    return Blake3Hasher.newKeyed(this.#idKey).update(plaintext).digest('hex');
  }

  /** The object stored under `id`: the encoded chunk, encrypted and bound to its id. */
  seal(id: string, encoded: Uint8Array): Buffer {
    const idBytes = Buffer.from(id, 'hex');
    const key = this.#convergent ? this.#chunkKey(idBytes) : this.#encKey;
    // Convergent: the nonce is a MAC of the bytes sealed (SIV-style), so equal encodings give equal
    // objects (dedup) while two encodings of one chunk (another codec or zstd level, which share the
    // id and so the key) never share a nonce.
    const nonce = this.#convergent
      ? createHmac('sha256', key).update(encoded).digest().subarray(0, NONCE)
      : randomBytes(NONCE);
    const c = createCipheriv('aes-256-gcm', key, nonce);
    c.setAAD(Buffer.concat([AAD_PREFIX, idBytes]));
    const body = c.update(encoded);
    const fin = c.final();
    return Buffer.concat([Buffer.of(VERSION), nonce, body, fin, c.getAuthTag()]);
  }

  /**
   * The encoded chunk inside the object stored under `id`. Throws IntegrityError when the object is
   * not one (too short, unknown version) or fails authentication (another key, altered bytes, an
   * object moved from another name): the fetcher then tries the next origin, as for corrupt bytes.
   * No byte of an unauthenticated object is returned.
   */
  open(objectKey: string, id: string, stored: Uint8Array): Buffer {
    if (stored.length < SEAL_OVERHEAD || stored[0] !== VERSION)
      throw new IntegrityError(objectKey, 'not an encrypted lazysnap object');
    const s = Buffer.from(stored.buffer, stored.byteOffset, stored.length);
    const idBytes = Buffer.from(id, 'hex');
    const nonce = s.subarray(1, 1 + NONCE);
    const key = this.#convergent ? this.#chunkKey(idBytes) : this.#encKey;
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(Buffer.concat([AAD_PREFIX, idBytes]));
    d.setAuthTag(s.subarray(s.length - TAG));
    const body = d.update(s.subarray(1 + NONCE, s.length - TAG));
    try {
      return Buffer.concat([body, d.final()]);
    } catch {
      body.fill(0); // unauthenticated plaintext: wiped, never handed out
      throw new IntegrityError(
        objectKey,
        'unauthentic (AES-GCM tag check failed: another key, or altered bytes)',
      );
    }
  }

  /** Convergent mode: a key of this chunk's own, derived from its id. */
  #chunkKey(idBytes: Buffer): Buffer {
    return hkdf(this.#encKey, idBytes, 'lazysnap/1 convergent chunk', KEY_BYTES);
  }
}

/** The cipher of an existing encrypted snapshot, with its key from `keys` (checked against keyCheck). */
export async function openChunkCrypto(
  info: EncryptionInfo,
  keys: KeyProvider,
  what: string,
  signal?: AbortSignal,
): Promise<ChunkCrypto> {
  signal?.throwIfAborted();
  const key = await keys.getKey(info.keyId, signal);
  return ChunkCrypto.forSnapshot(key, info, what);
}
