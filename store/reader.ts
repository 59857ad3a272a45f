/**
 * Reading snapshots back: the manifest (validated) and chunks (fetched, decoded, hash-verified).
 * The restore runtime layers caching and origin fallback on top; this is the plain path used by the
 * snapshotter (diff parents), inspect, gc and tests.
 */
import type { StoreBackend } from './backend.js';
import { decodeChunk } from './chunk.js';
import { chunkCodec, chunkHash, parseManifest, type SnapshotIndex } from './manifest.js';
import { chunkKey, manifestKey } from './keys.js';

export async function loadIndex(store: StoreBackend, id: string, signal?: AbortSignal): Promise<SnapshotIndex> {
  const raw = await store.get(manifestKey(id), { ...(signal ? { signal } : {}) });
  return parseManifest(raw, id);
}

export function chunkLength(ix: SnapshotIndex, i: number): number {
  const cs = ix.manifest.chunkSize;
  return Math.min(cs, ix.manifest.totalSize - i * cs);
}

/** The verified bytes of chunk i (zeros for a zero chunk). */
export async function readChunk(store: StoreBackend, ix: SnapshotIndex, i: number, signal?: AbortSignal): Promise<Buffer> {
  const len = chunkLength(ix, i);
  const hash = chunkHash(ix, i);
  if (hash === null) return Buffer.alloc(len);
  const codec = chunkCodec(ix, i)!;
  const key = chunkKey(hash, codec);
  return decodeChunk(key, codec, await store.get(key, { ...(signal ? { signal } : {}) }), hash, len);
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
