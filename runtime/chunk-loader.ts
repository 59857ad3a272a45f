/**
 * The chunk loaders: worker threads that read, decode and verify chunks into the shared native table
 * (runtime/chunk-loader-worker.ts: into a reused stage buffer, installed from there, then copied to the
 * chunk's slot between loads), so the main thread, which schedules every session's faults and fetches,
 * never spends a chunk's worth of CPU on one of them.
 *
 * Scheduling: demand loads before prefetch loads. Each worker holds at most two jobs (the running one
 * and the next), so it never waits for the main thread between jobs while the order of everything else
 * stays the main thread's to decide.
 *
 * Cache writes go to a thread of their own, started with the disk cache, in the SCHED_IDLE class (nice 19
 * where that is refused): during a restore the CPUs belong to the restore, and on a small host a write
 * would otherwise take a core from the VM's own threads, which fault on resident pages long after the
 * last chunk was loaded. They also wait until no load has been queued or running for `writeIdleMs`; a
 * chunk from a remote origin stays resident meanwhile, one from a local store's file is decoded again from
 * that file (WriteSource). The backlog is bounded (`maxPendingWrites` chunk numbers); past it, or for a
 * chunk evicted before its turn with no file to decode again, the write is dropped: the chunk is simply
 * not cached.
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';

import { startModuleWorker } from '../core/worker.js';
import { DirectRing } from './direct-ring.js';
import type { ChunkTable } from '../native/index.js';
import type { ChunkCrypto } from '../store/chunk-crypto.js';
import type {
  DirectOutcome,
  DirectPlan,
  LoadFailure,
  LoadJob,
  LoadReply,
  LoaderNotice,
  LoaderWorkerData,
  WriteJob,
  WriteSource,
} from './chunk-loader-worker.js';

export type { DirectOutcome, DirectPlan, LoadFailure, WriteSource };

/** A load that did not produce the chunk. `failure` says why (see LoadFailure). */
export class LoadError extends Error {
  readonly failure: LoadFailure;
  readonly code: string | undefined;
  /** For an integrity failure: its reason and the values compared, as the loader thread had them. */
  readonly integrity: { reason: string; expected?: string; actual?: string } | undefined;
  constructor(
    failure: LoadFailure,
    message: string,
    code?: string,
    integrity?: { reason: string; expected?: string; actual?: string },
  ) {
    super(message);
    this.name = 'LoadError';
    this.failure = failure;
    this.code = code;
    this.integrity = integrity;
  }
}

/**
 * Where a load's time went, added to by every load given the same sink (a fetch that tried several
 * objects): milliseconds waiting for a loader thread, reading a file, decoding, verifying.
 */
export interface LoadTiming {
  waitMs: number;
  readMs: number;
  decodeMs: number;
  verifyMs: number;
}

export function newLoadTiming(): LoadTiming {
  return { waitMs: 0, readMs: 0, decodeMs: 0, verifyMs: 0 };
}

export type LoadRequest = Omit<LoadJob, 'op' | 'id'> & {
  priority: 'demand' | 'prefetch';
  /** Stall accounting (runtime/stall.ts): the phases of this load are added here. */
  timing?: LoadTiming;
  /**
   * Run this load alone: no other load or write in flight on any loader while it runs. For a chunk that
   * was being decoded when a worker process died (runtime/supervisor/): if it crashes this one too, it
   * is the only suspect, and if it does not, the others in flight at that death were.
   */
  exclusive?: boolean;
};

/** What the kernel granted the cache writer thread: SCHED_IDLE, else nice 19, else nothing lower. */
export type WriterPriority = 'idle' | 'nice' | 'normal';

export interface ChunkLoaderOptions {
  table: ChunkTable;
  crypto?: ChunkCrypto;
  /** Loader threads. @default min(4, available parallelism) */
  workers?: number;
  /** Cache writes waiting for the writer thread before new ones are dropped. @default 4096 */
  maxPendingWrites?: number;
  /** How long loads must have been idle before cache writes run. @default 25 */
  writeIdleMs?: number;
  /**
   * A supervised worker's activity page (runtime/supervisor/): a memfd of `slots` Int32s where each
   * loader thread writes the chunk it is decoding (index + 1; 0 when idle), read by the supervisor when
   * this process dies, so that a chunk that crashes the decoder can be named and failed closed.
   */
  activity?: { fd: number; slots: number };
}

