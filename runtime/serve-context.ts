/**
 * Everything one served snapshot's sessions share, opened in order: the stores, the manifest (the
 * first store that has a valid, and where asked well-signed, one), the chunk table with its zero
 * chunks marked, the host disk cache, the fetcher, the metrics and the working-set profile. On a
 * failure part way, what was opened is closed again before the error goes on.
 */
import { context as otelContext, trace, type Span } from '@opentelemetry/api';

import { FetchError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { ChunkTable } from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import { envKeyProvider } from '../store/key-provider.js';
import type { Manifest } from '../store/manifest.js';
import { openStore } from '../store/open.js';
import { readVmstate as readVmstateFrom } from '../store/reader.js';
import { keyFingerprint } from '../store/signing.js';
import type { DiskCache } from './disk-cache.js';
import { cacheProblemLogger, logRecoveredFetch } from './fault-log.js';
import { ChunkLoader } from './chunk-loader.js';
import { ChunkFetcher, type CrashSuspects } from './fetcher.js';
import { MemoryTier, arenaHugePages } from './memory-tier.js';
import { RuntimeMetrics } from './metrics.js';
import { loadProfile, profileSaver } from './profile-store.js';
import type { ProfileShape } from './profile.js';
import type { SessionContext } from './restore-session.js';
import type { ResolvedServeOptions } from './serve-options.js';
import { directLoaded, directLost, installsFailed } from './session-delivery.js';
import { kernelCanPoison, loadFirst } from './startup.js';
import { SPAN, TRACER_NAME } from './tracing.js';
import { prepareTraceDir } from './trace-dir.js';

/** `fn` inside a child span of `parent` named `name` (a no-op span when no tracer provider records). */
async function traced<T>(parent: Span, name: string, fn: () => Promise<T>): Promise<T> {
  const span = trace.getTracer(TRACER_NAME).startSpan(name, {}, trace.setSpan(otelContext.active(), parent));
  try {
    return await fn();
  } catch (e) {
    span.setStatus({ code: 2, message: (e as Error).message });
    throw e;
  } finally {
    span.end();
  }
}

/**
 * What a supervised worker shares with its supervisor about crashes (runtime/supervisor/): a page where
 * the loader threads write the chunk each decodes, and the chunks being decoded when earlier workers died.
 */
export interface CrashAttribution {
  activity: { fd: number; slots: number };
  suspects: CrashSuspects;
}

export interface ServeContext {
  stores: StoreBackend[];
  ctx: SessionContext;
  cache: DiskCache | undefined;
  /** The loader threads (runtime/chunk-loader.ts). */
  loader: ChunkLoader;
  /** Recordings being written to the stores (awaited at shutdown). */
  profileSaves: { idle(): Promise<void> };
  /** The vmstate, verified (and decrypted), from the first store that delivers it. */
  readVmstate(signal?: AbortSignal): Promise<Buffer | undefined>;
  /** Closes the cache and the stores. */
  close(): Promise<void>;
}

/** What the 'serving' line says about who may connect and what is checked. */
export function securityFields(o: ResolvedServeOptions, m: Manifest) {
  return {
    signedBy: o.verifyKey ? keyFingerprint(o.verifyKey) : null,
    encryption: m.encryption ? { mode: m.encryption.mode, keyId: m.encryption.keyId } : null,
    allowUids: o.allowUids ?? null,
    socketGroup: o.socketGroup ?? null,
  };
}

export async function openServeContext(
  o: ResolvedServeOptions,
  log: Logger,
  signal?: AbortSignal,
  crash?: CrashAttribution,
): Promise<ServeContext> {
  const stores = await Promise.all(
    o.stores.map((u) =>
      openStore(u, {
        connections: o.originConnections,
        ...(o.s3Endpoint ? { s3Endpoint: o.s3Endpoint } : {}),
      }),
    ),
  );
  const profileStore = o.profileStore
    ? await openStore(o.profileStore, { ...(o.s3Endpoint ? { s3Endpoint: o.s3Endpoint } : {}) })
    : undefined;
  // Profiles: the profile store first (read and written), then the stores in order.
  const profileStores = profileStore ? [profileStore, ...stores] : stores;
  if (o.traceDir !== undefined) await prepareTraceDir(o.traceDir);
  let cache: DiskCache | undefined;
  let loader: ChunkLoader | undefined;
  let table: ChunkTable | undefined;
  const traceWrites = new Set<Promise<void>>();
  const close = async () => {
    // The last sessions' trace files are written before serve exits (they never reject).
    await Promise.all([...traceWrites]);
    await cache?.close();
    await loader?.close();
    table?.unshare();
    await Promise.all(stores.map((s) => s.close()));
    await profileStore?.close();
  };
  // Before any VM connects: the manifest and the profile (docs/DESIGN.md, P6).
  const openSpan = trace
    .getTracer(TRACER_NAME)
    .startSpan(SPAN.open, { attributes: { 'lazysnap.snapshot.id': o.id } });
  try {
    const index = await traced(openSpan, SPAN.manifest, () =>
      loadFirst(stores, o.id, signal, {
        ...(o.verifyKey ? { verifyKey: o.verifyKey } : {}),
        keys: o.keys ?? envKeyProvider(),
      }),
    );
    const crypto = index.crypto;
    const m = index.manifest;
    table = new ChunkTable(m.totalSize, m.chunkSize, {
      hugePages: arenaHugePages(m.chunkSize, m.totalSize, o.memoryBudgetBytes),
    });
    table.markZero(Uint8Array.from(index.flags, (f) => (f === 0 ? 1 : 0)));
    // Started now, not at the first fault: the first page served must not wait for threads to boot.
    loader = await ChunkLoader.start({
      table,
      ...(crypto ? { crypto } : {}),
      workers: o.loaderThreads,
      ...(crash ? { activity: crash.activity } : {}),
    });
    cache = o.cacheDir
      ? await (
          await import('./disk-cache.js')
        ).DiskCache.open(
          { dir: o.cacheDir, budgetBytes: o.cacheBudgetBytes, loader, onProblem: cacheProblemLogger(log) },
          signal,
        )
      : undefined;
    const metrics = new RuntimeMetrics();
    const memory = new MemoryTier(table, o.memoryBudgetBytes);
    loader.onAdmitted = (c) => memory.admittedLate(c);
    loader.onInstallFailed = installsFailed;
    const fetcher = new ChunkFetcher({
      origins: stores,
      table,
      loader,
      ...(cache ? { cache } : {}),
      encrypted: crypto !== undefined,
      attemptTimeoutMs: o.attemptTimeoutMs,
      retries: o.retries,
      concurrency: o.fetchConcurrency,
      prefetchConcurrency: o.prefetchConcurrency,
      onFetch: (e) => (metrics.onFetch(e), logRecoveredFetch(log, e)),
      onResident: (c) => memory.admitted(c),
      keep: (c) => memory.keepLoaded(c),
      hedge: o.hedge,
      ...(crash ? { suspects: crash.suspects } : {}),
      onHedge: (outcome) => metrics.hedges.inc({ outcome }),
    });
    // A fault on a chunk of a local store goes straight to a loader thread, not through the event loop.
    const direct = fetcher.directPlan(index, memory.loadedOnce);
    if (direct) {
      loader.onDirect = (outcome) =>
        directLoaded(outcome.session, outcome.chunk, fetcher.directLoaded(outcome));
      loader.onDirectLost = directLost;
      loader.direct(direct);
    }
    const shape: ProfileShape = {
      id: o.id,
      chunkSize: m.chunkSize,
      totalSize: m.totalSize,
      chunks: index.count,
    };
    const wantsProfile = o.prefetch === 'auto' || o.prefetch === 'replay';
    const profile = wantsProfile
      ? await traced(openSpan, SPAN.profile, () =>
          loadProfile(profileStores, shape, (msg) => log.warn(msg), signal),
        )
      : undefined;
    const mode = o.prefetch === 'auto' ? (profile ? 'replay' : 'off') : o.prefetch;
    if (mode === 'replay' && !profile)
      log.warn(`no profile for ${o.id}: replay has nothing to prefetch (record one with --prefetch record)`);
    const saver = profileSaver(profileStores, shape, log);
    const ctx: SessionContext = {
      index,
      table,
      memory,
      fetcher,
      metrics,
      log,
      failTimeoutMs: o.failTimeoutMs,
      canPoison: o.failClosed === 'poison' || (o.failClosed === 'auto' && kernelCanPoison()),
      direct: direct !== undefined,
      ...(direct ? { takeDirect: () => loader!.takeDirect() } : {}),
      prefetch: {
        mode,
        fill: o.fill,
        window: o.prefetchWindow,
        recordIdleMs: o.recordIdleMs,
        readaheadChunks: Math.floor(o.readaheadBytes / m.chunkSize),
        profile,
        saveRecording: saver.save,
      },
      trace: {
        snapshotId: o.id,
        origins: Object.fromEntries(stores.map((st, i) => [`origin${i}`, st.url])),
        writes: traceWrites,
        ...(o.traceDir !== undefined ? { traceDir: o.traceDir } : {}),
      },
    };
    const readVmstate = async (sig?: AbortSignal) => {
      const errors: string[] = [];
      for (const store of stores) {
        try {
          return await readVmstateFrom(store, index, sig);
        } catch (e) {
          if (sig?.aborted) throw e;
          errors.push(`${store.url}: ${(e as Error).message}`);
        }
      }
      throw new FetchError(`vmstate of ${o.id}`, errors);
    };
    openSpan.end();
    return { stores, ctx, cache, loader, profileSaves: saver, readVmstate, close };
  } catch (e) {
    openSpan.setStatus({ code: 2, message: (e as Error).message });
    openSpan.end();
    await close();
    throw e;
  }
}
