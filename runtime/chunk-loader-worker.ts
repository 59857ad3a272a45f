/**
 * A chunk loader thread (runtime/chunk-loader.ts): the per-chunk work that used to hold the event loop
 * that schedules every session's fetches. With a direct plan (DirectPlan) it also takes the chunks fault
 * threads queue for it directly, with no job from the event loop. It reads a stored object (from a local
 * store's file, a host cache file, or bytes an origin sent), decodes it into a stage of the shared native table (a buffer used
 * over and over, native/src/table.h), verifies its hash there, and commits it: the waiting faults are
 * installed from the stage, and only then is the chunk copied to its own slot of the table, in slices
 * between loads (settle). The main thread only decides what to load and installs what is committed.
 *
 * It also writes host cache files from resident chunks (pinned while written), at low priority.
 *
 * Messages in: LoadJob | WriteJob; out: LoadReply. Errors cross as plain objects (kind, message) that
 * the main thread turns back into typed errors.
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fstatSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { setPriority } from 'node:os';
import { dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';

import { IntegrityError } from '../core/errors.js';
import { settleHeap } from '../core/heap.js';
import { makeDirsSync } from '../core/make-dirs.js';
import { addon } from '../native/addon.js';
import { ChunkTable, installSharedSession } from '../native/index.js';
import { decodeChunk, encodeChunk, hashChunk, maxStoredSize, type Codec } from '../store/chunk.js';
import { ChunkCrypto, type ChunkCryptoTransfer } from '../store/chunk-crypto.js';
import { cacheEntryKey, chunkKey } from '../store/keys.js';
import { DirectRing } from './direct-ring.js';

export interface LoaderWorkerData {
  tableId: number;
  totalSize: number;
  chunkSize: number;
  crypto?: ChunkCryptoTransfer;
  /** A supervised worker's activity page (ChunkLoaderOptions.activity) and this thread's slot in it. */
  activityFd?: number;
  activitySlot?: number;
  /** A load thread's ring for its direct loads' outcomes (runtime/direct-ring.ts). */
  directRing?: SharedArrayBuffer;
  /** 'write': the cache writer thread, which lowers its own scheduling class first. @default 'load' */
  role?: 'load' | 'write';
  /**
   * Staged chunks this thread may leave unsettled before a load first settles the oldest: its share of
   * the table's stages, less the one it fills (ChunkLoader.start). A load that finds no stage free goes
   * to its slot, on the fault's path.
   */
  maxUnsettled: number;
}

/** Load chunk `chunk` from a file of a local store ('file'), from bytes an origin sent ('bytes'), or from
 * a host cache file holding the plain chunk ('raw'). */
export interface LoadJob {
  op: 'load';
  id: number;
  /**
   * The shared table (tableShare id) the chunk goes into: always named, never defaulted, so that a job
   * meant for another table (the start-up warm-up's private one) cannot land in the snapshot's.
   */
  table: number;
  chunk: number;
  key: string;
  hash: string;
  codec: Codec;
  length: number;
  from: 'file' | 'bytes' | 'raw';
  path?: string;
  bytes?: Uint8Array;
  maxBytes: number;
  /**
   * Sessions (FaultSession.share() ids, on this job's table) whose faults wait for the chunk: once it is
   * verified and committed, this thread queues their installs itself, a hop sooner than the event loop
   * would. JS queues its own install as well when it learns of the load; the second finds the chunk in.
   */
  installTo?: number[];
  /**
   * Whether the chunk is kept in the table once its waiting faults are served (the memory tier's
   * admission, runtime/memory-tier.ts): false leaves it in its stage, readable by any session that
   * faults on it meanwhile, until this thread needs the stage again, and never copies it to its slot.
   * @default true
   */
  admit?: boolean;
}

/**
 * Cache chunk `chunk` at `dest` (through a temp file `dest` + `tempPrefix` + random, renamed), unless a
 * file of `length` bytes is there already; the fan-out directory is made if missing. The bytes come from
 * the table while the chunk is resident there, else from `source`. All of it on the writer thread: none
 * of these syscalls runs on the event loop that schedules faults.
 */
export interface WriteJob {
  op: 'write';
  id: number;
  table: number;
  chunk: number;
  dest: string;
  tempPrefix: string;
  length: number;
  source?: WriteSource;
}

