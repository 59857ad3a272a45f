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
import { compress } from 'zstd-napi';
import zstd from 'zstd-napi/binding.js';

import { IntegrityError, InvalidArgumentError } from '../core/errors.js';
import { SEAL_OVERHEAD, type ChunkCrypto } from './chunk-crypto.js';

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
 * The longest stored object that can hold a chunk of `length` bytes: zstd's worst case (incompressible
 * bytes) for zstd, the length itself for none, plus the seal of an encrypted snapshot. Backends refuse
 * anything longer before buffering it (ReadOptions.maxBytes): an origin that sends more is lying.
 */
export function maxStoredSize(codec: Codec, length: number, encrypted: boolean): number {
  return (codec === 'zstd' ? zstd.compressBound(length) : length) + (encrypted ? SEAL_OVERHEAD : 0);
}

/** One decompression context per thread, reused: creating one per chunk costs more than a small decode. */
let dctx: InstanceType<typeof zstd.DCtx> | undefined;

/**
 * Decodes a stored object and verifies it is the chunk `hash` of `length` bytes. Throws
 * IntegrityError on a hash or length mismatch, and on a decoder error (a corrupt object). With
 * `crypto` (an encrypted snapshot), the object is authenticated and decrypted first (IntegrityError
 * when that fails) and `hash` is the chunk's keyed id.
 *
 * Bounded: the object may come from an origin that lies (a 48 KB zstd frame can declare, and decode to,
 * gigabytes). A frame whose declared content size is not `length` is refused before decoding, and the
 * decoder writes into a buffer of exactly `length` bytes, so it fails as soon as the output would be
 * longer: nothing here allocates more than one chunk, whatever the object says. `into`, when given
 * (exactly `length` bytes), receives the chunk instead of a new buffer.
 */
export function decodeChunk(
  key: string,
  codec: Codec,
  stored: Uint8Array,
  hash: string,
  length: number,
  crypto?: ChunkCrypto,
  into?: Uint8Array,
  /** Filled with the time spent decoding (opening included) and verifying, in ms. */
  timing?: { decodeMs: number; verifyMs: number },
): Buffer {
  const t0 = timing ? performance.now() : 0;
  const encoded = crypto ? crypto.open(key, hash, stored) : stored;
  const out = into
    ? Buffer.from(into.buffer, into.byteOffset, into.length)
    : codec === 'none'
      ? undefined
      : Buffer.allocUnsafe(length);
  let bytes: Buffer;
  if (codec === 'none') {
    if (encoded.length !== length)
      throw new IntegrityError(key, 'stored object has the wrong length', {
        expected: length,
        actual: encoded.length,
      });
    bytes = out ? (out.set(encoded), out) : Buffer.from(encoded.buffer, encoded.byteOffset, encoded.length);
  } else {
    let declared: number | null;
    let n: number;
    try {
      declared = zstd.getFrameContentSize(encoded);
    } catch (cause) {
      throw new IntegrityError(key, 'not a zstd frame', { cause });
    }
    if (declared !== null && declared !== length)
      throw new IntegrityError(key, 'zstd frame declares another length', {
        expected: length,
        actual: declared,
      });
    try {
      n = (dctx ??= new zstd.DCtx()).decompress(out!, encoded);
    } catch (cause) {
      // "Destination buffer is too small" for an object that decodes to more than one chunk.
      throw new IntegrityError(key, `undecodable (${(cause as Error).message})`, { cause });
    }
    if (n !== length)
      throw new IntegrityError(key, 'decoded length differs', { expected: length, actual: n });
    bytes = out!;
  }
  const t1 = timing ? performance.now() : 0;
  const actual = crypto ? crypto.id(bytes) : hashChunk(bytes);
  if (timing) {
    timing.decodeMs = t1 - t0;
    timing.verifyMs = performance.now() - t1;
  }
  if (actual !== hash) throw new IntegrityError(key, 'content hash mismatch', { expected: hash, actual });
  return bytes;
}
