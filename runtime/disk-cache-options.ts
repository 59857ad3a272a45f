/** Options of the host disk cache (runtime/disk-cache.ts), validated once at the boundary. */
import path from 'node:path';

import { InvalidArgumentError } from '../core/errors.js';
import { ChunkLoader } from './chunk-loader.js';

export interface DiskCacheOptions {
  /** Directory (created 0700 if missing; an existing directory keeps its mode). */
  dir: string;
  /** Byte budget; least recently used entries are evicted to stay under it. 0 caches nothing. */
  budgetBytes: number;
  /**
   * The loader threads that read entries into the table (and check them: BLAKE3, or an encrypted
   * snapshot's keyed id) and write entries from it.
   */
  loader: ChunkLoader;
  /** How often reads are recorded as the entries' mtimes (batched, not one utimes per read). @default 5000 */
  touchIntervalMs?: number;
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
  const { dir, budgetBytes, loader, onProblem, touchIntervalMs = 5000 } = options;
  if (typeof dir !== 'string' || dir.length === 0)
    throw new InvalidArgumentError('dir', 'a non-empty directory path', dir);
  if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 0)
    throw new InvalidArgumentError('budgetBytes', 'a non-negative integer', budgetBytes);
  if (!(loader instanceof ChunkLoader)) throw new InvalidArgumentError('loader', 'a ChunkLoader', loader);
  if (!Number.isSafeInteger(touchIntervalMs) || touchIntervalMs < 1)
    throw new InvalidArgumentError('touchIntervalMs', 'a positive integer', touchIntervalMs);
  if (onProblem !== undefined && typeof onProblem !== 'function')
    throw new InvalidArgumentError('onProblem', 'a function', onProblem);
  return {
    dir: path.resolve(dir),
    budgetBytes,
    loader,
    touchIntervalMs,
    ...(onProblem ? { onProblem } : {}),
  };
}
