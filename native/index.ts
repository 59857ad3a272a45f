/**
 * The typed edge of the native addon. Validates arguments (the C side re-checks memory safety) and
 * wraps handles in small classes. Kernel errors surface as Node-style SystemErrors
 * (`code: 'EEXIST'`, `errno`, `syscall`).
 */
import {
  InvalidArgumentError,
  SessionClosedError,
  UffdUnavailableError,
  isSystemError,
} from '../core/errors.js';
import {
  addon,
  type FailureKind,
  type FillResult,
  type Handle,
  type NativeFailure,
  type RawSessionEvent,
  type RecvResult,
} from './addon.js';

export { FAILURE_KINDS } from './addon.js';
export { addon, type FailureKind, type FillResult, type NativeFailure, type RecvResult };
export type SessionEvent = RawSessionEvent;

export const PAGE_4K = 4096;
export const PAGE_2M = 0x200000; // 2 MiB, written as a literal so that PageSize is a union of two values
export type PageSize = typeof PAGE_4K | typeof PAGE_2M;

/** Kernel constants, resolved from the headers the addon was built with (and newer ones it defines). */
export function constants() {
  const a = addon();
  return {
    UFFD_FEATURE_EVENT_REMOVE: BigInt(a.UFFD_FEATURE_EVENT_REMOVE),
    UFFD_FEATURE_MISSING_HUGETLBFS: BigInt(a.UFFD_FEATURE_MISSING_HUGETLBFS),
    UFFD_FEATURE_POISON: BigInt(a.UFFD_FEATURE_POISON),
    UFFD_FEATURE_SIGBUS: BigInt(a.UFFD_FEATURE_SIGBUS),
    UFFDIO_REGISTER_MODE_MISSING: BigInt(a.UFFDIO_REGISTER_MODE_MISSING),
    IOCTL_COPY: 1n << BigInt(a._UFFDIO_COPY),
    IOCTL_ZEROPAGE: 1n << BigInt(a._UFFDIO_ZEROPAGE),
    IOCTL_POISON: 1n << BigInt(a._UFFDIO_POISON),
    MADV_DONTNEED: a.MADV_DONTNEED,
    MADV_REMOVE: a.MADV_REMOVE,
  } as const;
}

function checkInt(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): asserts v is number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(name, `an integer in [${min}, ${max}]`, v);
  }
}

function checkPageSize(v: unknown): asserts v is PageSize {
  if (v !== PAGE_4K && v !== PAGE_2M) throw new InvalidArgumentError('pageSize', '4096 or 2097152', v);
}

/** A boolean, not a type guard: Array.isArray would narrow a readonly array to any[]. */
function isNonEmptyArray(v: readonly unknown[]): boolean {
  return Array.isArray(v) && v.length > 0;
}

// ---- userfaultfd ---------------------------------------------------------------------------------

export interface CreateUffdOptions {
  /** @default true: Firecracker's flags (O_CLOEXEC | O_NONBLOCK) */
  nonBlocking?: boolean;
  /**
   * UFFD_USER_MODE_ONLY: only faults taken in user mode are delivered. Allowed without privilege
   * where vm.unprivileged_userfaultfd = 0, but a kernel access to the range (read(2) into it, KVM)
   * fails with EFAULT instead of faulting. @default false
   */
  userModeOnly?: boolean;
}

/** Creates a userfaultfd (/dev/userfaultfd, falling back to the syscall). */
export function createUffd(options: CreateUffdOptions = {}): number {
  try {
    return addon().uffdCreate(options);
  } catch (e) {
    if (isSystemError(e) && (e.code === 'EPERM' || e.code === 'EACCES')) {
      throw new UffdUnavailableError(
        'run as root, grant CAP_SYS_PTRACE, give this user read/write access to /dev/userfaultfd, ' +
          'or set vm.unprivileged_userfaultfd=1 (process restore alone can use userModeOnly)',
        e,
      );
    }
    throw e;
  }
}

/** Whether this process may create a userfaultfd; `reason` says why not (for skips and errors). */
export function probeUffd(options: CreateUffdOptions = {}): { ok: true } | { ok: false; reason: string } {
  try {
    const fd = createUffd(options);
    addon().closeFd(fd);
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: e instanceof Error ? e.message : String(e) };
  }
}

