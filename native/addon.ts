/**
 * Loads the compiled addon and types its raw surface. Callers use native/index.ts, which validates
 * arguments and wraps handles in classes; this file is only the binding contract.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { NativeUnavailableError, type SystemError } from '../core/errors.js';

declare const handle: unique symbol;
/** An opaque native handle (a tagged napi external). */
export type Handle<T extends string> = { readonly [handle]: T };

/**
 * What can fail in the native fault path (native/src/session_internal.h, fail_kind). The native side
 * only reports; runtime/native-failure.ts decides what each means.
 */
export const FAILURE_KINDS = [
  'copy',
  'zeropage',
  'wake',
  'poison',
  'event-read',
  'thread-exit',
  'out-of-memory',
  'outside-regions',
  'injected',
] as const;
export type FailureKind = (typeof FAILURE_KINDS)[number] | 'unknown';

/** One native failure: its kind, the errno name (`ENOENT`), where (chunk, peer address, length). */
export interface NativeFailure {
  kind: FailureKind;
  /** The errno name, as Node names it ('ENOENT', 'ENOMEM', ...). */
  code: string;
  /** Negative, as Node's system errors carry it. */
  errno: number;
  /** The call or step that failed, for messages. */
  syscall: string;
  /** The chunk concerned, when the failure is about one. */
  chunk?: number;
  /** The first byte concerned in the peer's address space, when known. */
  address?: bigint;
  /** Bytes concerned from `address` (refused pages in a row are reported once). */
  length: number;
}

export interface RawSessionEvent {
  need: Uint32Array;
  /** When the fault thread read each `need`'s fault: CLOCK_MONOTONIC ms, the clock of process.hrtime(). */
  needAt: Float64Array;
  installed: Uint32Array;
  /** When each `installed` chunk's copy woke the peer (same clock). */
  installedAt: Float64Array;
  poisoned: Uint32Array;
  missing: Uint32Array;
  /** With reportTouches: chunks whose first fault was served from the resident table. */
  touched: Uint32Array;
  /**
   * In direct mode (sessionCreate option `direct`): absent chunks a fault waits for that went to the loaders through the table's
   * direct queue (they are not in `need`: JS has not to fetch them, only to hear how their load went).
   */
  claimed: Uint32Array;
  /** When each `claimed` chunk's fault was read (the clock of needAt). */
  claimedAt: Float64Array;
  failures: NativeFailure[];
  /** The peer's address space is gone (it exited). */
  exited: boolean;
  /** The fault thread stopped serving (a `thread-exit` or `event-read` failure says why). */
  stopped: boolean;
}

export interface RawRegion {
  base: bigint | number;
  size: number;
  offset: number;
}

export interface RecvResult {
  data: Buffer;
  fds: number[];
  truncated: boolean;
  fdsTruncated: boolean;
}

export interface FillResult {
  bytes: number;
  pagesPresent: number;
}

export interface Addon {
  uffdCreate(opts?: { nonBlocking?: boolean; userModeOnly?: boolean }): number;
  uffdApi(fd: number, features: bigint): { features: bigint; ioctls: bigint };
  uffdRegister(fd: number, address: bigint, length: number, mode: bigint): bigint;
  uffdUnregister(fd: number, address: bigint, length: number): void;
  uffdWake(fd: number, address: bigint, length: number): void;
  uffdCopy(fd: number, address: bigint, source: ArrayBufferView, pageSize?: number): FillResult;
  uffdZeropage(fd: number, address: bigint, length: number, pageSize?: number): FillResult;
  uffdPoison(fd: number, address: bigint, length: number, pageSize?: number): FillResult;

