/**
 * attach(): restore a snapshot lazily into memory of this Node process (a WebAssembly.Memory, a
 * page-aligned ArrayBuffer, or a region the SDK maps). The calling thread keeps running and faults
 * on the memory like any program; the runtime (a RestoreServer, the same one `lazysnap serve` runs)
 * lives in a worker thread and receives the memory's userfaultfd through the Firecracker handshake
 * over a private socket, so the two halves are exactly the CLI's.
 *
 * Configurations that would deadlock or corrupt are refused before anything is registered:
 * - memory that shares pages with the allocator (a plain `new ArrayBuffer(n)` lives inside malloc's
 *   pages: registering them would make unrelated objects fault, possibly on the thread that serves);
 * - memory that is not private anonymous (files, shared memory: their pages are not ours to drop);
 * - store objects, loggers or key callbacks: they live on the calling thread, which is blocked while
 *   it waits for a fault, so the runtime could never call them. Only URLs and plain data cross.
 *
 * The memory's previous contents are discarded (MADV_DONTNEED) so that every page faults.
 * Unprivileged, the uffd is user-mode-only: the kernel then cannot fault the memory on our behalf,
 * and a system call that reads or writes it (fs.writeSync from a view, read(2) into it) fails with
 * EFAULT until the pages it touches are populated (see docs/SDK.md).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { HandshakeError, InvalidArgumentError, UffdUnavailableError } from '../core/errors.js';
import { startModuleWorker } from '../core/worker.js';
import {
  addressOf,
  arrayBufferAt,
  closeFd,
  connectUnix,
  constants,
  createUffd,
  madvise,
  mmapAnonymous,
  munmap,
  sendWithFds,
  uffdApi,
  uffdPoison,
  uffdRegister,
  uffdUnregister,
} from '../native/index.js';
import type { LiveSessionStats, ServeOptions, SessionSummary } from '../runtime/restore-server.js';
import { parseMaps } from '../snapshotter/process-source.js';
import type {} from '../core/webassembly.js';
import type { AttachWorkerData } from './attach-worker.js';
import { WorkerLink } from './attach-link.js';

const PAGE = 4096;

/** Serve options that make sense in-process (no socket, metrics or peer policy: the peer is us). */
export type AttachServeOptions = Omit<
  ServeOptions,
  | 'socketPath'
  | 'logger'
  | 'metricsPort'
  | 'metricsHost'
  | 'allowUids'
  | 'socketGroup'
  | 'handshakeTimeoutMs'
  | 'shutdownGraceMs'
  | 'keys'
  | 'verifyKey'
> & {
  /** A public key (PEM text): only a manifest it signed is restored. Key objects cannot cross to the runtime's thread. */
  verifyKey?: string;
};

export interface AttachOptions extends AttachServeOptions {
  /** The runtime's log level (it logs to stderr from its worker). @default 'warn' */
  logLevel?: string;
  /**
   * UFFD_USER_MODE_ONLY: what an unprivileged process gets. true forces it, false refuses to fall
   * back to it. @default tried privileged first, then user-mode-only
   */
  userModeOnly?: boolean;
  signal?: AbortSignal;
}

/** What attach() maps for you when given a size instead of memory. */
export interface MapRequest {
  size: number;
}

export type AttachTarget = WebAssembly.Memory | ArrayBuffer | SharedArrayBuffer | MapRequest;

export interface Attachment {
  /** The restored memory (for a WebAssembly.Memory, its buffer at attach time). */
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  readonly address: bigint;
  /** Bytes restored (the snapshot's size; the memory may be larger, the rest is left as it was). */
  readonly size: number;
  /** True when the uffd is user-mode-only (unprivileged): kernel accesses get EFAULT. */
  readonly userModeOnly: boolean;
  readonly restoreId: string;
  /** The session's figures so far (faults, zero faults, fetched chunks and bytes...). */
  stats(): Promise<LiveSessionStats>;
  /** Fetches every chunk not yet in (an eager restore); resolves when all are installed. */
  populate(): Promise<void>;
  /**
   * Populates whatever is still missing, then stops the runtime and unregisters the memory, which
   * stays as restored. Returns the session summary. Idempotent.
   */
  detach(): Promise<SessionSummary | undefined>;
  /** For memory attach() mapped ({ size }): unmaps it. Drop every view of `buffer` first. */
  unmap(): void;
}