/**
 * A local store's object to cache a chunk from when it is no longer resident: read, decoded and verified
 * again on the writer thread, into a buffer it reuses. Why: holding every loaded chunk in memory until the
 * writer's turn meant copying each into fresh memory during the restore, and on a host that charges for
 * fresh pages (bench/results/host-memory.json) that copy made a cold fill 1.4-1.8x the restore without a
 * cache; reading a local file twice is cheap. The writer records no decode for crash attribution (it has
 * no activity slot): the bytes it decodes are ones a loader has decoded and verified already.
 */
export interface WriteSource {
  /** The object's file and key, its codec, its chunk's content hash, and the most its size may be. */
  path: string;
  key: string;
  codec: Codec;
  hash: string;
  maxBytes: number;
}

/**
 * How to load a table's chunks straight from a fault (ChunkLoader.direct): from a local store's files (and
 * the host cache's entries, when there is a cache), with no cipher. Once a thread has it, it attaches to the table's direct demand queue
 * (ChunkTable.directAttach) and loads what fault threads queue there for sessions in direct mode, each
 * as a demand LoadJob with its session as the install target, and leaves the outcome for the main thread
 * (runtime/direct-ring.ts; a failure, or a full ring, as LoaderNotice `direct`).
 */
export interface DirectPlan {
  op: 'direct';
  table: number;
  /** The local store's directory: chunk objects are at `${root}/${chunkKey(hash, codec)}`. */
  root: string;
  /**
   * The host disk cache's directory, when there is one: a chunk is read from its entry
   * (`${cacheDir}/${cacheEntryKey(hash)}`, the plain chunk) first, and from the store when there is none.
   */
  cacheDir?: string;
  /** The snapshot index's chunk hashes (32 bytes each) and flags (0: zero; k: codecs[k - 1]). */
  hashes: Uint8Array;
  flags: Uint8Array;
  codecs: Codec[];
  chunkSize: number;
  totalSize: number;
  /**
   * The memory tier's admission record (MemoryTier.loadedOnce, over shared memory): a chunk loaded before
   * is kept in the table, one loaded for the first time is served from its stage only.
   */
  loadedOnce: Uint8Array;
}

/** A direct load's outcome (DirectPlan), for the main thread's accounting and, if it failed, its fallback. */
export interface DirectOutcome {
  table: number;
  session: number;
  chunk: number;
  /**
   * When the load started and ended: CLOCK_MONOTONIC ms (process.hrtime), the clock of the fault thread's
   * stamps, the same in every thread (performance.now() is not: each thread has its own origin).
   */
  startedAt: number;
  endedAt: number;
  /** Whether it came from the host cache (DirectPlan.cacheDir) rather than the store. */
  disk: boolean;
  /** Whether the chunk was admitted to the memory tier (kept in its slot). */
  kept: boolean;
  /** The load's reply; when it succeeded, the session's install is queued right after this outcome. */
  reply: LoadReply;
}

export type LoadFailure =
  /** The object is not there (a store without it, a cache miss). */
  | 'not-found'
  /** It is there but is not the chunk (wrong length, hash, undecodable, too long, unauthentic). */
  | 'integrity'
  /** Reading it failed (EIO, EACCES, ...): not proof of anything. */
  | 'io'
  /** The slot was taken: another load is filling it, or it is resident already. */
  | 'busy';

/** A load's read, decode and verify times in this thread (ms), for stall accounting. */
type Phases = [read: number, decode: number, verify: number];

/**
 * Unasked: a chunk loaded without admission was admitted after all (letGo), on the snapshot's table; or
 * the installs of a load could not be queued for some of its sessions (LoadJob.installTo: a session that
 * ended, or no memory for the command), which must install it themselves or their faults would wait.
 */
export type LoaderNotice =
  { admitted: number } | { installFailed: number; sessions: number[] } | { direct: DirectOutcome };

export type LoadReply =
  | { id: number; ok: true; stored: number; phases?: Phases; existed?: boolean }
  | {
      id: number;
      ok: false;
      phases?: Phases;
      failure: LoadFailure;
      message: string;
      code?: string;
      /** An integrity failure's own fields, for the main thread to rebuild it (it names the key itself). */
      integrity?: { reason: string; expected?: string; actual?: string };
    };