export function uffdApi(fd: number, features: bigint): { features: bigint; ioctls: bigint } {
  return addon().uffdApi(fd, features);
}
export function uffdRegister(fd: number, address: bigint, length: number, mode?: bigint): bigint {
  checkInt('length', length, 1);
  return addon().uffdRegister(fd, address, length, mode ?? constants().UFFDIO_REGISTER_MODE_MISSING);
}
export function uffdUnregister(fd: number, address: bigint, length: number): void {
  addon().uffdUnregister(fd, address, length);
}
export function uffdWake(fd: number, address: bigint, length: number): void {
  addon().uffdWake(fd, address, length);
}
/** UFFDIO_COPY of whole pages, skipping pages already present (the partial-copy rule). */
export function uffdCopy(
  fd: number,
  address: bigint,
  source: ArrayBufferView,
  pageSize: PageSize = PAGE_4K,
): FillResult {
  return addon().uffdCopy(fd, address, source, pageSize);
}
export function uffdZeropage(
  fd: number,
  address: bigint,
  length: number,
  pageSize: PageSize = PAGE_4K,
): FillResult {
  return addon().uffdZeropage(fd, address, length, pageSize);
}
/** UFFDIO_POISON (Linux 6.6+): later access raises SIGBUS. EINVAL where the kernel lacks it. */
export function uffdPoison(
  fd: number,
  address: bigint,
  length: number,
  pageSize: PageSize = PAGE_4K,
): FillResult {
  return addon().uffdPoison(fd, address, length, pageSize);
}

// ---- the chunk table and fault sessions ----------------------------------------------------------

export type ChunkState = 'absent' | 'zero' | 'resident';
const STATES: readonly ChunkState[] = ['absent', 'zero', 'resident'];

/**
 * Per-snapshot table of what the fault thread may serve without JS: zero chunks and resident chunk
 * bytes. Shared by every session of the snapshot. Bytes are copied in on put(); eviction is safe
 * while fault threads copy (refcounted).
 */
export class ChunkTable {
  readonly handle: Handle<'table'>;
  readonly totalSize: number;
  readonly chunkSize: number;
  readonly chunks: number;
  #arena: ArrayBuffer | undefined;

  /**
   * `hugePages`: back the arena with transparent huge pages (MADV_HUGEPAGE) or not (MADV_NOHUGEPAGE).
   * Default: only when a chunk is whole huge pages (2 MiB or more); see runtime/memory-tier.ts
   * arenaHugePages for when more is safe. Copies from 4 KiB source pages measured 2-5x slower here.
   */
  constructor(
    totalSize: number,
    chunkSize: number,
    options: { hugePages?: boolean; handle?: Handle<'table'> } = {},
  ) {
    checkInt('totalSize', totalSize, 1);
    checkInt('chunkSize', chunkSize, PAGE_4K);
    if ((chunkSize & (chunkSize - 1)) !== 0)
      throw new InvalidArgumentError('chunkSize', 'a power of two', chunkSize);
    this.handle = options.handle ?? addon().tableCreate(totalSize, chunkSize, options.hugePages);
    this.totalSize = totalSize;
    this.chunkSize = chunkSize;
    this.chunks = Math.ceil(totalSize / chunkSize);
  }

  /**
   * Opens, on this thread (a worker), a table another thread of the process shared with share(). The
   * geometry must be the shared table's (it is checked against its stats).
   */
  static open(id: number, totalSize: number, chunkSize: number): ChunkTable {
    const t = new ChunkTable(totalSize, chunkSize, { handle: addon().tableOpen(id) });
    const st = t.stats();
    if (st.totalSize !== totalSize || st.chunkSize !== chunkSize)
      throw new InvalidArgumentError(
        'table geometry',
        `${st.totalSize}/${st.chunkSize}`,
        `${totalSize}/${chunkSize}`,
      );
    return t;
  }

  /** Lets other threads of this process open this table (ChunkTable.open(id)) until unshare(). */
  share(): number {
    return addon().tableShare(this.handle);
  }
  unshare(): void {
    addon().tableUnshare(this.handle);
  }

  /** Byte length of chunk i (the last one may be short). */
  chunkLength(i: number): number {
    return Math.min(this.chunkSize, this.totalSize - i * this.chunkSize);
  }
  put(i: number, bytes: ArrayBufferView): void {
    addon().tablePut(this.handle, i, bytes);
  }