  tableCreate(totalSize: number, chunkSize: number, hugePages?: boolean): Handle<'table'>;
  tablePut(t: Handle<'table'>, chunk: number, bytes: ArrayBufferView): void;
  tableSetZero(t: Handle<'table'>, chunk: number): void;
  tableMarkZero(t: Handle<'table'>, flags: Uint8Array): void;
  tableEvict(t: Handle<'table'>, chunk: number): number;
  tableShare(t: Handle<'table'>): number;
  tableUnshare(t: Handle<'table'>): void;
  tableOpen(id: number): Handle<'table'>;
  tableArena(t: Handle<'table'>): ArrayBuffer;
  /** The offset in tableArena's buffer to write chunk `chunk` at, or -1 when it is not absent. */
  tableReserve(t: Handle<'table'>, chunk: number, stage: boolean): number;
  tableCommit(t: Handle<'table'>, chunk: number, ok: boolean): void;
  /** Bytes of the staged chunk still to copy to its slot after this call (0: settled, or not staged). */
  tableSettle(t: Handle<'table'>, chunk: number, maxBytes: number): number;
  /** Settles every staged chunk no thread is settling; returns how many. */
  tableSettleAll(t: Handle<'table'>): number;
  tableStageUses(t: Handle<'table'>, chunk: number): number;
  tableWarmStages(t: Handle<'table'>): void;
  tableFilling(t: Handle<'table'>, chunk: number): boolean;
  /** Attaches this thread to the table's direct demand queue: onWork() is called when items wait. */
  tableDirectAttach(t: Handle<'table'>, onWork: () => void): void;
  /** The next (session share id, chunk) in the direct demand queue, if any. */
  tableDirectTake(t: Handle<'table'>): [session: number, chunk: number] | undefined;
  /** The offset in tableArena's buffer of the pinned bytes, or -1 when the chunk is not resident. */
  tablePin(t: Handle<'table'>, chunk: number): number;
  tableUnpin(t: Handle<'table'>, chunk: number, offset: number): void;
  tableState(t: Handle<'table'>, chunk: number): number;
  tableStats(t: Handle<'table'>): {
    chunks: number;
    chunkSize: number;
    totalSize: number;
    residentBytes: number;
    residentChunks: number;
    zeroChunks: number;
    /** Stage buffers (ChunkTable.reserveStaged), how many hold a chunk not yet settled, how many are in use. */
    stages: number;
    stagedChunks: number;
    busyStages: number;
    /** Staged reservations that found every stage taken and went to the chunk's slot instead. */
    stageMisses: number;
    arenaAddress: bigint;
    arenaBytes: number;
  };

  sessionCreate(
    uffd: number,
    opts: {
      table: Handle<'table'>;
      pageSize: number;
      regions: RawRegion[];
      reportTouches?: boolean;
      direct?: boolean;
      stateFd?: number;
    },
    onEvent: (e: RawSessionEvent) => void,
  ): Handle<'session'>;
  sessionWake(s: Handle<'session'>, chunks: number | Uint32Array): void;

  socketPair(): [number, number];
  memfdCreate(name: string): number;
  mapShared(fd: number, length: number): ArrayBuffer;
  setNoNewPrivs(): void;
  /** Denies these system calls (this architecture's numbers) with `errno` in every thread, for good. */
  seccompDeny(numbers: number[], errno: number): void;
  dupFd(fd: number): number;
  datagramSend(path: string, data: ArrayBufferView, fds: number[]): void;
  stateLayout(fd: number): {
    version: number;
    metaOffset: number;
    metaMax: number;
    installedOffset: number;
    installedLength: number;
    chunks: number;
    adoptions: number;
  };
  /** Test builds only (lazysnap_test.node): dies with SIGSEGV, as a decoder bug would. */
  testCrash?: () => void;
  readonly STATE_VERSION: number;
  sessionStateFd(s: Handle<'session'>): number;
  /** Test builds only (lazysnap_test.node). */
  sessionInject?(s: Handle<'session'>, kind: number, after: number): void;
  readonly FAULT_INJECTION?: number;
  sessionInstall(s: Handle<'session'>, chunks: number | Uint32Array): void;
  sessionShare(s: Handle<'session'>): number;
  sessionInstallShared(id: number, chunk: number): boolean;
  sessionDrain(s: Handle<'session'>): RawSessionEvent | undefined;
  sessionPoison(s: Handle<'session'>, chunks: number | Uint32Array): void;
  sessionStats(s: Handle<'session'>): Record<string, number>;
  sessionClose(s: Handle<'session'>): void;

