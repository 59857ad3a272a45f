/**
 * Garbage collection: mark every chunk that any manifest references, sweep the chunks nobody does.
 * A chunk younger than the grace period is kept even when unreferenced, because a snapshot in
 * progress uploads its chunks before its manifest (the manifest is the commit point) and must not
 * lose them to a concurrent gc. In a directory store, the temp files of writes that never finished
 * (a crashed or killed snapshotter) are removed too, with the same grace period: a write in
 * progress has one. A manifest that cannot be read stops the sweep: deleting on an
 * incomplete mark would delete live chunks.
 */
import type { StoreBackend } from '../store/backend.js';
import { FileStore } from '../store/file-store.js';
import { parseChunkKey } from '../store/keys.js';
import { chunkKeys, loadIndex } from '../store/reader.js';

export interface GcOptions {
  store: StoreBackend;
  /** Report what would be deleted without deleting. */
  dryRun?: boolean;
  /** Unreferenced chunks newer than this are kept. @default 3_600_000 (1 hour) */
  graceMs?: number;
  /** For tests: the current time. @default Date.now() */
  now?: number;
  signal?: AbortSignal;
}

export interface GcResult {
  manifests: number;
  referencedChunks: number;
  /** Unreferenced chunks deleted (or, with dryRun, that would be). */
  deleted: string[];
  deletedBytes: number;
  /** Unreferenced chunks kept because they are younger than the grace period. */
  keptYoung: number;
  /**
   * A directory store's temp files older than the grace period, left by writes that never finished:
   * deleted (or, with dryRun, that would be). Empty for other stores, which write atomically.
   */
  deletedTemp: string[];
}

export async function collectGarbage(options: GcOptions): Promise<GcResult> {
  const { store, signal } = options;
  const graceMs = options.graceMs ?? 3_600_000;
  const now = options.now ?? Date.now();
  const opt = signal ? { signal } : {};
  const live = new Set<string>();
  let manifests = 0;
  for await (const o of store.list('manifests/', opt)) {
    const m = /^manifests\/(.+)\.json$/.exec(o.key);
    if (!m) continue;
    const ix = await loadIndex(store, m[1]!, signal); // throws: never sweep on a partial mark
    for (const k of chunkKeys(ix)) live.add(k);
    manifests++;
  }
  const result: GcResult = {
    manifests,
    referencedChunks: live.size,
    deleted: [],
    deletedBytes: 0,
    keptYoung: 0,
    deletedTemp: [],
  };
  for await (const o of store.list('chunks/', opt)) {
    if (live.has(o.key) || !parseChunkKey(o.key)) continue;
    if (now - o.mtimeMs < graceMs) {
      result.keptYoung++;
      continue;
    }
    if (!options.dryRun) await store.delete(o.key, opt);
    result.deleted.push(o.key);
    result.deletedBytes += o.size;
  }
  if (store instanceof FileStore) {
    for await (const o of store.listTemp(signal)) {
      if (now - o.mtimeMs < graceMs) continue;
      if (!options.dryRun) await store.deleteTemp(o.key);
      result.deletedTemp.push(o.key);
    }
  }
  result.deleted.sort();
  result.deletedTemp.sort();
  return result;
}