  /**
   * Claims absent chunk i for filling in place: true when this caller must now write its bytes into
   * slot(i) and commit(i, ok); false when it is zero, resident, or being filled by someone else.
   */
  reserve(i: number): boolean {
    return addon().tableReserve(this.handle, i, false) >= 0;
  }
  /**
   * reserve(), into a stage when one is free: the bytes to write chunk i into (a stage, or else its
   * slot), or undefined when it is not absent. A stage is memory used over and over, so writing, hashing
   * and installing from it costs none of a fresh slot's first accesses (native/src/table.h). After
   * commit(i, true) the chunk is resident (installs copy from the stage) and the caller copies it to its
   * slot with settle(i) until that returns 0; the stage is then free for the next load.
   */
  reserveStaged(i: number): Uint8Array | undefined {
    const off = addon().tableReserve(this.handle, i, true);
    return off < 0 ? undefined : this.#view(off, i);
  }
  /** Ends a reserve(): the slot holds chunk i's verified bytes (ok), or not (absent again). */
  commit(i: number, ok: boolean): void {
    addon().tableCommit(this.handle, i, ok);
  }
  /**
   * Copies up to maxBytes (a multiple of 4096) more of staged chunk i to its slot; returns the bytes
   * left (0 once settled, or when chunk i is not staged).
   */
  settle(i: number, maxBytes: number): number {
    return addon().tableSettle(this.handle, i, maxBytes);
  }
  /**
   * Settles every staged chunk whole (returns how many): for the stages of a loader thread that stopped
   * before it settled them, which would otherwise stay taken, their chunks never loadable again once
   * evicted.
   */
  settleAll(): number {
    return addon().tableSettleAll(this.handle);
  }
  /**
   * Attaches this thread (a chunk loader) to the table's direct demand queue: fault threads of sessions
   * in direct mode (FaultSession option `direct`) queue the absent chunks their faults wait for there, and wake an
   * attached thread, whose onWork() then takes them (directTake) until none is left. Detached when this
   * thread's environment ends.
   */
  directAttach(onWork: () => void): void {
    addon().tableDirectAttach(this.handle, onWork);
  }
  /** The next chunk a fault waits for in the direct demand queue, and its session's share id. */
  directTake(): { session: number; chunk: number } | undefined {
    const it = addon().tableDirectTake(this.handle);
    return it && { session: it[0], chunk: it[1] };
  }
  /**
   * Whether a thread is loading chunk i into the table right now (state() says absent until it commits):
   * a fetch of it would only find its slot busy.
   */
  filling(i: number): boolean {
    return addon().tableFilling(this.handle, i);
  }
  /** Touches the stages once, so that the first loads into them do not pay for it (tableWarmStages). */
  warmStages(): void {
    addon().tableWarmStages(this.handle);
  }
  /**
   * Chunk i's bytes in the arena. Write them only between reserve() and commit(); read resident bytes
   * through pin() instead (they may be in a stage, and they may be given back under you).
   */
  slot(i: number): Uint8Array {
    return this.#view(i * this.chunkSize, i);
  }
  #view(offset: number, i: number): Uint8Array {
    this.#arena ??= addon().tableArena(this.handle);
    return new Uint8Array(this.#arena, offset, this.chunkLength(i));
  }
  /**
   * Resident chunk i's bytes (in its slot or its stage), kept in place until unpin(i, bytes) whatever
   * evicts it meanwhile; undefined when it is not resident.
   */
  pin(i: number): Uint8Array | undefined {
    const off = addon().tablePin(this.handle, i);
    return off < 0 ? undefined : this.#view(off, i);
  }
  unpin(i: number, bytes: Uint8Array): void {
    addon().tableUnpin(this.handle, i, bytes.byteOffset);
  }
  /** A copy of resident chunk i's bytes, or undefined when it is not resident. */
  read(i: number): Buffer | undefined {
    const bytes = this.pin(i);
    if (!bytes) return undefined;
    try {
      return Buffer.from(bytes);
    } finally {
      this.unpin(i, bytes);
    }
  }