interface Pending {
  job: LoadJob | WriteJob;
  exclusive?: boolean;
  timing?: LoadTiming;
  /** performance.now() when queued, for the timing's wait. */
  at?: number;
  resolve: (stored: number, existed?: boolean) => void;
  reject: (e: LoadError) => void;
}

interface Loader {
  worker: Worker;
  /** Loads (the loader threads) or cache writes (the writer thread, at idle priority). */
  role: 'load' | 'write';
  jobs: Map<number, Pending>;
  /** Its slot in the activity page, if there is one. */
  slot: number | undefined;
  /** A load thread's direct outcomes (runtime/direct-ring.ts). */
  ring: DirectRing | undefined;
}

/** How often direct outcomes are read when nothing else made this thread read them (ms). */
const DIRECT_SWEEP_MS = 100;

/** How many jobs a loader holds: the one it runs and the next one. */
const DEPTH = 2;

export class ChunkLoader {
  readonly #loaders: Loader[] = [];
  /** The cache writer thread, once a write asked for it. */
  #writer: Loader | undefined;
  #writerStarting: Promise<void> | undefined;
  /** The writer thread once started: the scheduling class the kernel granted, and its thread id under SCHED_IDLE. */
  writerThread: { priority: WriterPriority; tid?: number } | undefined;
  readonly #demand: Pending[] = [];
  readonly #prefetch: Pending[] = [];
  readonly #writes: Pending[] = [];
  readonly #maxWrites: number;
  readonly #writeIdleMs: number;
  /** performance.now() of the last load queued or finished. */
  #lastLoad = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  readonly #data: LoaderWorkerData;
  readonly #table: ChunkTable;
  readonly #activitySlots: number;
  readonly #freeSlots: number[];
  #nextId = 1;
  #closed = false;
  /** An exclusive load is in flight: nothing else is dispatched until it answers. */
  #exclusive = false;
  droppedWrites = 0;
  /**
   * A chunk loaded without admission (LoadJob.admit false) that a loader admitted after all, because
   * another session read it from its stage: the memory tier accounts for it here.
   */
  onAdmitted: ((chunk: number) => void) | undefined;
  /**
   * A load's installs could not be queued for these sessions (share ids, LoadJob.installTo): each still
   * live must install the chunk itself (runtime/session-delivery.ts installsFailed).
   */
  onInstallFailed: ((chunk: number, sessions: number[]) => void) | undefined;
  /** A load a fault thread queued straight to the loaders (direct) ended: its outcome. */
  onDirect: ((outcome: DirectOutcome) => void) | undefined;
  /**
   * A loader thread stopped while direct loads were possible: chunks it had taken from a direct queue and
   * not yet reported will never be; whoever waits for one must ask again (performance.now() of the loss).
   */
  onDirectLost: ((at: number) => void) | undefined;
  #direct: DirectPlan | undefined;
  #directSweep: NodeJS.Timeout | undefined;

  private constructor(
    table: ChunkTable,
    data: LoaderWorkerData,
    maxWrites: number,
    writeIdleMs: number,
    activitySlots: number,
  ) {
    this.#table = table;
    this.#data = data;
    this.#maxWrites = maxWrites;
    this.#writeIdleMs = writeIdleMs;
    this.#activitySlots = activitySlots;
    this.#freeSlots = Array.from({ length: activitySlots }, (_, i) => i);
  }

