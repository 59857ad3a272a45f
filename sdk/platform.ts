/**
 * The one call a function platform makes for a lazy microVM restore: RestoreHost.restore() starts
 * (or reuses) the restore server for the snapshot, fetches and verifies its vmstate once, and
 * drives Firecracker's snapshot load with the Uffd memory backend pointing at that server. Every
 * restore of the same snapshot on the host shares one server: one chunk table, one fetch per chunk.
 */
import { createHash } from 'node:crypto';
import { rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { context, trace, type Context } from '@opentelemetry/api';

import { HostClosedError, InvalidArgumentError, NotFoundError } from '../core/errors.js';
import { RestoreServer, type ServeOptions } from '../runtime/restore-server.js';
import { prepareSocketDir } from '../runtime/serve-socket.js';
import { SPAN, TRACER_NAME } from '../runtime/tracing.js';
import { assertSnapshotId } from '../store/keys.js';
import { FirecrackerClient, type LoadSnapshotParams } from './firecracker-client.js';

export interface SnapshotRef {
  id: string;
  /** Store URLs in the order they are tried (e.g. the HTTP cache tier, then s3://). */
  stores: string[];
}

export interface RestoreHostOptions {
  /**
   * Where the host keeps serve sockets and vmstate files. Created 0700; it must not be writable
   * by anyone else (a socket path another user can replace is a hijacked restore).
   */
  runtimeDir: string;
  /** Options for every server the host starts (stores, id and socket are per snapshot). */
  serve?: Omit<ServeOptions, 'stores' | 'id' | 'socketPath'>;
}

export interface LazyRestoreOptions {
  snapshot: SnapshotRef;
  /** The microVM's Firecracker API socket, or a client for it. */
  firecracker: string | FirecrackerClient;
  /** Resume the microVM once loaded. @default true */
  resumeVm?: boolean;
  /** Further snapshot-load fields (network and vsock overrides, dirty page tracking, kvmclock). */
  load?: Omit<LoadSnapshotParams, 'snapshotPath' | 'memBackend' | 'resumeVm'>;
  signal?: AbortSignal;
  /**
   * The platform's trace context (an OpenTelemetry Context, e.g. `context.active()` inside its request
   * span): the restore's spans (`lazysnap.host.restore`, and the session's `lazysnap.restore` with its
   * fetches) become its children. Needs a tracer provider registered in this process (core/otel.ts
   * startTracing, or the platform's own). @default the active context
   */
  traceContext?: Context;
  /**
   * The Firecracker process's pid, if the platform knows it (it spawned it): the session whose peer is
   * that pid gets the trace parent. Without it, the next session of this snapshot to start does.
   */
  firecrackerPid?: number;
}

export interface LazyRestoreResult {
  server: RestoreServer;
  /** True when the snapshot's server was already running on this host. */
  reusedServer: boolean;
  socketPath: string;
  vmstatePath: string;
  /** Milliseconds spent: starting (or finding) the server, the vmstate, Firecracker's load call. */
  timings: { serverMs: number; vmstateMs: number; loadMs: number };
}

/** How long after Firecracker's load call a restore's trace context waits for its session. */
const SESSION_PARENT_GRACE_MS = 5000;

interface Entry {
  server: Promise<RestoreServer>;
  vmstate: Promise<string> | undefined;
}

export class RestoreHost {
  readonly runtimeDir: string;
  readonly #serve: RestoreHostOptions['serve'];
  readonly #entries = new Map<string, Entry>();
  #closed = false;

  constructor(options: RestoreHostOptions) {
    if (typeof options?.runtimeDir !== 'string' || options.runtimeDir === '')
      throw new InvalidArgumentError('runtimeDir', 'a directory path', options?.runtimeDir);
    this.runtimeDir = path.resolve(options.runtimeDir);
    this.#serve = options.serve;
    // serve's own rule for a socket's directory (created 0700; refused if others could write it or
    // a parent without the sticky bit): checked now, so a bad host fails at start, not first restore.
    prepareSocketDir(path.join(this.runtimeDir, 'restore.sock'), options.serve?.socketGroup);
  }

  #key(ref: SnapshotRef): string {
    assertSnapshotId(ref?.id, 'snapshot.id');
    if (
      !Array.isArray(ref.stores) ||
      ref.stores.length === 0 ||
      !ref.stores.every((s) => typeof s === 'string')
    ) {
      throw new InvalidArgumentError('snapshot.stores', 'one or more store URLs', ref.stores);
    }
    return `${ref.id}\n${ref.stores.join('\n')}`;
  }

  /** The running server for a snapshot, started on first use and shared by later restores. */
  server(ref: SnapshotRef, signal?: AbortSignal): Promise<RestoreServer> {
    return detachable(this.#entry(ref).entry.server, signal);
  }

  #entry(ref: SnapshotRef): { entry: Entry; created: boolean } {
    if (this.#closed) throw new HostClosedError();
    const key = this.#key(ref);
    let e = this.#entries.get(key);
    const created = e === undefined;
    if (!e) {
      // Same id from other stores gets its own socket: the name carries a digest of the stores.
      const tag = createHash('sha256').update(key).digest('hex').slice(0, 12);
      const socketPath = path.join(this.runtimeDir, `${ref.id.slice(0, 48)}-${tag}.sock`);
      // No caller's signal: the start is shared by every restore of the snapshot (each caller's
      // signal only detaches that caller, see restore()).
      const server = RestoreServer.start({ ...this.#serve, stores: ref.stores, id: ref.id, socketPath });
      e = { server, vmstate: undefined };
      this.#entries.set(key, e);
      // A server that failed to start is forgotten, so the next restore tries again.
      const mine = e;
      server.catch(() => this.#entries.get(key) === mine && this.#entries.delete(key));
    }
    return { entry: e, created };
  }

  /** Downloads the snapshot's vmstate once per host, verified (and decrypted) by the server's reader. */
  async #vmstate(server: RestoreServer): Promise<string> {
    const vm = server.snapshot.vmstate;
    if (!vm)
      throw new NotFoundError(
        server.storeUrls[0] ?? 'the store',
        `the vmstate of snapshot ${server.snapshot.id} (it was taken without --vmstate FILE)`,
      );
    const file = path.join(this.runtimeDir, `${vm.hash}.vmstate`);
    const have = await stat(file).catch(() => undefined);
    if (have?.size === vm.size) return file; // named by its hash, written only once verified
    const bytes = (await server.readVmstate())!;
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, bytes, { mode: 0o600 });
    await rename(tmp, file);
    return file;
  }

  /**
   * A whole lazy restore: the snapshot's server (started or reused), its vmstate on local disk, then
   * Firecracker's PUT /snapshot/load with `mem_backend: {backend_type: "Uffd"}` on the server's
   * socket. Firecracker connects to the socket during the load and sends its uffd; from then on
   * the server serves the guest's faults. Errors from Firecracker are FirecrackerErrors carrying its
   * fault message.
   */
  async restore(options: LazyRestoreOptions): Promise<LazyRestoreResult> {
    options.signal?.throwIfAborted();
    const parent = options.traceContext ?? context.active();
    const span = trace
      .getTracer(TRACER_NAME)
      .startSpan(
        SPAN.hostRestore,
        { attributes: { 'lazysnap.snapshot.id': String(options.snapshot?.id) } },
        parent,
      );
    try {
      const r = await this.#restore(options, trace.setSpan(parent, span));
      span.setAttributes({
        'lazysnap.host.reused_server': r.reusedServer,
        'lazysnap.host.server_ms': r.timings.serverMs,
        'lazysnap.host.vmstate_ms': r.timings.vmstateMs,
        'lazysnap.host.load_ms': r.timings.loadMs,
      });
      return r;
    } catch (e) {
      span.setStatus({ code: 2, message: (e as Error).message });
      throw e;
    } finally {
      span.end();
    }
  }

  async #restore(options: LazyRestoreOptions, traceCtx: Context): Promise<LazyRestoreResult> {
    const { signal } = options;
    const t0 = performance.now();
    const { entry, created } = this.#entry(options.snapshot);
    const reusedServer = !created;
    const server = await detachable(entry.server, signal);
    const t1 = performance.now();
    entry.vmstate ??= this.#vmstate(server);
    entry.vmstate.catch(() => (entry.vmstate = undefined)); // retried by the next restore
    const vmstatePath = await detachable(entry.vmstate, signal);
    const t2 = performance.now();
    // The session Firecracker opens during the load is this restore's: its span goes under ours. Kept a
    // little past the load (the handshake is read asynchronously), withdrawn if nobody connected.
    const withdraw = server.expectSession(traceCtx, options.firecrackerPid);
    let loaded = false;
    const fc =
      typeof options.firecracker === 'string'
        ? new FirecrackerClient({ socketPath: options.firecracker })
        : options.firecracker;
    try {
      await fc.loadSnapshot(
        {
          ...options.load,
          snapshotPath: vmstatePath,
          memBackend: { backendType: 'Uffd', backendPath: server.socketPath },
          resumeVm: options.resumeVm ?? true,
        },
        signal ? { signal } : {},
      );
      loaded = true;
    } finally {
      if (loaded) setTimeout(withdraw, SESSION_PARENT_GRACE_MS).unref();
      else withdraw();
      if (typeof options.firecracker === 'string') await fc.close();
    }
    const t3 = performance.now();
    return {
      server,
      reusedServer,
      socketPath: server.socketPath,
      vmstatePath,
      timings: { serverMs: t1 - t0, vmstateMs: t2 - t1, loadMs: t3 - t2 },
    };
  }

  /** Stops every server (live sessions get graceMs to finish, see RestoreServer.close). */
  async close(graceMs?: number): Promise<void> {
    this.#closed = true;
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    await Promise.all(
      entries.map((e) =>
        e.server.then(
          (s) => s.close(graceMs),
          () => {},
        ),
      ),
    );
  }
}

/** `p` for one caller: its signal rejects this caller's wait, never the shared work behind it. */
function detachable<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
