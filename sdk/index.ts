/**
 * lazysnap's public API (`import { ... } from 'lazysnap'`). The CLI is a shell over these calls, so
 * a platform embedding them gets the CLI's behaviour. See docs/SDK.md for a walk-through.
 *
 * - Snapshot: snapshot() from a memory file, a Firecracker diff, or a live process.
 * - Store: openStore() for file://, s3:// and http(s):// stores; loadIndex() reads a manifest.
 * - Restore: RestoreServer (what `lazysnap serve` runs: start/close, events, per-session stats),
 *   RestoreHost.restore() (one call for a lazy Firecracker restore), attach() (lazy restore into
 *   this process's own memory, e.g. a WebAssembly.Memory).
 * - Firecracker: FirecrackerClient for its API socket.
 * - Every error is a LazysnapError with a stable `code`.
 */
export type {} from '../core/webassembly.js';
export * from '../core/errors.js';
export { createRootLogger, componentLogger, type Logger, type LoggerConfig } from '../core/logger.js';

export {
  snapshot,
  type SnapshotRequest,
  type MemoryFileSource,
  type ProcessSource,
  type SnapshotSummary,
  type SnapshotProgress,
} from './snapshot.js';
export { collectGarbage, type GcOptions, type GcResult } from '../snapshotter/gc.js';

export { openStore, type OpenStoreOptions } from '../store/open.js';
export type { StoreBackend, ObjectInfo } from '../store/backend.js';
export { loadIndex } from '../store/reader.js';
export type { Manifest, ManifestRegion, SnapshotIndex } from '../store/manifest.js';

export {
  RestoreServer,
  type RestoreServerEvents,
  type ServeOptions,
  type LiveSessionStats,
  type SessionSummary,
} from '../runtime/restore-server.js';
export {
  RestoreHost,
  type RestoreHostOptions,
  type LazyRestoreOptions,
  type LazyRestoreResult,
  type SnapshotRef,
} from './platform.js';
export { attach, type AttachOptions, type AttachTarget, type Attachment, type MapRequest } from './attach.js';

export { FirecrackerClient } from './firecracker-client.js';
export type {
  FirecrackerClientOptions,
  CallOptions,
  MachineConfig,
  CreateSnapshotParams,
  LoadSnapshotParams,
  MemBackend,
  InstanceInfo,
} from './firecracker-client.js';