const data = workerData as LoaderWorkerData;
const table = ChunkTable.open(data.tableId, data.totalSize, data.chunkSize);
/** Other shared tables jobs name, opened on first use (the warm-up's, one chunk of the same size). */
const others = new Map<number, ChunkTable>();
function tableOf(job: { table: number }): ChunkTable {
  if (job.table === data.tableId) return table;
  let t = others.get(job.table);
  if (!t) others.set(job.table, (t = ChunkTable.open(job.table, data.chunkSize, data.chunkSize)));
  return t;
}
const crypto = data.crypto ? ChunkCrypto.fromTransfer(data.crypto) : undefined;
/**
 * Where this thread says which chunk it is decoding, for the supervisor to read if the process dies
 * (threads share the descriptor table, so the memfd is mapped again here; the page outlives us).
 */
const activity =
  data.activityFd !== undefined && data.activitySlot !== undefined
    ? new Int32Array(addon().mapShared(data.activityFd, (data.activitySlot + 1) * 4))
    : undefined;
/**
 * Test builds only (lazysnap_test.node): an object whose bytes start with this marker crashes the
 * process as a decoder bug would, for the supervisor's crash-recovery tests. Absent in release builds.
 */
const testCrash = addon().testCrash;
const CRASH_MARKER = Buffer.from('LAZYSNAP-TEST-CRASH');
/** One read buffer, grown to the largest object seen (at most one chunk's largest stored size). */
let scratch = Buffer.allocUnsafe(0);

function readObject(path: string, maxBytes: number, key: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > maxBytes)
      throw new IntegrityError(key, 'stored object longer than any chunk can be', {
        expected: `at most ${maxBytes}`,
        actual: size,
      });
    if (scratch.length < size) scratch = Buffer.allocUnsafe(Math.max(size, scratch.length * 2));
    let n = 0;
    while (n < size) {
      const r = readSync(fd, scratch, n, size - n, n);
      if (r === 0) break; // the file shrank since fstat: what was read is checked like any object
      n += r;
    }
    return scratch.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** A plain chunk from the host cache, read straight into its stage (or slot) and checked there. */
function loadRaw(job: LoadJob, slot: Uint8Array, phases: Phases): number {
  const t0 = performance.now();
  const fd = openSync(job.path!, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size !== job.length)
      throw new IntegrityError(job.key, 'cache file has the wrong length', {
        expected: job.length,
        actual: size,
      });
    let n = 0;
    while (n < size) {
      const r = readSync(fd, slot, n, size - n, n);
      if (r === 0) throw new IntegrityError(job.key, 'cache file shrank while read');
      n += r;
    }
  } finally {
    closeSync(fd);
  }
  const t1 = performance.now();
  phases[0] = t1 - t0;
  const actual = crypto ? crypto.id(slot) : hashChunk(slot);
  phases[2] = performance.now() - t1;
  if (actual !== job.hash)
    throw new IntegrityError(job.key, 'content hash mismatch', { expected: job.hash, actual });
  return job.length;
}

/**
 * Staged chunks this thread committed and has yet to copy to their slots (or, `drop`, to let go of:
 * not admitted), oldest first.
 */
const unsettled: {
  table: ChunkTable;
  tableId: number;
  chunk: number;
  drop: boolean;
  /** Installs its load queued (LoadJob.installTo): reads of the stage beyond these are other sessions'. */
  installs: number;
}[] = [];
/** A settle step copies this much, then lets the next job in (a 512 KiB chunk in 4 steps). */
const SETTLE_SLICE = 128 << 10;
let settleScheduled = false;

/**
 * One slice of the oldest chunk to copy, then again after whatever jobs have arrived meanwhile. Chunks
 * not admitted are not copied: they stay in their stages, where a session that faults on one soon after
 * (a second thread of the VM, another VM) is served from, until a load needs the stage (load) or this
 * thread has been idle a while (armIdleLetGo); then letGo.
 */