function checkStores(o: AttachOptions): void {
  if (!Array.isArray(o.stores) || o.stores.length === 0 || !o.stores.every((s) => typeof s === 'string')) {
    throw new InvalidArgumentError(
      'stores',
      'store URLs (strings): objects live on the attaching thread, which blocks while it faults',
      o.stores,
    );
  }
  for (const [k, v] of Object.entries(o)) {
    if (
      typeof v === 'function' ||
      (k !== 'stores' && k !== 'signal' && v !== null && typeof v === 'object')
    ) {
      throw new InvalidArgumentError(
        k,
        'plain data: a callback or object would have to run on the attaching thread, which blocks while it faults',
        typeof v,
      );
    }
  }
}

function targetBuffer(target: AttachTarget): { buffer: ArrayBuffer | SharedArrayBuffer; mapped: boolean } {
  if (target instanceof WebAssembly.Memory) return { buffer: target.buffer, mapped: false };
  if (target instanceof ArrayBuffer || target instanceof SharedArrayBuffer)
    return { buffer: target, mapped: false };
  if (target && typeof target === 'object' && 'size' in target) {
    const { size } = target;
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE)
      throw new InvalidArgumentError('size', 'a positive multiple of 4096', size);
    return { buffer: arrayBufferAt(mmapAnonymous(size), size), mapped: true };
  }
  throw new InvalidArgumentError(
    'target',
    'a WebAssembly.Memory, an ArrayBuffer, a SharedArrayBuffer or { size }',
    target,
  );
}

function checkAligned(address: bigint): void {
  if (address % BigInt(PAGE) !== 0n) {
    throw new InvalidArgumentError(
      'target',
      'page-aligned memory (a WebAssembly.Memory, or { size } for memory the SDK maps); this buffer starts inside an allocator page it shares with other objects',
      `0x${address.toString(16)}`,
    );
  }
}

/** Refuses memory whose pages are not wholly ours: see the module comment. */
async function checkMemory(address: bigint, size: number): Promise<void> {
  checkAligned(address);
  const end = address + BigInt(size);
  let at = address;
  for (const m of parseMaps(await readFile('/proc/self/maps', 'utf8'))) {
    if (m.end <= at || m.start > at) continue;
    if (m.path !== '' || m.perms[0] !== 'r' || m.perms[1] !== 'w' || m.perms[3] !== 'p') {
      throw new InvalidArgumentError(
        'target',
        'private anonymous read-write memory',
        `a ${m.perms} mapping of ${m.path || 'anonymous memory'} at 0x${m.start.toString(16)}`,
      );
    }
    at = m.end;
    if (at >= end) return;
  }
  throw new InvalidArgumentError('target', 'memory mapped in full', `a hole at 0x${at.toString(16)}`);
}

function openUffd(mode: boolean | undefined): { fd: number; userModeOnly: boolean } {
  if (mode === true) return { fd: createUffd({ userModeOnly: true }), userModeOnly: true };
  if (mode === false) return { fd: createUffd(), userModeOnly: false };
  try {
    return { fd: createUffd(), userModeOnly: false };
  } catch (e) {
    if (!(e instanceof UffdUnavailableError)) throw e;
    // In-process restore only needs faults taken in user mode, which unprivileged users may handle.
    return { fd: createUffd({ userModeOnly: true }), userModeOnly: true };
  }
}

/**
 * Restores snapshot `options.id` from `options.stores` into `target`, lazily. Resolves once the
 * runtime serves the memory; from then on any read of it faults the missing chunk in.
 */
