/**
 * Chunk identity and encoding. A chunk is named by the BLAKE3 hash of its uncompressed bytes, so the
 * same bytes are stored and cached once across snapshots and hosts whatever codec stored them.
 * Codecs: 'none' and 'zstd' (level configurable). Decoding always checks the hash before the bytes
 * are used: corrupt or substituted objects never reach memory.
 *
 * Encrypted snapshots (store/chunk-crypto.ts) name chunks by a keyed BLAKE3 instead, and their
 * objects are the encoded bytes sealed with AES-256-GCM: decoding then authenticates and decrypts
 * first, and checks the keyed hash of the result.
 */
import { blake3 } from '@napi-rs/blake-hash';
import { compress, decompress } from 'zstd-napi';

import { IntegrityError, InvalidArgumentError } from '../core/errors.js';
import type { ChunkCrypto } from './chunk-crypto.js';

export const CODECS = ['none', 'zstd'] as const;
export type Codec = (typeof CODECS)[number];

export function assertCodec(v: unknown, name = 'codec'): asserts v is Codec {
  if (!CODECS.includes(v as Codec)) throw new InvalidArgumentError(name, `one of ${CODECS.join(', ')}`, v);
}

/** BLAKE3-256 of the bytes, lowercase hex. */
export function hashChunk(bytes: Uint8Array): string {
  return blake3(bytes).toString('hex');
}

let zeros = Buffer.alloc(0);
/** Whether every byte is zero, with no allocation after the first call at a size (a memcmp). */
export function isZero(bytes: Uint8Array): boolean {
  if (zeros.length < bytes.length) zeros = Buffer.alloc(bytes.length);
  return Buffer.compare(bytes, zeros.subarray(0, bytes.length)) === 0;
}

export interface EncodeOptions {
  /** zstd level: 1 (fast, ~1 GB/s here) to 19. @default 1 */
  level?: number;
}

export function encodeChunk(codec: Codec, bytes: Uint8Array, options: EncodeOptions = {}): Buffer {
  if (codec === 'none') return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  return compress(bytes, { compressionLevel: options.level ?? 1 });
}

/**
 * Decodes a stored object and verifies it is the chunk `hash` of `length` bytes. Throws
 * IntegrityError on a hash or length mismatch, and on a decoder error (a corrupt object). With
 * `crypto` (an encrypted snapshot), the object is authenticated and decrypted first (IntegrityError
 * when that fails) and `hash` is the chunk's keyed id.
 */
export function decodeChunk(
  key: string,
  codec: Codec,
  stored: Uint8Array,
  hash: string,
  length: number,
  crypto?: ChunkCrypto,
): Buffer {
  const encoded = crypto ? crypto.open(key, hash, stored) : stored;
  let bytes: Buffer;
  try {
    bytes =
      codec === 'none'
        ? Buffer.from(encoded.buffer, encoded.byteOffset, encoded.length)
        : decompress(encoded);
  } catch (e) {
    throw Object.assign(new IntegrityError(key, hash, 'undecodable'), { cause: e });
  }
  if (bytes.length !== length)
    throw new IntegrityError(key, hash, `${bytes.length} bytes instead of ${length}`);
  const actual = crypto ? crypto.id(bytes) : hashChunk(bytes);
  if (actual !== hash) throw new IntegrityError(key, hash, actual);
  return bytes;
}