function settleStep(): void {
  settleScheduled = false;
  const k = unsettled.findIndex((u) => !u.drop);
  if (k < 0) return;
  const u = unsettled[k]!;
  if (u.table.settle(u.chunk, SETTLE_SLICE) === 0) unsettled.splice(k, 1);
  scheduleSettle();
}
function scheduleSettle(): void {
  if (settleScheduled || !unsettled.some((u) => !u.drop)) return;
  settleScheduled = true;
  // setImmediate: the port's pending messages (the next load) run first, in the poll phase.
  setImmediate(settleStep);
}

function load(job: LoadJob): LoadReply {
  const table = tableOf(job);
  while (unsettled.length > 0 && unsettled.length >= data.maxUnsettled) {
    const u = unsettled.shift()!;
    if (u.drop) letGo(u);
    else while (u.table.settle(u.chunk, SETTLE_SLICE) > 0);
  }
  const slot = table.reserveStaged(job.chunk);
  if (!slot) return { id: job.id, ok: false, failure: 'busy', message: `chunk ${job.chunk} is not absent` };
  let committed = false;
  const phases: Phases = [0, 0, 0];
  // Only the snapshot's chunks: a job for another table (the warm-up's) names no object a session needs.
  const record = activity !== undefined && job.table === data.tableId;
  try {
    if (slot.length !== job.length)
      throw new IntegrityError(job.key, "the chunk's length is not its slot's", {
        expected: slot.length,
        actual: job.length,
      });
    let stored: number;
    if (record) Atomics.store(activity, data.activitySlot!, job.chunk + 1);
    if (job.from === 'raw') stored = loadRaw(job, slot, phases);
    else {
      const t0 = performance.now();
      const bytes = job.from === 'file' ? readObject(job.path!, job.maxBytes, job.key) : job.bytes!;
      phases[0] = performance.now() - t0;
      if (testCrash && CRASH_MARKER.equals(bytes.subarray(0, CRASH_MARKER.length))) testCrash();
      const split = { decodeMs: 0, verifyMs: 0 };
      decodeChunk(job.key, job.codec, bytes, job.hash, job.length, crypto, slot, split);
      phases[1] = split.decodeMs;
      phases[2] = split.verifyMs;
      stored = bytes.length;
    }
    table.commit(job.chunk, true);
    committed = true;
    // Staged: to settle, or to let go of later. Not admitted but loaded straight into its slot (no stage
    // was free): its copy is paid for already, so letGo admits it (it is not staged), and the memory
    // tier accounts for it like any other.
    const staged = slot.byteOffset !== job.chunk * table.chunkSize;
    if (staged || job.admit === false)
      unsettled.push({
        table,
        tableId: job.table,
        chunk: job.chunk,
        drop: job.admit === false,
        installs: 0, // set once its installs are queued (below)
      });
    return { id: job.id, ok: true, stored, phases };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const failure: LoadFailure =
      e instanceof IntegrityError ? 'integrity' : code === 'ENOENT' ? 'not-found' : 'io';
    const integrity =
      e instanceof IntegrityError
        ? {
            reason: e.reason,
            ...(e.expected !== undefined ? { expected: e.expected } : {}),
            ...(e.actual !== undefined ? { actual: e.actual } : {}),
          }
        : undefined;
    return {
      id: job.id,
      ok: false,
      phases,
      failure,
      message: (e as Error).message,
      ...(code ? { code } : {}),
      ...(integrity ? { integrity } : {}),
    };
  } finally {
    if (record) Atomics.store(activity, data.activitySlot!, 0);
    if (!committed) table.commit(job.chunk, false);
  }
}

/**
 * A chunk not admitted leaves its stage: evicted, so that its settle copies nothing and frees the stage.
 * Unless another session read it from the stage meanwhile (more reads than the installs its load
 * queued): a chunk two sessions want is admitted after all, copied to its slot now, and the main thread
 * told, to account for it in the memory tier. So is one with an install still to read it, and one that
 * is in its slot already.
 */
function letGo(u: (typeof unsettled)[number]): void {
  // Fewer reads than installs: one has not copied yet (a fault thread behind on a loaded host), and
  // evicting now would make it find nothing. Kept then, as a chunk read twice is.
  if (u.table.stageUses(u.chunk) !== u.installs) {
    while (u.table.settle(u.chunk, SETTLE_SLICE) > 0);
    if (u.tableId === data.tableId) parentPort!.postMessage({ admitted: u.chunk } satisfies LoaderNotice);
    return;
  }
  u.table.evict(u.chunk);
  u.table.settle(u.chunk, SETTLE_SLICE); // 0 at once: an evicted stage is freed without a copy
}

