/**
 * Reading snapshots back: the manifest (signature-checked when a verify key is given, validated)
 * and chunks (fetched, decrypted when encrypted, decoded, hash-verified). The restore runtime
 * layers caching and origin fallback on top; this is the plain path used by the snapshotter (diff
 * parents), inspect, gc and tests.
 */
import type { KeyObject } from 'node:crypto';

import { KeyUnavailableError, NotFoundError } from '../core/errors.js';
import type { StoreBackend } from './backend.js';
import { decodeChunk, maxStoredSize } from './chunk.js';
import { openChunkCrypto, type ChunkCrypto } from './chunk-crypto.js';
import type { KeyProvider } from './key-provider.js';
import { chunkCodec, chunkHash, parseManifest, type SnapshotIndex } from './manifest.js';
import { chunkKey, manifestKey, signatureKey } from './keys.js';
import { verifyManifest } from './signing.js';

export interface LoadIndexOptions {
  /**
   * Ed25519 public key: the manifest must carry a detached signature by it (store/signing.ts), or
   * loading fails with SignatureError before the manifest is parsed.
   */
  verifyKey?: KeyObject;
  /**
   * Where the key of an encrypted snapshot comes from. Given, the index carries the snapshot's
   * cipher (`crypto`), after the key is checked against the manifest (WrongKeyError). Not given,
   * an encrypted snapshot still loads (inspect and gc need no key) but its chunks cannot be read.
   */
  keys?: KeyProvider;
}

export async function loadIndex(
  store: StoreBackend,
  id: string,
  signal?: AbortSignal,
  options: LoadIndexOptions = {},
): Promise<SnapshotIndex> {
  const opt = signal ? { signal } : {};
  let raw: Buffer;
  if (options.verifyKey) {
    const [m, sig] = await Promise.all([
      store.get(manifestKey(id), opt),
      store.get(signatureKey(id), opt).catch((e: unknown) => {
        if (e instanceof NotFoundError) return undefined;
        throw e;
      }),
    ]);
    verifyManifest(id, m, sig, options.verifyKey);
    raw = m;
  } else {
    raw = await store.get(manifestKey(id), opt);
  }
  const ix = parseManifest(raw, id);
  const enc = ix.manifest.encryption;
  if (enc && options.keys)
    ix.crypto = await openChunkCrypto(enc, options.keys, `snapshot ${JSON.stringify(id)}`, signal);
  return ix;
}

export function chunkLength(ix: SnapshotIndex, i: number): number {
  const cs = ix.manifest.chunkSize;
  return Math.min(cs, ix.manifest.totalSize - i * cs);
}

/** The cipher of an encrypted index; KeyUnavailableError when it was loaded without keys. */
export function indexCrypto(ix: SnapshotIndex): ChunkCrypto | undefined {
  const enc = ix.manifest.encryption;
  if (enc && !ix.crypto)
    throw new KeyUnavailableError(
      enc.keyId,
      `snapshot ${JSON.stringify(ix.manifest.id)} is encrypted and was loaded without a key provider`,
    );
  return ix.crypto;
}

/** The verified bytes of chunk i (zeros for a zero chunk). */
export async function readChunk(
  store: StoreBackend,
  ix: SnapshotIndex,
  i: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  const len = chunkLength(ix, i);
  const hash = chunkHash(ix, i);
  if (hash === null) return Buffer.alloc(len);
  const crypto = indexCrypto(ix);
  const codec = chunkCodec(ix, i)!;
  const key = chunkKey(hash, codec);
  // The store refuses an object longer than the chunk can be stored as before buffering it: the
  // object may come from an origin that lies (a diff's parent read over HTTP).
  const maxBytes = maxStoredSize(codec, len, crypto !== undefined);
  const stored = await store.get(key, { maxBytes, ...(signal ? { signal } : {}) });
  return decodeChunk(key, codec, stored, hash, len, crypto);
}

/** The verified vmstate of a snapshot (decrypted when the snapshot is encrypted), or undefined. */
export async function readVmstate(
  store: StoreBackend,
  ix: SnapshotIndex,
  signal?: AbortSignal,
): Promise<Buffer | undefined> {
  const v = ix.manifest.vmstate;
  if (!v) return undefined;
  const crypto = indexCrypto(ix);
  const maxBytes = maxStoredSize('none', v.size, crypto !== undefined);
  const stored = await store.get(v.key, { maxBytes, ...(signal ? { signal } : {}) });
  return decodeChunk(v.key, 'none', stored, v.hash, v.size, crypto);
}

/** Every distinct stored chunk key a snapshot references. */
export function chunkKeys(ix: SnapshotIndex): Set<string> {
  const keys = new Set<string>();
  for (let i = 0; i < ix.count; i++) {
    const h = chunkHash(ix, i);
    if (h !== null) keys.add(chunkKey(h, chunkCodec(ix, i)!));
  }
  return keys;
}
