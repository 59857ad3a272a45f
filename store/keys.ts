/**
 * Store keys and snapshot ids. Every key is built here, and every externally supplied id is
 * checked here, so no backend ever sees '..', an absolute path, a NUL or a key that escapes its
 * prefix. Layout (docs/DESIGN.md): manifests/<id>.json (and its detached signature manifests/<id>.json.sig),
 * chunks/<2 hex>/<hash>[.<codec>], profiles/<id>, vmstate/<id>.
 */
import { InvalidArgumentError } from '../core/errors.js';

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const HASH = /^[0-9a-f]{64}$/;
const SEGMENT = /^[A-Za-z0-9._-]{1,255}$/;

/** Snapshot ids: 1–128 of [A-Za-z0-9._-], starting with a letter or digit, never '..'. */
export function assertSnapshotId(id: unknown, name = 'id'): asserts id is string {
  if (typeof id !== 'string' || !ID.test(id) || id.includes('..')) {
    throw new InvalidArgumentError(
      name,
      'a snapshot id of 1-128 characters [A-Za-z0-9._-] starting with a letter or digit, without ".."',
      id,
    );
  }
}

/** A relative key of safe segments: no empty, '.' or '..' segment, no leading '/', no NUL. */
export function assertKey(key: unknown): asserts key is string {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1024)
    throw new InvalidArgumentError('key', 'a store key of 1-1024 characters', key);
  for (const seg of key.split('/')) {
    if (!SEGMENT.test(seg) || seg === '.' || seg === '..')
      throw new InvalidArgumentError('key', 'relative segments of [A-Za-z0-9._-], none "." or ".."', key);
  }
}

export function assertHash(hash: unknown): asserts hash is string {
  if (typeof hash !== 'string' || !HASH.test(hash))
    throw new InvalidArgumentError('hash', 'a 64-digit lowercase hex BLAKE3 hash', hash);
}

export const manifestKey = (id: string): string => (assertSnapshotId(id), `manifests/${id}.json`);
/** The detached signature of manifestKey(id) (store/signing.ts). */
export const signatureKey = (id: string): string => `${manifestKey(id)}.sig`;
export const profileKey = (id: string): string => (assertSnapshotId(id), `profiles/${id}`);
export const vmstateKey = (id: string): string => (assertSnapshotId(id), `vmstate/${id}`);

/** chunks/<first 2 hex>/<hash>[.<codec>]: 256 fan-out directories keep listings and inodes sane. */
export function chunkKey(hash: string, codec: string): string {
  assertHash(hash);
  return `chunks/${hash.slice(0, 2)}/${hash}${codec === 'none' ? '' : `.${codec}`}`;
}

/**
 * A host disk cache entry's path under the cache's directory (runtime/disk-cache.ts): the plain chunk, named
 * by its hash, fanned out by its first byte. Read by the fetcher and, on the direct path, by a loader thread.
 */
export function cacheEntryKey(hash: string): string {
  assertHash(hash);
  return `${hash.slice(0, 2)}/${hash}`;
}

/** The inverse of chunkKey, for gc; undefined for keys that are not chunks. */
export function parseChunkKey(key: string): { hash: string; codec: string } | undefined {
  const m = /^chunks\/([0-9a-f]{2})\/([0-9a-f]{64})(?:\.([a-z0-9]+))?$/.exec(key);
  if (!m || !m[2]!.startsWith(m[1]!)) return undefined;
  return { hash: m[2]!, codec: m[3] ?? 'none' };
}