/** Caches a resident chunk (WriteJob); `busy` when it is not resident any more. Never throws. */
function write(job: WriteJob): LoadReply {
  try {
    // Already there (ours, or another process's): nothing to write. A file of the wrong size is corrupt
    // and is replaced; a right-sized corrupt one is caught by the next read.
    const existing = statSync(job.dest, { throwIfNoEntry: false });
    if (existing?.isFile() && existing.size === job.length)
      return { id: job.id, ok: true, stored: 0, existed: true };
  } catch {
    // ENOTDIR, EACCES, ...: not there as far as we can tell; the write below reports the real error.
  }
  const table = tableOf(job);
  const slot = table.pin(job.chunk);
  let bytes: Uint8Array;
  try {
    if (slot) bytes = slot;
    else if (job.source) bytes = decodeSource(job.source, job.length);
    else
      return { id: job.id, ok: false, failure: 'busy', message: `chunk ${job.chunk} is no longer resident` };
  } catch (e) {
    // The object is gone (not cached: as a chunk evicted before its turn), or is no longer the chunk: an
    // error to report, and nothing written.
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { id: job.id, ok: false, failure: 'busy', message: (e as Error).message };
    const failure: LoadFailure = e instanceof IntegrityError ? 'integrity' : 'io';
    return { id: job.id, ok: false, failure, message: (e as Error).message, ...(code ? { code } : {}) };
  }
  const tmp = `${job.dest}${job.tempPrefix}${randomBytes(4).toString('hex')}`;
  try {
    const fd = openTemp(tmp);
    try {
      let n = 0;
      while (n < bytes.length) n += writeSync(fd, bytes, n, bytes.length - n);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, job.dest);
    return { id: job.id, ok: true, stored: bytes.length };
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // Never created, or already gone: the write's own error is the one to report.
    }
    const code = (e as NodeJS.ErrnoException).code;
    return { id: job.id, ok: false, failure: 'io', message: (e as Error).message, ...(code ? { code } : {}) };
  } finally {
    if (slot) table.unpin(job.chunk, slot);
  }
}

/** The writer's decode buffer, reused: one chunk. */
let plain: Buffer | undefined;

/** A chunk decoded and verified from its local object (WriteSource), in a buffer the next call reuses. */
function decodeSource(src: WriteSource, length: number): Uint8Array {
  const stored = readObject(src.path, src.maxBytes, src.key);
  plain ??= Buffer.allocUnsafe(data.chunkSize);
  const into = plain.subarray(0, length);
  decodeChunk(src.key, src.codec, stored, src.hash, length, crypto, into);
  return into;
}

/**
 * A new temp file, 0600. Its fan-out directory (0700) is made when the open says it is missing, at every
 * write, not once per directory: an operator may wipe the cache under a running serve. makeDirsSync
 * creates level by level, so a read-only disk is reported as EROFS, not as the ENOENT Node's recursive
 * mkdir would give.
 */
