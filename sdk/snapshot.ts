/**
 * The snapshotter as an API: one call from a source (a memory file, a Firecracker diff file, or a
 * live process) to a snapshot in a store. `lazysnap snapshot` is a thin shell over it.
 */
import { readFile } from 'node:fs/promises';

import { InvalidArgumentError, SourceError } from '../core/errors.js';
import {
  createSnapshot,
  type SnapshotOptions,
  type SnapshotProgress,
  type SnapshotSummary,
} from '../snapshotter/snapshot.js';
import type { MemorySource } from '../snapshotter/source.js';
import { openMemoryFile } from '../snapshotter/source.js';
import type { StoreBackend } from '../store/backend.js';
import type { Codec } from '../store/chunk.js';
import { openStore } from '../store/open.js';

export type { SnapshotProgress, SnapshotSummary };

/** A Firecracker memory file (full), or with `parent` set on the request, a diff snapshot's file. */
export interface MemoryFileSource {
  memoryFile: string;
  /** Region sizes laid end to end (Firecracker: one per guest memory region). @default one region */
  regions?: number[];
  /** 2 MiB for hugepage-backed guests (chunk size must then be a multiple of 2 MiB). @default 4096 */
  pageSize?: 4096 | 2097152;
}

/** A live process, held with SIGSTOP while its memory is copied. */
export interface ProcessSource {
  pid: number;
  /**
   * Which private writable mappings: `heap`, `stack`, `anon`, a path substring, or an address range
   * `0xSTART-0xEND` (just that part). @default all of them
   */
  maps?: string[];
}

export interface SnapshotRequest {
  /** A store URL (file://, s3://, a directory path) or an open store. */
  store: string | StoreBackend;
  id: string;
  source: MemoryFileSource | ProcessSource;
  /** For a diff memory file: the snapshot whose unchanged chunks this one reuses. */
  parent?: string;
  /** A Firecracker vmstate file, stored with the snapshot (the platform restore loads it). */
  vmstateFile?: string;
  /** @default 512 KiB */
  chunkSize?: number;
  /** @default 'zstd' */
  codec?: Codec;
  /** zstd level 1-19. @default 1 */
  level?: number;
  /** Chunks in flight (memory ~ 2 x concurrency x chunk size). @default 8 */
  concurrency?: number;
  /** For s3:// stores on S3-compatible servers. @default env AWS_ENDPOINT_URL_S3 */
  s3Endpoint?: string;
  /** Client-side chunk encryption (AES-256-GCM), see SnapshotOptions.encrypt and docs/FORMAT.md. */
  encrypt?: SnapshotOptions['encrypt'];
  /** An Ed25519 private key: the manifest gets a detached signature that serve --verify-key checks. */
  signKey?: SnapshotOptions['signKey'];
  signal?: AbortSignal;
  onProgress?: (p: SnapshotProgress) => void;
}

async function openSource(req: SnapshotRequest): Promise<MemorySource> {
  const src = req.source as Partial<MemoryFileSource & ProcessSource>;
  if ((src.memoryFile === undefined) === (src.pid === undefined))
    throw new InvalidArgumentError('source', 'exactly one of { memoryFile } or { pid }', Object.keys(src));
  if (src.pid !== undefined) {
    if (req.parent !== undefined)
      throw new InvalidArgumentError('parent', 'only with a memoryFile source (a diff snapshot)', req.parent);
    const { openProcess } = await import('../snapshotter/process-source.js');
    return openProcess(src.pid, {
      ...(src.maps ? { filters: src.maps } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
    });
  }
  return openMemoryFile(src.memoryFile!, {
    pageSize: src.pageSize ?? 4096,
    diff: req.parent !== undefined,
    ...(src.regions ? { regions: src.regions } : {}),
  });
}

/** Snapshots `source` into `store` as `id`; the manifest is written last. */
export async function snapshot(req: SnapshotRequest): Promise<SnapshotSummary> {
  req.signal?.throwIfAborted();
  const vmstate = req.vmstateFile
    ? await readFile(req.vmstateFile).catch((e: unknown) => {
        throw new SourceError(`cannot read vmstate file ${req.vmstateFile}: ${(e as Error).message}`, e);
      })
    : undefined;
  const ownStore = typeof req.store === 'string';
  const store =
    typeof req.store === 'string'
      ? await openStore(req.store, req.s3Endpoint ? { s3Endpoint: req.s3Endpoint } : {})
      : req.store;
  try {
    const source = await openSource(req);
    try {
      return await createSnapshot({
        source,
        store,
        id: req.id,
        ...(req.chunkSize !== undefined ? { chunkSize: req.chunkSize } : {}),
        ...(req.codec !== undefined ? { codec: req.codec } : {}),
        ...(req.level !== undefined ? { level: req.level } : {}),
        ...(req.concurrency !== undefined ? { concurrency: req.concurrency } : {}),
        ...(req.parent !== undefined ? { parent: req.parent } : {}),
        ...(vmstate ? { vmstate } : {}),
        ...(req.encrypt ? { encrypt: req.encrypt } : {}),
        ...(req.signKey ? { signKey: req.signKey } : {}),
        ...(req.signal ? { signal: req.signal } : {}),
        ...(req.onProgress ? { onProgress: req.onProgress } : {}),
      });
    } finally {
      await source.close();
    }
  } finally {
    if (ownStore) await store.close();
  }
}