  setZero(i: number): void {
    addon().tableSetZero(this.handle, i);
  }
  /** Bulk setZero: flags[i] !== 0 marks chunk i zero (when it is absent). */
  markZero(flags: Uint8Array): void {
    addon().tableMarkZero(this.handle, flags);
  }
  /**
   * How many times staged chunk i was read from its stage since it was loaded (each install, each
   * fault served from it), or -1 when it is not staged.
   */
  stageUses(i: number): number {
    return addon().tableStageUses(this.handle, i);
  }
  /** Drops chunk i's resident bytes; returns the bytes freed. */
  evict(i: number): number {
    return addon().tableEvict(this.handle, i);
  }
  state(i: number): ChunkState {
    return STATES[addon().tableState(this.handle, i)] ?? 'absent';
  }
  stats() {
    return addon().tableStats(this.handle);
  }
}

export interface Region {
  /** Host virtual address of the region's first byte in the peer. */
  base: bigint;
  size: number;
  /** Offset of the region in the snapshot image. */
  offset: number;
}

export interface FaultSessionOptions {
  table: ChunkTable;
  pageSize: PageSize;
  regions: readonly Region[];
  /**
   * Report, as `touched`, chunks whose first fault was served from the resident table (absent chunks
   * arrive as `need` anyway): with both, JS sees the session's whole first-touch order, which is
   * what working-set recording needs. @default false
   */
  reportTouches?: boolean;
  /**
   * Direct mode, from the first fault on: the session is shared (share()), and a fault on an absent chunk
   * goes to the table's direct demand queue, for the loader threads attached to it (ChunkTable.directAttach),
   * reported as `claimed` rather than `need`. With no loader attached, the queue full, or the share
   * registry full: `need`, as without it. @default false
   */
  direct?: boolean;
  /**
   * Adopt a session another server (or an earlier worker) served: a descriptor of its state memfd
   * (stateFd() there). The removed pages and installed chunks it recorded carry over; the thread
   * re-applies the events it may have read last, drains what is pending and wakes every region, so
   * threads that faulted while nobody served fault again. The descriptor is duplicated, not taken.
   * Throws EPROTO for a state of another layout version, EINVAL for another snapshot geometry.
   */
  stateFd?: number;
}

/** Counters kept by the fault thread (monotonic; read with stats()). */
export interface SessionStats {
  faults: number;
  zeroFaults: number;
  residentFaults: number;
  removedFaults: number;
  /** Faults on absent chunks that were handed to JS (one per chunk, however many faults). */
  forwardedFaults: number;
  staleFaults: number;
  removes: number;
  unknownEvents: number;
  installs: number;
  poisons: number;
  missing: number;
  bytesCopied: number;
  bytesZeroed: number;
  bytesPoisoned: number;
  pagesPresent: number;
  partialCopies: number;
  mmapChangingRetries: number;
  notifications: number;
  /** Nanoseconds from session creation to the first page made present (0: none yet). */
  firstServedNs: number;
  /** Fills the kernel refused whole (a range across VMAs) and that were retried in halves. */
  narrowedFills: number;
  /** Pages the kernel refused on their own (reported as failures). */
  failedPages: number;
  /** Wakes of every region (faults dropped from a full queue, or adoption). */
  wakeAlls: number;
  /** REMOVE events a predecessor read and this session applied again on adoption. */
  adoptedRemoves: number;
  /**
   * Faults that waited across a handover (a worker restart, an upgrade): those pending when the session
   * was adopted, and those its wake of every region sent back (faults the predecessor read, never served).
   */
  adoptedFaults: number;
  /** Faults on absent chunks handed to the loader threads through the direct demand queue (of forwardedFaults). */
  directFaults: number;
}

/**
 * One userfaultfd served by a native thread. Takes ownership of `uffd` (closed by close()).
 * `onEvent` runs on the JS thread with batches: `need` (absent chunks a fault waits for: put them
 * in the table, then install()), `installed`, `poisoned`, `missing` (install() found no bytes),
 * `failures` (typed: runtime/native-failure.ts decides what each means), `exited` (the address
 * space is gone) and `stopped` (the thread no longer serves; a failure says why).
 */
export class FaultSession {
  readonly #handle: Handle<'session'>;
  readonly #onEvent: (e: SessionEvent) => void;
  #shared: number | undefined;
  readonly #chunks: number;
  #closed = false;