function openTemp(tmp: string): number {
  try {
    return openSync(tmp, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  // EEXIST as a file where the directory belongs: the open below fails with ENOTDIR, a write error.
  makeDirsSync(dirname(tmp), 0o700);
  return openSync(tmp, 'wx', 0o600);
}

/**
 * Chunks not admitted are let go of when this thread has been idle this long (ms): they stay readable
 * from their stages while a restore is busy (its neighbours and other threads fault soon), but a
 * snapshot's table comes back to what the memory tier accounts for once its restores pause or end.
 */
const IDLE_LET_GO_MS = 50;
let lastJobAt = 0;
let idleTimer: NodeJS.Timeout | undefined;
function armIdleLetGo(): void {
  lastJobAt = performance.now();
  if (idleTimer || !unsettled.some((u) => u.drop)) return;
  idleTimer = setTimeout(function fire() {
    const idle = performance.now() - lastJobAt;
    if (idle < IDLE_LET_GO_MS) {
      idleTimer = setTimeout(fire, IDLE_LET_GO_MS - idle);
      return;
    }
    idleTimer = undefined;
    for (let k = unsettled.length - 1; k >= 0; k--) {
      const u = unsettled[k]!;
      if (!u.drop) continue;
      unsettled.splice(k, 1);
      letGo(u);
    }
  }, IDLE_LET_GO_MS);
  idleTimer.unref();
}

/**
 * Runs a load and queues its installs. `report` tells the main thread of the outcome: before the installs,
 * so that the event loop hears of the fetch before the peer its install wakes can finish and hang up, and
 * a session never ends with a fetch it was served by still pending.
 */
function loadAndInstall(job: LoadJob, report: (reply: LoadReply) => void): void {
  armIdleLetGo();
  const reply = load(job);
  report(reply);
  installAfter(job, reply);
}

/** After a load: its installs (LoadJob.installTo) if it succeeded, then the settling of its stage. */
function installAfter(job: LoadJob, reply: LoadReply): void {
  if (reply.ok && job.installTo) {
    let queued = 0;
    const failed: number[] = [];
    for (const id of job.installTo)
      if (installSharedSession(id, job.chunk)) queued++;
      else failed.push(id);
    if (failed.length > 0)
      parentPort!.postMessage({ installFailed: job.chunk, sessions: failed } satisfies LoaderNotice);
    // The stage reads its load accounts for (letGo): a session that ended meanwhile reads nothing.
    const u = unsettled.at(-1);
    if (u?.chunk === job.chunk && u.tableId === job.table) u.installs = queued;
  }
  scheduleSettle();
  armIdleLetGo();
}

/** Where this thread's direct loads' outcomes go (runtime/direct-ring.ts). */
const ring = data.directRing ? new DirectRing(data.directRing) : undefined;
/** Tables this thread loads faults' chunks for straight from their direct queues (DirectPlan). */
const plans = new Map<number, DirectPlan>();

function attachDirect(plan: DirectPlan): void {
  const first = !plans.has(plan.table);
  plans.set(plan.table, plan);
  if (first) tableOf(plan).directAttach(drainDirect);
}

/** Loads every chunk the direct queues hold, oldest first: demand, ahead of any job not yet received. */
function drainDirect(): void {
  for (const plan of plans.values()) {
    const t = tableOf(plan);
    for (let it = t.directTake(); it; it = t.directTake()) directLoad(plan, it.session, it.chunk);
  }
}

/** CLOCK_MONOTONIC in ms (DirectOutcome.startedAt). */
function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function directLoad(plan: DirectPlan, session: number, chunk: number): void {
  const startedAt = monotonicMs();
  const f = plan.flags[chunk] ?? 0;
  const codec = plan.codecs[f - 1];
  const post = (reply: LoadReply, disk: boolean, kept: boolean) => {
    const endedAt = monotonicMs();
    // A success through shared memory (read when the main thread next runs, which the install's report
    // makes it do); a failure, which nothing else would make it notice, as a message.
    if (reply.ok && plan.table === data.tableId) {
      const [readMs, decodeMs, verifyMs] = reply.phases ?? [0, 0, 0];
      const o = { session, chunk, stored: reply.stored, disk, kept, startedAt, endedAt };
      if (ring?.put({ ...o, readMs, decodeMs, verifyMs })) return;
    }
    const outcome: DirectOutcome = {
      table: plan.table,
      session,
      chunk,
      startedAt,
      endedAt,
      disk,
      kept,
      reply,
    };
    parentPort!.postMessage({ direct: outcome } satisfies LoaderNotice);
  };
  if (f === 0 || codec === undefined || chunk * plan.chunkSize >= plan.totalSize) {
    // A zero chunk is never absent in the table: nothing to load here; the main thread decides.
    const reply: LoadReply = {
      id: 0,
      ok: false,
      failure: 'busy',
      message: `chunk ${chunk} has no stored object`,
    };
    post(reply, false, false);
    return;
  }
  armIdleLetGo();
  const hash = Buffer.from(plan.hashes.buffer, plan.hashes.byteOffset + chunk * 32, 32).toString('hex');
  const length = Math.min(plan.chunkSize, plan.totalSize - chunk * plan.chunkSize);
  // The memory tier's rule (MemoryTier.keepLoaded), on the record it shares: kept from the second load on.
  const seen = Atomics.exchange(plan.loadedOnce, chunk, 1) === 1;
  const common = { op: 'load' as const, id: 0, table: plan.table, chunk, hash, length, installTo: [session] };
  // The host cache first, as the fetcher reads it: the plain chunk, checked against its hash.
  if (plan.cacheDir !== undefined) {
    const key = cacheEntryKey(hash);
    const job: LoadJob = {
      ...common,
      key,
      codec: 'none',
      from: 'raw',
      path: `${plan.cacheDir}/${key}`,
      maxBytes: length,
      admit: seen,
    };
    const reply = load(job);
    if (reply.ok || reply.failure !== 'not-found') {
      // A hit; or an entry there that is not the chunk (or unreadable): the fetcher's to deal with (it
      // deletes a corrupt entry and reports it), and the store's after that.
      post(reply, true, seen);
      installAfter(job, reply);
      return;
    }
  }
  const key = chunkKey(hash, codec);
  // Kept by the memory tier's rule only: a host cache to fill is written from the object (WriteSource).
  const kept = seen;
  const job: LoadJob = {
    ...common,
    key,
    codec,
    from: 'file',
    path: `${plan.root}/${key}`,
    maxBytes: maxStoredSize(codec, length, false),
    admit: kept,
  };
  const reply = load(job);
  post(reply, false, kept);
  installAfter(job, reply);
}

parentPort!.on('message', (job: LoadJob | WriteJob | DirectPlan) => {
  if (job.op === 'write') parentPort!.postMessage(write(job));
  else if (job.op === 'direct') attachDirect(job);
  else loadAndInstall(job, (reply) => parentPort!.postMessage(reply));
  // Faults queued while this job ran come before the next job (whose message is already waiting).
  drainDirect();
});
/**
 * Runs the load path once, at the chunk size, before reporting ready: the first call into zstd (a
 * context, and a window as large as a chunk's), BLAKE3 and this module's functions costs milliseconds,
 * and so does the first use of each buffer a load writes: on a host with shadow page tables a page's
 * first user access and its first kernel access cost an exit each (native/src/table.h). None of that
 * must fall on the first page a VM waits for (docs/DESIGN.md, "P6"). The start-up warm-up session
 * loads a chunk through one loader thread only; this warms every one.
 */
function warmUp(): void {
  const chunk = Buffer.alloc(data.chunkSize);
  for (let i = 0; i < chunk.length; i += 4096) chunk.writeUInt32LE(i, i); // not all zeros: a real window
  const frame = encodeChunk('zstd', chunk);
  decodeChunk('warm-up', 'zstd', frame, hashChunk(chunk), chunk.length, undefined, chunk);
  crypto?.id(chunk);
  // The read buffer at the largest object a chunk can be stored as, written once by the kernel (a read)
  // and read once here, as a load's read and decode will.
  scratch = Buffer.allocUnsafe(maxStoredSize('zstd', data.chunkSize, crypto !== undefined));
  const zero = openSync('/dev/zero', 'r');
  try {
    readSync(zero, scratch, 0, scratch.length, null);
  } finally {
    closeSync(zero);
  }
  hashChunk(scratch);
  readObject('/proc/self/stat', 1 << 20, 'warm-up');
  // The arena view: V8 counts it as external memory (the snapshot's size) and collects garbage when it
  // appears, about 10 ms measured here. Now, not in the first load.
  table.slot(0);
  table.warmStages();
  // What warming allocated is collected now, not by a collection a restore's first loads would start.
  settleHeap();
}
/**
 * The cache writer runs only on CPUs nothing else wants (runtime/chunk-loader.ts): SCHED_IDLE, or nice 19
 * where a sandbox refuses that. Linux schedules threads, so both apply to this thread alone.
 */
function lowerPriority(): { priority: 'idle' | 'nice' | 'normal'; tid?: number } {
  try {
    return { priority: 'idle', tid: addon().schedIdleThread() };
  } catch {
    try {
      setPriority(19); // pid 0: the calling thread, on Linux
      return { priority: 'nice' };
    } catch {
      return { priority: 'normal' };
    }
  }
}

if (data.role === 'write') parentPort!.postMessage({ ready: true, ...lowerPriority() });
else {
  warmUp();
  parentPort!.postMessage({ ready: true });
}