  sockListen(path: string, backlog: number, seqpacket?: boolean): number;
  sockAccept(fd: number): number;
  sockConnect(path: string, seqpacket?: boolean): number;
  sockRecv(fd: number, maxBytes: number, maxFds: number): RecvResult | null;
  sockSend(fd: number, data: ArrayBufferView, fds: number[]): number;
  sockPeerCred(fd: number): { pid: number; uid: number; gid: number };
  sockPeerPidfd(fd: number): number;
  pidfdOpen(pid: number): number;
  /** The calling thread to SCHED_IDLE; returns its thread id. */
  schedIdleThread(): number;
  pidfdSendSignal(pidfd: number, signal: number): void;
  closeFd(fd: number): void;

  mmapAnonymous(length: number, hugetlb: boolean): bigint;
  munmap(address: bigint, length: number): void;
  /** Reads the byte at address on a libuv pool thread (a fault there, served while JS runs). */
  touchAsync(address: bigint): Promise<number>;
  madvise(address: bigint, length: number, advice: number): void;
  processVmRead(pid: number, remoteAddress: bigint, target: ArrayBufferView): number;
  kill(pid: number, signal: number): void;
  arrayBufferAt(address: bigint, length: number): ArrayBuffer;
  addressOf(view: ArrayBufferView): bigint;

  fileDataExtents(fd: number): [number, number][];

  watchStart(
    fd: number,
    events: number,
    cb: (err: SystemError | null, events: number) => void,
  ): Handle<'watch'>;
  watchStop(w: Handle<'watch'>): void;

  readonly UFFD_FEATURE_EVENT_REMOVE: number;
  readonly UFFD_FEATURE_EVENT_FORK: number;
  readonly UFFD_FEATURE_EVENT_UNMAP: number;
  readonly UFFD_FEATURE_MISSING_HUGETLBFS: number;
  readonly UFFD_FEATURE_SIGBUS: number;
  readonly UFFD_FEATURE_THREAD_ID: number;
  readonly UFFD_FEATURE_EXACT_ADDRESS: number;
  readonly UFFD_FEATURE_POISON: number;
  readonly UFFDIO_REGISTER_MODE_MISSING: number;
  readonly UFFDIO_REGISTER_MODE_WP: number;
  readonly UFFDIO_REGISTER_MODE_MINOR: number;
  readonly _UFFDIO_COPY: number;
  readonly _UFFDIO_ZEROPAGE: number;
  readonly _UFFDIO_WAKE: number;
  readonly _UFFDIO_POISON: number;
  readonly MADV_DONTNEED: number;
  readonly MADV_REMOVE: number;
  readonly MADV_WILLNEED: number;
  readonly PAGE_SIZE: number;
}

const here = path.dirname(fileURLToPath(import.meta.url));
/** Source tree (native/) and compiled tree (dist/native/) both find the one build output. */
/**
 * LAZYSNAP_NATIVE_BUILD=test loads lazysnap_test.node, the same sources built with the fault-injection
 * hooks the test suites need (binding.gyp); nothing else ever loads it.
 */
const name = process.env.LAZYSNAP_NATIVE_BUILD === 'test' ? 'lazysnap_test.node' : 'lazysnap.node';
const candidates = [
  path.join(here, 'build', 'Release', name),
  path.join(here, '..', '..', 'native', 'build', 'Release', name),
  path.join(here, 'build', 'Debug', name),
];

function load(): Addon {
  const file = candidates.find((c) => existsSync(c));
  if (!file) {
    throw new NativeUnavailableError(
      `the native addon is not built (looked for ${candidates[0]}); run \`npm run build:native\``,
    );
  }
  try {
    return createRequire(import.meta.url)(file) as Addon;
  } catch (cause) {
    throw new NativeUnavailableError(
      `the native addon at ${file} failed to load (built for another Node version? run \`npm run build:native\`)`,
      cause,
    );
  }
}

let cached: Addon | undefined;
/** The addon, loaded on first use so that importing lazysnap never fails on a machine without it. */
export function addon(): Addon {
  return (cached ??= load());
}