  /** Starts the loaders (shares the table with them) and resolves once every one is ready. */
  static async start(options: ChunkLoaderOptions): Promise<ChunkLoader> {
    const n = options.workers ?? Math.min(4, availableParallelism());
    const data: LoaderWorkerData = {
      tableId: options.table.share(),
      totalSize: options.table.totalSize,
      chunkSize: options.table.chunkSize,
      ...(options.crypto ? { crypto: options.crypto.toTransfer() } : {}),
      ...(options.activity ? { activityFd: options.activity.fd } : {}),
      // Each loader fills one stage and leaves the rest of its share to be settled between loads.
      maxUnsettled: Math.max(0, Math.floor(options.table.stats().stages / Math.max(1, n)) - 1),
    };
    const l = new ChunkLoader(
      options.table,
      data,
      options.maxPendingWrites ?? 4096,
      options.writeIdleMs ?? 25,
      options.activity?.slots ?? 0,
    );
    try {
      await Promise.all(Array.from({ length: Math.max(1, n) }, () => l.#spawn('load')));
    } catch (e) {
      await l.close();
      throw e;
    }
    return l;
  }

  get workers(): number {
    return this.#loaders.length;
  }

  /** The id of the table the loaders were started with (ChunkTable.share()). */
  get tableId(): number {
    return this.#data.tableId;
  }

  /** Loads a chunk into its slot; resolves with the stored object's size once it is resident. */
  load(req: LoadRequest): Promise<number> {
    const { priority, exclusive, timing, ...rest } = req;
    return new Promise<number>((resolve, reject) => {
      const p: Pending = {
        job: { op: 'load', id: this.#nextId++, ...rest },
        resolve,
        reject,
        ...(exclusive ? { exclusive } : {}),
        ...(timing ? { timing, at: performance.now() } : {}),
      };
      (priority === 'demand' ? this.#demand : this.#prefetch).push(p);
      this.#lastLoad = performance.now();
      this.#pump();
    });
  }

  /**
   * A fault now waits for chunk `chunk` of table `table`, whose load was queued as a prefetch: it moves to
   * the demand queue, so that it runs before the prefetches queued ahead of it (a sequential reader's
   * read-ahead queues many) rather than after them. Returns whether a queued load was moved; one already
   * handed to a loader thread is about to run anyway.
   */
  promote(table: number, chunk: number): boolean {
    const k = this.#prefetch.findIndex(
      (p) => p.job.op === 'load' && p.job.table === table && p.job.chunk === chunk,
    );
    if (k < 0) return false;
    this.#demand.push(this.#prefetch.splice(k, 1)[0]!);
    this.#pump();
    return true;
  }

  /**
   * Caches chunk `chunk` of the loaders' table at `dest` (WriteJob: through a temp file named `dest` +
   * `tempPrefix` + random), on the writer thread once loads are idle: from the table if it is resident
   * then, else decoded again from `source`. Resolves 'written', 'exists' (a file of `length` bytes was
   * there), or 'dropped' (backlog full, or the chunk was evicted before its turn and has no source, or its
   * source is gone); rejects with the write's I/O error, or an IntegrityError-kind LoadError when the
   * source is no longer the chunk.
   */
  write(
    chunk: number,
    dest: string,
    tempPrefix: string,
    length: number,
    source?: WriteSource,
  ): Promise<'written' | 'exists' | 'dropped'> {
    if (this.#writes.length >= this.#maxWrites || this.#closed) {
      this.droppedWrites++;
      return Promise.resolve('dropped');
    }
    return new Promise((resolve, reject) => {
      this.#writes.push({
        job: {
          op: 'write',
          id: this.#nextId++,
          table: this.#data.tableId,
          chunk,
          dest,
          tempPrefix,
          length,
          ...(source ? { source } : {}),
        },
        resolve: (_stored, existed) => resolve(existed ? 'exists' : 'written'),
        reject: (e) => (e.failure === 'busy' ? (this.droppedWrites++, resolve('dropped')) : reject(e)),
      });
      void this.#startWriter();
      this.#pump();
    });
  }

  /**
   * Lets fault threads hand this table's absent chunks straight to the loader threads (DirectPlan; the
   * sessions opt in with the FaultSession option `direct`), now and in every loader thread started later.
   */
  direct(plan: DirectPlan): void {
    this.#direct = plan;
    for (const l of this.#loaders) l.worker.postMessage(plan);
    // Outcomes are read whenever this thread runs for a session or a loader; this catches the rest (a
    // session that ended before its last load's outcome was read), so the memory tier's account of
    // what is resident is never behind for long.
    this.#directSweep ??= setInterval(() => this.takeDirect(), DIRECT_SWEEP_MS).unref();
  }

  /** Hands every direct outcome the loader threads have written and not yet had read to onDirect. */
  takeDirect(): void {
    if (!this.#direct) return;
    for (const l of this.#loaders) this.#takeFrom(l);
  }

  #takeFrom(l: Loader): void {
    const table = this.#direct?.table;
    if (!l.ring || table === undefined) return;
    const outcomes = l.ring.take();
    // Loads all the same: cache writes wait until loads have been idle a while (#idleWrite).
    if (outcomes.length > 0) this.#lastLoad = performance.now();
    for (const o of outcomes)
      this.onDirect?.({
        table,
        session: o.session,
        chunk: o.chunk,
        startedAt: o.startedAt,
        endedAt: o.endedAt,
        disk: o.disk,
        kept: o.kept,
        reply: { id: 0, ok: true, stored: o.stored, phases: [o.readMs, o.decodeMs, o.verifyMs] },
      });
  }

  /** Loads and writes queued, not yet handed to a loader. */
  queued(): { demand: number; prefetch: number; writes: number } {
    return { demand: this.#demand.length, prefetch: this.#prefetch.length, writes: this.#writes.length };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    clearInterval(this.#directSweep);
    const gone = new LoadError('io', 'the chunk loaders are closed');
    for (const q of [this.#demand, this.#prefetch, this.#writes]) for (const p of q.splice(0)) p.reject(gone);
    const writer = this.#writer;
    this.#writer = undefined;
    await Promise.all(
      [...this.#loaders.splice(0), ...(writer ? [writer] : [])].map((l) => l.worker.terminate()),
    );
  }

  /**
   * Starts the cache writer thread now rather than at the first write (DiskCache.open does): a thread's
   * start-up costs tens of ms of CPU, which must not land in the middle of the first restore. Resolves
   * once it is ready, or at once if it is (or is being) started; a failure is left to the first write.
   */
  startWriter(): Promise<void> {
    return this.#startWriter() ?? Promise.resolve();
  }

  #startWriter(): Promise<void> | undefined {
    if (this.#writer || this.#closed) return undefined;
    if (this.#writerStarting) return this.#writerStarting;
    this.#writerStarting = this.#spawn('write').then(
      () => {
        this.#writerStarting = undefined;
        this.#pump();
      },
      (e: unknown) => {
        // No writer: what waits is dropped (a cache is an optimization); the next write tries again.
        this.#writerStarting = undefined;
        for (const p of this.#writes.splice(0))
          p.reject(new LoadError('io', `no cache writer thread: ${(e as Error).message}`));
      },
    );
    return this.#writerStarting;
  }

  async #spawn(role: Loader['role']): Promise<void> {
    // A thread without a slot (more threads than slots) decodes unrecorded: attribution is best effort.
    // The writer decodes nothing, so it takes no slot.
    const slot = this.#activitySlots > 0 && role === 'load' ? this.#freeSlots.shift() : undefined;
    const ring = role === 'load' ? new DirectRing() : undefined;
    const worker = startModuleWorker(new URL('./chunk-loader-worker.js', import.meta.url), {
      workerData: {
        ...this.#data,
        role,
        ...(slot !== undefined ? { activitySlot: slot } : {}),
        ...(ring ? { directRing: ring.buffer } : {}),
      },
    });
    const loader: Loader = { worker, role, jobs: new Map(), slot, ring };
    worker.once('exit', () => {
      if (slot !== undefined) this.#freeSlots.push(slot);
    });
    await new Promise<void>((resolve, reject) => {
      const onExit = (code: number) => fail(new Error(`a chunk loader exited during start (code ${code})`));
      const fail = (e: Error) => (worker.off('message', ready), worker.off('exit', onExit), reject(e));
      const ready = (m: { priority?: WriterPriority; tid?: number }) => {
        if (role === 'write')
          this.writerThread = {
            priority: m.priority ?? 'normal',
            ...(m.tid !== undefined ? { tid: m.tid } : {}),
          };
        worker.off('error', fail);
        worker.off('exit', onExit);
        resolve();
      };
      worker.once('message', ready);
      worker.once('error', fail);
      worker.once('exit', onExit);
    });
    worker.on('message', (r: LoadReply | LoaderNotice) => {
      this.takeDirect(); // outcomes written before this message was sent come first
      if ('direct' in r) this.onDirect?.(r.direct);
      else if ('admitted' in r) this.onAdmitted?.(r.admitted);
      else if ('installFailed' in r) this.onInstallFailed?.(r.installFailed, r.sessions);
      else this.#reply(loader, r);
    });
    // A loader that dies (an exception in it, a terminate from outside) fails what it held; another
    // takes its place so that loads go on.
    worker.on('error', () => {});
    worker.once('exit', () => {
      const i = this.#loaders.indexOf(loader);
      if (i >= 0) this.#loaders.splice(i, 1);
      if (this.#writer === loader) this.#writer = undefined;
      for (const p of loader.jobs.values()) {
        if (p.exclusive) this.#exclusive = false;
        p.reject(new LoadError('io', 'the chunk loader thread stopped'));
      }
      loader.jobs.clear();
      if (this.#closed) return;
      if (role === 'write') {
        if (this.#writes.length > 0) void this.#startWriter();
        return;
      }
      // What it staged and had not yet copied to the slots is copied now (a few chunks at most).
      this.#table.settleAll();
      if (this.#direct) {
        this.#takeFrom(loader); // what it did report stands
        this.onDirectLost?.(performance.now());
      }
      void this.#spawn('load').then(
        () => this.#pump(),
        () => {},
      );
    });
    if (role === 'write') this.#writer = loader;
    else {
      this.#loaders.push(loader);
      if (this.#direct) worker.postMessage(this.#direct);
    }
    this.#pump();
  }

  #reply(loader: Loader, r: LoadReply): void {
    const p = loader.jobs.get(r.id);
    if (!p) return;
    loader.jobs.delete(r.id);
    if (p.exclusive) this.#exclusive = false;
    if (p.job.op === 'load') this.#lastLoad = performance.now();
    if (p.timing && r.phases) {
      // What the thread did not spend working is the wait: in the queues here and there, and the hops.
      const t = p.timing;
      const [read, decode, verify] = r.phases;
      t.readMs += read;
      t.decodeMs += decode;
      t.verifyMs += verify;
      t.waitMs += Math.max(0, this.#lastLoad - p.at! - read - decode - verify);
    }
    if (r.ok) p.resolve(r.stored, r.existed);
    else p.reject(new LoadError(r.failure, r.message, r.code, r.integrity));
    this.#pump();
  }

  #pump(): void {
    this.#pumpWrites();
    // One job at a time to the least loaded loader: two faults at once go to two threads, not one.
    for (;;) {
      if (this.#exclusive) return;
      let l: Loader | undefined;
      for (const x of this.#loaders) if (x.jobs.size < DEPTH && (!l || x.jobs.size < l.jobs.size)) l = x;
      if (!l) return;
      const head = this.#demand[0] ?? this.#prefetch[0];
      if (head?.exclusive) {
        // Alone: it waits for every loader to be idle, and holds the others back while it runs.
        if (this.#loaders.some((x) => x.jobs.size > 0)) return;
        this.#exclusive = true;
      }
      const p = this.#demand.shift() ?? this.#prefetch.shift();
      if (!p) return;
      l.jobs.set(p.job.id, p);
      const bytes = p.job.op === 'load' ? p.job.bytes : undefined;
      // An origin's body is handed over, not copied, when it owns its whole buffer (never a pooled slab).
      const transfer =
        bytes && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
          ? [bytes.buffer as ArrayBuffer]
          : [];
      l.worker.postMessage(p.job, transfer);
    }
  }

  /** Cache writes, one at a time, to the writer thread once loads have been idle long enough. */
  #pumpWrites(): void {
    const w = this.#writer;
    if (!w || w.jobs.size > 0 || this.#exclusive) return;
    const p = this.#idleWrite();
    if (!p) return;
    w.jobs.set(p.job.id, p);
    w.worker.postMessage(p.job);
  }

  /** The next cache write, if loads have been idle long enough; else a wake-up for when they will be. */
  #idleWrite(): Pending | undefined {
    if (this.#writes.length === 0) return undefined;
    const loading = this.#loaders.some((x) => [...x.jobs.values()].some((p) => p.job.op === 'load'));
    const wait = this.#lastLoad + this.#writeIdleMs - performance.now();
    if (!loading && wait <= 0) return this.#writes.shift();
    this.#idleTimer ??= setTimeout(
      () => {
        this.#idleTimer = undefined;
        this.#pump();
      },
      Math.max(1, wait),
    ).unref();
    return undefined;
  }
}
