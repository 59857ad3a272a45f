/** Options of the host disk cache (runtime/disk-cache.ts), validated once at the boundary. */
import path from 'node:path';

import { InvalidArgumentError } from '../core/errors.js';
import { hashChunk } from '../store/chunk.js';

export interface DiskCacheOptions {
  /** Directory (created 0700 if missing; an existing directory keeps its mode). */
  dir: string;
  /** Byte budget; least recently used entries are evicted to stay under it. 0 caches nothing. */
  budgetBytes: number;
  /**
   * How an entry's name is computed from its bytes, and checked on every get and put. @default
   * BLAKE3 (hashChunk); an encrypted snapshot's keyed id (ChunkCrypto.id) for its chunks.
   */
  chunkId?: (bytes: Uint8Array) => string;
  /** Told of each failed write and each entry that failed verification (deleted); must not throw. @default none */
  onProblem?: (p: DiskCacheProblem) => void;
}

export type DiskCacheProblem =
  { kind: 'write-failed'; hash: string; error: unknown } | { kind: 'corrupt'; hash: string; path: string };

export type ResolvedDiskCacheOptions = Required<Omit<DiskCacheOptions, 'onProblem'>> &
  Pick<DiskCacheOptions, 'onProblem'>;

export function resolveDiskCacheOptions(options: DiskCacheOptions): ResolvedDiskCacheOptions {
  if (typeof options !== 'object' || options === null)
    throw new InvalidArgumentError('options', 'an object', options);
  const { dir, budgetBytes, chunkId, onProblem } = options;
  if (typeof dir !== 'string' || dir.length === 0)
    throw new InvalidArgumentError('dir', 'a non-empty directory path', dir);
  if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 0)
    throw new InvalidArgumentError('budgetBytes', 'a non-negative integer', budgetBytes);
  if (chunkId !== undefined && typeof chunkId !== 'function')
    throw new InvalidArgumentError('chunkId', 'a function from bytes to a 64-hex-digit id', chunkId);
  if (onProblem !== undefined && typeof onProblem !== 'function')
    throw new InvalidArgumentError('onProblem', 'a function', onProblem);
  return {
    dir: path.resolve(dir),
    budgetBytes,
    chunkId: chunkId ?? hashChunk,
    ...(onProblem ? { onProblem } : {}),
  };
}
