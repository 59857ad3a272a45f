/**
 * The OpenTelemetry names lazysnap emits: one place, so that the runtime, the trace reader (`lazysnap
 * trace` reading an OTLP JSON export) and the tests agree. The runtime only uses @opentelemetry/api:
 * with no tracer provider registered (the default; see core/otel.ts for what registers one) every
 * tracer is a no-op and a session records no span at all (SessionTrace checks `isRecording()` once).
 *
 * Spans:
 * - `lazysnap.restore`: one per restore session, from the accepted handshake to the session's end. Its
 *   attributes name the snapshot, restore, peer and handshake shape; at its end, the session's totals
 *   and stall split. Events: `handshake` (when the handshake was read), `first-fault-served`,
 *   `profile-installed` (every chunk of the replayed profile in), `peer-exited`.
 * - `lazysnap.fetch`: a child per demand fetch (the chunk a fault waited for), from queued to installed:
 *   chunk, tier, bytes, attempts, retries, hedge, its decode, verify and install time; and, for the fault
 *   that waited, an event `fault` at the time the fault thread read it, `lazysnap.fault.wait_ms` and that
 *   wait's split (the `lazysnap.stall.*` keys, as on the session span).
 * - `lazysnap.prefetch`: a child per prefetch batch (a profile replay, a fill), with its chunk counts.
 * - `lazysnap.host.restore`: the SDK's RestoreHost.restore() (under the platform's context when it
 *   passes one); the session's `lazysnap.restore` span is its child.
 * - `lazysnap.snapshot.open`: at serve start, with children `lazysnap.manifest.load` and
 *   `lazysnap.profile.load` (loaded before any VM connects).
 */
export const TRACER_NAME = 'lazysnap';

export const SPAN = {
  restore: 'lazysnap.restore',
  fetch: 'lazysnap.fetch',
  prefetch: 'lazysnap.prefetch',
  open: 'lazysnap.snapshot.open',
  manifest: 'lazysnap.manifest.load',
  profile: 'lazysnap.profile.load',
  /** The SDK's RestoreHost.restore(): server, vmstate and Firecracker's load call; the session's parent. */
  hostRestore: 'lazysnap.host.restore',
} as const;

export const EVENT = {
  handshake: 'handshake',
  firstFaultServed: 'first-fault-served',
  profileInstalled: 'profile-installed',
  peerExited: 'peer-exited',
  /** On a fetch span: when the fault that waited for the chunk was read. */
  fault: 'fault',
} as const;

/** Attribute keys (the `lazysnap.` namespace; OpenTelemetry's own conventions where one exists). */
export const ATTR = {
  snapshotId: 'lazysnap.snapshot.id',
  restoreId: 'lazysnap.restore.id',
  peerPid: 'process.pid',
  shape: 'lazysnap.handshake.shape',
  regions: 'lazysnap.handshake.regions',
  pageSize: 'lazysnap.page_size',
  chunkSize: 'lazysnap.chunk_size',
  chunkCount: 'lazysnap.chunk_count',
  outcome: 'lazysnap.outcome',
  faults: 'lazysnap.faults',
  zeroFaults: 'lazysnap.zero_faults',
  fetchedChunks: 'lazysnap.fetched_chunks',
  bytesFetched: 'lazysnap.bytes_fetched',
  prefetchedChunks: 'lazysnap.prefetched_chunks',
  failedChunks: 'lazysnap.failed_chunks',
  /** The session's chunk map (runtime/trace-format.ts, `chunks`): one character per chunk. */
  chunkMap: 'lazysnap.chunk_map',
  faultWaitMs: 'lazysnap.fault.wait_ms',
  stallFaults: 'lazysnap.stall.faults',
  stallTotal: 'lazysnap.stall.total_ms',
  stallQueue: 'lazysnap.stall.queue_ms',
  /** The fetch part of the stall, all tiers; per tier as `lazysnap.stall.fetch_ms.<tier>`. */
  stallFetch: 'lazysnap.stall.fetch_ms',
  stallDecode: 'lazysnap.stall.decode_ms',
  stallVerify: 'lazysnap.stall.verify_ms',
  stallInstall: 'lazysnap.stall.install_ms',
  chunk: 'lazysnap.chunk',
  tier: 'lazysnap.tier',
  priority: 'lazysnap.priority',
  bytes: 'lazysnap.bytes',
  attempts: 'lazysnap.attempts',
  retries: 'lazysnap.retries',
  hedge: 'lazysnap.hedge',
  queueMs: 'lazysnap.queue_ms',
  decodeMs: 'lazysnap.decode_ms',
  verifyMs: 'lazysnap.verify_ms',
  installMs: 'lazysnap.install_ms',
  batchChunks: 'lazysnap.prefetch.chunks',
  batchInstalled: 'lazysnap.prefetch.installed',
  batchKind: 'lazysnap.prefetch.kind',
} as const;