  constructor(uffd: number, options: FaultSessionOptions, onEvent: (e: SessionEvent) => void) {
    checkInt('uffd', uffd, 0, 2 ** 31 - 1);
    checkPageSize(options.pageSize);
    if (!(options.table instanceof ChunkTable))
      throw new InvalidArgumentError('table', 'a ChunkTable', options.table);
    if (!isNonEmptyArray(options.regions)) {
      throw new InvalidArgumentError('regions', 'a non-empty array of {base, size, offset}', options.regions);
    }
    this.#chunks = options.table.chunks;
    this.#handle = addon().sessionCreate(
      uffd,
      {
        table: options.table.handle,
        pageSize: options.pageSize,
        regions: options.regions.map((r) => ({ ...r })),
        reportTouches: options.reportTouches ?? false,
        ...(options.direct ? { direct: true } : {}),
        ...(options.stateFd !== undefined ? { stateFd: options.stateFd } : {}),
      },
      onEvent,
    );
    this.#onEvent = onEvent;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Queues whole-chunk installs from the table (skipping present pages; waking every waiter). */
  install(chunks: number | Uint32Array): void {
    this.#check(chunks);
    addon().sessionInstall(this.#handle, chunks);
  }

  /**
   * An id by which any thread of this process may queue an install for this session
   * (installSharedSession): the chunk loaders install a chunk they verified for the sessions JS named,
   * without a round trip through the event loop. The id dies with close(); it is never reused.
   */
  share(): number {
    this.#shared ??= addon().sessionShare(this.#handle);
    return this.#shared;
  }

  /** Queues poisoning of the chunks' missing pages: a thread touching them gets SIGBUS. */
  poison(chunks: number | Uint32Array): void {
    this.#check(chunks);
    addon().sessionPoison(this.#handle, chunks);
  }

  /** Queues a wake of every thread waiting in the chunks: present pages resume, missing ones fault again. */
  wake(chunks: number | Uint32Array): void {
    this.#check(chunks);
    addon().sessionWake(this.#handle, chunks);
  }

  /** A new descriptor of this session's state memfd (for a successor to adopt); the caller closes it. */
  stateFd(): number {
    if (this.#closed) throw new SessionClosedError();
    return addon().sessionStateFd(this.#handle);
  }

  /**
   * Test builds only (LAZYSNAP_NATIVE_BUILD=test): makes the fault thread fail on purpose after `after`
   * more opportunities: 'event-read' (read(uffd) returns EIO) or 'out-of-memory' (an output is lost).
   */
  inject(kind: 'event-read' | 'out-of-memory', after = 1): void {
    const a = addon();
    if (!a.sessionInject)
      throw new Error('fault injection needs the test build of the addon (LAZYSNAP_NATIVE_BUILD=test)');
    a.sessionInject(this.#handle, kind === 'event-read' ? 5 : 7, after);
  }

  /** Counters so far; a fault is counted just after the ioctl that wakes it. Final after close(). */
  stats(): SessionStats {
    return addon().sessionStats(this.#handle) as unknown as SessionStats;
  }

  /** Stops the thread and closes the uffd. Idempotent. */
  /**
   * Delivers what the fault thread has reported and JS not yet heard (to onEvent, now): before close(), so
   * that reports it holds back a moment (installs done, chunks claimed by the loaders) are not lost with the
   * session. Nothing after a close().
   */
  drain(): void {
    if (this.#closed) return;
    const e = addon().sessionDrain(this.#handle);
    if (e) this.#onEvent(e);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    addon().sessionClose(this.#handle);
  }

  #check(chunks: number | Uint32Array): void {
    if (this.#closed) throw new SessionClosedError();
    if (typeof chunks === 'number') checkInt('chunk', chunks, 0, this.#chunks - 1);
    else if (!(chunks instanceof Uint32Array))
      throw new InvalidArgumentError('chunks', 'a number or Uint32Array', chunks);
  }
}

export * from './sys.js';

/**
 * Queues a whole-chunk install for the session shared as `id` (FaultSession.share()), from any thread;
 * false when that session is closed. The chunk must be resident in the session's table already.
 */
export function installSharedSession(id: number, chunk: number): boolean {
  return addon().sessionInstallShared(id, chunk);
}
