/**
 * What a restore session is given and what it reports: the context all sessions of one served
 * snapshot share, and the figures of one session, live and at its end.
 */
import type { Logger } from '../core/logger.js';
import type { ChunkTable, SessionStats } from '../native/index.js';
import type { SnapshotIndex } from '../store/manifest.js';
import type { ChunkFetcher } from './fetcher.js';
import type { MemoryTier } from './memory-tier.js';
import type { RuntimeMetrics } from './metrics.js';
import type { Profile } from './profile.js';
import type { TraceContext } from './session-trace.js';
import type { StallSplit } from './trace-format.js';

export interface PrefetchContext {
  /** record: collect this session's first touches; replay: prefetch the profile's chunks. */
  mode: 'off' | 'record' | 'replay';
  /** After replay, fetch every other missing chunk in the background. */
  fill: boolean;
  /** Prefetch fetches in flight per session. */
  window: number;
  /** A recording is saved once: when no new chunk was touched for this long, or at session end. */
  recordIdleMs: number;
  /** Largest sequential read-ahead window, in chunks (0: none). */
  readaheadChunks: number;
  profile: Profile | undefined;
  saveRecording: (first: Map<number, number>) => void;
}

export interface SessionContext {
  index: SnapshotIndex;
  table: ChunkTable;
  memory: MemoryTier;
  fetcher: ChunkFetcher;
  metrics: RuntimeMetrics;
  log: Logger;
  failTimeoutMs: number;
  /** Whether UFFDIO_POISON works on this kernel; otherwise failing closed means SIGKILL. */
  canPoison: boolean;
  /**
   * Whether the loader threads load this snapshot's chunks straight from a fault (ChunkLoader.direct): then
   * each session opens in direct mode (FaultSession option `direct`). @default false
   */
  direct?: boolean;
  /**
   * With direct: reads the outcomes the loader threads left in shared memory (ChunkLoader.takeDirect), so
   * that a session hears how a chunk was loaded before it hears the chunk was installed.
   */
  takeDirect?: () => void;
  prefetch: PrefetchContext;
  /** Tracing: the snapshot's names for spans and trace files, and where files go (runtime/session-trace.ts). */
  trace: TraceContext;
}

export interface SessionSummary {
  restoreId: string;
  pid: number;
  durationMs: number;
  timeToFirstFaultServedMs: number | null;
  faults: number;
  zeroFaults: number;
  /**
   * Of the faults on absent chunks, those the fault thread handed straight to the loader threads (a local
   * store's chunks, ChunkLoader.direct) rather than through the event loop.
   */
  directFaults: number;
  fetchedChunks: number;
  bytesFetched: number;
  hitsByTier: Record<string, number>;
  failedChunks: number[];
  /** Chunks installed ahead of any fault by replay or fill. */
  prefetchedChunks: number;
  /** Chunks in this session's recording (record mode). */
  recordedChunks: number;
  /** How long faults that crossed into JS waited in all, and where that went (runtime/stall.ts), in ms. */
  stall: StallSplit & { faults: number; totalMs: number };
  outcome: 'ended' | 'killed' | 'shutdown';
}

/** A live session's figures: the native counters plus what the session fetched. */
export interface LiveSessionStats extends SessionStats {
  restoreId: string;
  pid: number;
  fetchedChunks: number;
  bytesFetched: number;
  prefetchedChunks: number;
}