export async function attach(target: AttachTarget, options: AttachOptions): Promise<Attachment> {
  checkStores(options);
  const { signal, logLevel = 'warn', userModeOnly, ...serve } = options;
  signal?.throwIfAborted();
  const { buffer, mapped } = targetBuffer(target);
  const address = addressOf(new Uint8Array(buffer, 0, Math.min(1, buffer.byteLength)));
  try {
    checkAligned(address);
  } catch (e) {
    if (mapped) munmap(address, buffer.byteLength);
    throw e;
  }
  let dir: string | undefined;
  let link: WorkerLink | undefined;
  let uffd = -1;
  let conn = -1;
  let registered = 0;
  // Every step on its own: one that fails must not leave the others undone, nor hide the error.
  const cleanup = async () => {
    const steps: (() => unknown)[] = [
      () => registered && uffdUnregister(uffd, address, registered),
      () => conn >= 0 && closeFd(conn),
      () => uffd >= 0 && closeFd(uffd),
      () => link?.terminate(),
      () => dir && rmSync(dir, { recursive: true, force: true }),
      () => mapped && munmap(address, buffer.byteLength),
    ];
    for (const step of steps)
      await Promise.resolve()
        .then(step)
        .catch(() => {});
  };
  try {
    dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-attach-')); // 0700: the socket is private
    const socketPath = path.join(dir, 'uffd.sock');
    const data: AttachWorkerData = {
      serve: { ...serve, socketPath, handshakeTimeoutMs: 5000, shutdownGraceMs: 0 },
      logLevel,
    };
    link = new WorkerLink(
      startModuleWorker(new URL('./attach-worker.js', import.meta.url), { workerData: data }),
    );
    const ready = await link.waitFor(['ready'], signal);
    const size = ready.totalSize;
    if (ready.pageSize !== PAGE)
      throw new InvalidArgumentError(
        'id',
        'a snapshot of 4 KiB pages (hugepage snapshots restore into hugetlb memory)',
        ready.pageSize,
      );
    if (buffer.byteLength < size)
      throw new InvalidArgumentError(
        'target',
        `memory of at least the snapshot's ${size} bytes`,
        buffer.byteLength,
      );
    await checkMemory(address, size);
    const u = openUffd(userModeOnly);
    uffd = u.fd;
    uffdApi(uffd, constants().UFFD_FEATURE_EVENT_REMOVE);
    // Drop what is there so that every page faults: a present page would never reach the runtime.
    madvise(address, size, constants().MADV_DONTNEED);
    uffdRegister(uffd, address, size);
    registered = size;
    conn = connectUnix(socketPath);
    const session = link.waitFor(['session', 'rejected'], signal);
    sendWithFds(
      conn,
      Buffer.from(
        JSON.stringify([{ base_host_virt_addr: Number(address), size, offset: 0, page_size: PAGE }]),
      ),
      [uffd],
    );
    const s = await session;
    if (s.type === 'rejected') throw new HandshakeError(s.reason);
    link.unref();
    return new LiveAttachment(
      buffer,
      address,
      size,
      u.userModeOnly,
      s.restoreId,
      mapped,
      link,
      uffd,
      conn,
      dir,
    );
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/**
 * Fails closed when the runtime cannot finish: poisons every page not yet restored (a touch raises
 * SIGBUS), or where the kernel cannot poison, kills this process; either beats a hang or zeros.
 */
function failClosedLocally(uffd: number, address: bigint, size: number): void {
  try {
    uffdPoison(uffd, address, size);
  } catch {
    process.kill(process.pid, 'SIGKILL');
  }
}

class LiveAttachment implements Attachment {
  #detached: Promise<SessionSummary | undefined> | undefined;
  #unmapped = false;

  constructor(
    readonly buffer: ArrayBuffer | SharedArrayBuffer,
    readonly address: bigint,
    readonly size: number,
    readonly userModeOnly: boolean,
    readonly restoreId: string,
    readonly mapped: boolean,
    readonly link: WorkerLink,
    readonly uffd: number,
    readonly conn: number,
    readonly dir: string,
  ) {
    // Fail closed if the runtime dies under us: poison every page not yet restored (a touch then
    // raises SIGBUS) rather than leave this thread to wait forever on a fault nobody serves.
    // (Only while this thread's event loop runs: a thread blocked in a fault when the worker dies
    // stays blocked; see docs/SDK.md.)
    link.onGone = () => {
      if (!this.#detached) failClosedLocally(uffd, address, size);
    };
  }

  stats(): Promise<LiveSessionStats> {
    return this.link.request<LiveSessionStats>('stats');
  }

  populate(): Promise<void> {
    return this.link.request<void>('populate');
  }

  detach(): Promise<SessionSummary | undefined> {
    this.#detached ??= (async () => {
      try {
        try {
          await this.link.request('populate');
        } catch (e) {
          // Once unregistered, a page never restored would read as zeros: poison what is missing.
          failClosedLocally(this.uffd, this.address, this.size);
          throw e;
        }
        // Every data chunk is in; what is still missing is zero in the snapshot (or was removed),
        // which is what an unregistered anonymous page reads as. Unregister first, so no fault can
        // reach the runtime any more, then the runtime ends the session and closes its uffd copy.
        uffdUnregister(this.uffd, this.address, this.size);
        return await this.link.request<SessionSummary | undefined>('close');
      } finally {
        closeFd(this.conn);
        closeFd(this.uffd);
        await this.link.terminate();
        rmSync(this.dir, { recursive: true, force: true });
      }
    })();
    return this.#detached;
  }

  unmap(): void {
    if (!this.mapped)
      throw new InvalidArgumentError(
        'unmap',
        'memory that attach() mapped ({ size })',
        'caller-owned memory',
      );
    if (!this.#detached) throw new InvalidArgumentError('unmap', 'a detached attachment', 'still attached');
    if (this.#unmapped) return;
    this.#unmapped = true;
    munmap(this.address, this.buffer.byteLength);
  }
}
