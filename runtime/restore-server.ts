/**
 * `lazysnap serve`: a Unix socket that Firecracker (or any process using the same handshake) uses as
 * its UFFD memory backend. One session per connection; all sessions of the server share the
 * snapshot's chunk table, the fetcher (one fetch per chunk however many want it) and the disk cache.
 * The socket is created 0600 in a directory created 0700; a malformed handshake, a peer outside
 * allowUids or a silent peer closes that connection and nothing else.
 */
import { lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import path from 'node:path';

import { HandshakeError, InvalidArgumentError } from '../core/errors.js';
import { componentLogger, type Logger } from '../core/logger.js';
import {
  ChunkTable,
  acceptUnix,
  closeFd,
  listenUnix,
  peerCredentials,
  peerPidfd,
  pidfdOpen,
  recvWithFds,
  watchFd,
  type FdWatch,
} from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import { assertSnapshotId } from '../store/keys.js';
import { openStore } from '../store/open.js';
import { cacheProblemLogger, logRecoveredFetch } from './fault-log.js';
import { ChunkFetcher } from './fetcher.js';
import { kernelCanPoison, loadFirst } from './startup.js';
import { loadProfile, profileSaver } from './profile-store.js';
import type { ProfileShape } from './profile.js';
import { parseHandshake } from './handshake.js';
import { MemoryTier } from './memory-tier.js';
import { RuntimeMetrics } from './metrics.js';
import { RestoreSession, type SessionContext, type SessionSummary } from './restore-session.js';
import { resolveServeOptions, type ResolvedServeOptions, type ServeOptions } from './serve-options.js';

export type { ServeOptions };

/** A connection: one watcher for its whole life (handshake, then EOF), the peer's pidfd. */
interface Conn {
  fd: number;
  pidfd: number;
  pid: number;
  watch: FdWatch;
  timer: NodeJS.Timeout | undefined;
  session: RestoreSession | undefined;
}

export class RestoreServer {
  readonly socketPath: string;
  readonly metrics: RuntimeMetrics;
  readonly sessions = new Set<RestoreSession>();
  readonly summaries: SessionSummary[] = [];
  metricsPort: number | undefined;
  readonly #o: ResolvedServeOptions;
  readonly #log: Logger;
  readonly #stores: StoreBackend[];
  readonly #ctx: SessionContext;
  readonly #lfd: number;
  readonly #watch: FdWatch;
  readonly #pending = new Set<Conn>();
  #metricsServer: { close: () => Promise<void> } | undefined;
  #cache: { close(): Promise<void> } | undefined;
  #profileSaves: { idle(): Promise<void> } | undefined;
  #nextId = 1;
  #closing: Promise<void> | undefined;
  #idle: (() => void) | undefined;

  private constructor(o: ResolvedServeOptions, stores: StoreBackend[], ctx: SessionContext, log: Logger) {
    this.#o = o;
    this.#stores = stores;
    this.#ctx = ctx;
    this.#log = log;
    this.metrics = ctx.metrics;
    this.socketPath = o.socketPath;
    const dir = path.dirname(o.socketPath);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    try {
      const st = lstatSync(o.socketPath);
      if (!st.isSocket()) throw new InvalidArgumentError('socket', 'a path that is free or holds a stale socket', o.socketPath);
      unlinkSync(o.socketPath); // a previous server's socket; nothing else is ever removed
      log.warn({ socket: o.socketPath }, 'replaced a stale socket: the previous server did not shut down cleanly (peers it served, if still running, wait on faults no one answers)');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    this.#lfd = listenUnix(o.socketPath, 1024);
    this.#watch = watchFd(this.#lfd, { readable: true }, () => this.#acceptAll());
  }

  /** Loads the snapshot's manifest (first store that has it) and starts listening. */
  static async start(options: ServeOptions, signal?: AbortSignal): Promise<RestoreServer> {
    const o = resolveServeOptions(options);
    assertSnapshotId(o.id);
    const log = (o.logger ?? componentLogger('runtime.serve')).child({ snapshotId: o.id });
    const stores = await Promise.all(o.stores.map((u) => openStore(u, { httpConnections: o.originConnections, ...(o.s3Endpoint ? { s3Endpoint: o.s3Endpoint } : {}) })));
    try {
      const index = await loadFirst(stores, o.id, signal);
      const m = index.manifest;
      const table = new ChunkTable(m.totalSize, m.chunkSize);
      table.markZero(Uint8Array.from(index.flags, (f) => (f === 0 ? 1 : 0)));
      const cache = o.cacheDir
        ? await (await import('./disk-cache.js')).DiskCache.open({ dir: o.cacheDir, budgetBytes: o.cacheBudgetBytes, onProblem: cacheProblemLogger(log) }, signal)
        : undefined;
      const metrics = new RuntimeMetrics();
      const fetcher = new ChunkFetcher({
        origins: stores,
        ...(cache ? { cache } : {}),
        attemptTimeoutMs: o.attemptTimeoutMs,
        retries: o.retries,
        concurrency: o.fetchConcurrency,
        onFetch: (e) => (metrics.onFetch(e), logRecoveredFetch(log, e)),
      });
      const shape: ProfileShape = { id: o.id, chunkSize: m.chunkSize, totalSize: m.totalSize, chunks: index.count };
      const wantsProfile = o.prefetch === 'auto' || o.prefetch === 'replay';
      const profile = wantsProfile ? await loadProfile(stores, shape, (msg) => log.warn(msg), signal) : undefined;
      const mode = o.prefetch === 'auto' ? (profile ? 'replay' : 'off') : o.prefetch;
      if (mode === 'replay' && !profile) log.warn(`no profile for ${o.id}: replay has nothing to prefetch (record one with --prefetch record)`);
      const saver = profileSaver(stores, shape, log);
      const ctx: SessionContext = {
        index,
        table,
        memory: new MemoryTier(table, o.memoryBudgetBytes),
        fetcher,
        metrics,
        log,
        failTimeoutMs: o.failTimeoutMs,
        canPoison: o.failClosed === 'poison' || (o.failClosed === 'auto' && kernelCanPoison()),
        prefetch: { mode, fill: o.fill, window: o.prefetchWindow, recordIdleMs: o.recordIdleMs, profile, saveRecording: saver.save },
      };
      const server = new RestoreServer(o, stores, ctx, log);
      server.#cache = cache;
      server.#profileSaves = saver;
      if (o.metricsPort !== undefined) {
        const ms = await metrics.listen(o.metricsPort, o.metricsHost);
        server.metricsPort = ms.port;
        server.#metricsServer = ms;
      }
      log.info({ socket: o.socketPath, stores: stores.map((s) => s.url), chunks: index.count, totalSize: m.totalSize, canPoison: ctx.canPoison, metricsPort: server.metricsPort }, 'serving');
      return server;
    } catch (e) {
      await Promise.all(stores.map((s) => s.close()));
      throw e;
    }
  }

  /** Live figures: sessions, resident chunk bytes (within memoryBudgetBytes), memory-tier evictions. */
  stats(): { sessions: number; pendingHandshakes: number; residentBytes: number; memoryEvictions: number } {
    return {
      sessions: this.sessions.size,
      pendingHandshakes: this.#pending.size,
      residentBytes: this.#ctx.table.stats().residentBytes,
      memoryEvictions: this.#ctx.memory.evictions,
    };
  }

  #acceptAll(): void {
    for (let conn = acceptUnix(this.#lfd); conn >= 0; conn = acceptUnix(this.#lfd)) this.#accept(conn);
  }

  #accept(conn: number): void {
    let cred: { pid: number; uid: number; gid: number };
    let pidfd: number;
    try {
      cred = peerCredentials(conn);
      if (this.#o.allowUids && !this.#o.allowUids.includes(cred.uid)) {
        this.#log.warn({ uid: cred.uid, pid: cred.pid }, 'connection refused: peer uid not in the allowlist');
        closeFd(conn);
        return;
      }
      // Held from now on: a SIGKILL sent through it can never reach a process that reused the PID.
      try {
        pidfd = peerPidfd(conn);
      } catch {
        pidfd = pidfdOpen(cred.pid);
      }
    } catch (e) {
      this.#log.warn({ err: (e as Error).message }, 'connection dropped: cannot identify the peer');
      closeFd(conn);
      return;
    }
    const c: Conn = { fd: conn, pidfd, pid: cred.pid, session: undefined, timer: undefined, watch: { stop() {} } };
    c.watch = watchFd(conn, { readable: true, disconnect: true }, () => (c.session ? this.#drain(c) : this.#handshake(c)));
    c.timer = setTimeout(() => this.#reject(c, `no handshake within ${this.#o.handshakeTimeoutMs} ms`), this.#o.handshakeTimeoutMs);
    this.#pending.add(c);
  }

  #reject(c: Conn, reason: string): void {
    c.watch.stop();
    clearTimeout(c.timer);
    this.#pending.delete(c);
    this.metrics.handshakeErrors.inc();
    this.#log.warn({ pid: c.pid, reason }, 'handshake rejected; connection closed');
    closeFd(c.fd);
    closeFd(c.pidfd);
    this.#checkIdle();
  }

  #handshake(c: Conn): void {
    let msg;
    try {
      // Firecracker sends the whole payload in one sendmsg, and a stream socket returns it whole to
      // one recvmsg of this size; the fd arrives with its first byte.
      msg = recvWithFds(c.fd, 64 * 1024, 4);
    } catch (e) {
      this.#reject(c, (e as Error).message);
      return;
    }
    if (msg === null) return;
    let handshake;
    try {
      if (msg.data.length === 0) throw new HandshakeError('the peer closed the connection before the handshake');
      if (msg.fdsTruncated) throw new HandshakeError('more file descriptors than expected came with the message');
      handshake = parseHandshake(msg.data, msg.fds.length, { totalSize: this.#ctx.index.manifest.totalSize, pageSize: this.#ctx.index.manifest.pageSize });
    } catch (e) {
      for (const fd of msg.fds) closeFd(fd);
      this.#reject(c, (e as Error).message);
      return;
    }
    const restoreId = `${this.#o.id}-${process.pid}-${this.#nextId++}`;
    try {
      c.session = new RestoreSession({
        ctx: this.#ctx,
        handshake,
        uffd: msg.fds[0]!,
        pidfd: c.pidfd,
        pid: c.pid,
        restoreId,
        onEnd: (s, summary) => {
          c.watch.stop();
          closeFd(c.fd);
          this.sessions.delete(s);
          this.summaries.push(summary);
          this.#checkIdle();
        },
      });
    } catch (e) {
      closeFd(msg.fds[0]!);
      this.#reject(c, (e as Error).message);
      return;
    }
    clearTimeout(c.timer);
    this.#pending.delete(c);
    this.sessions.add(c.session);
  }

  /**
   * Firecracker keeps the socket open for the life of the VM and never sends anything else: EOF
   * ends the session. Stray bytes are read and dropped, stray fds closed.
   */
  #drain(c: Conn): void {
    let m;
    try {
      m = recvWithFds(c.fd, 4096, 4);
    } catch {
      m = { data: Buffer.alloc(0), fds: [] as number[] };
    }
    if (m === null) return;
    for (const fd of m.fds) closeFd(fd);
    if (m.data.length === 0) c.session!.end('ended');
  }

  #checkIdle(): void {
    if (this.#idle && this.sessions.size === 0 && this.#pending.size === 0) this.#idle();
  }

  /**
   * Stops accepting: the path goes first, then the backlog is accepted, because a peer that got in
   * has sent its uffd and would hang if dropped unread. Lets sessions (and handshakes) run until
   * their peers exit or graceMs passes, then fails the rest closed: peers are SIGKILLed, as nothing
   * would answer their next fault on a page they lack (README "Shutdown"). Idempotent.
   */
  close(graceMs = this.#o.shutdownGraceMs): Promise<void> {
    this.#closing ??= (async () => {
      this.#watch.stop();
      try {
        unlinkSync(this.socketPath);
      } catch {}
      this.#acceptAll();
      closeFd(this.#lfd);
      if (this.sessions.size > 0 || this.#pending.size > 0) {
        this.#log.info({ sessions: this.sessions.size, handshakes: this.#pending.size, graceMs }, 'draining sessions');
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, graceMs);
          this.#idle = () => (clearTimeout(t), resolve());
          this.#checkIdle();
        });
      }
      for (const p of [...this.#pending]) this.#handshake(p); // a handshake that arrived at the last moment
      for (const p of [...this.#pending]) this.#reject(p, 'server shutting down');
      for (const s of [...this.sessions]) s.abandon(graceMs);
      await this.#profileSaves?.idle();
      await this.#metricsServer?.close();
      await this.#cache?.close();
      await Promise.all(this.#stores.map((s) => s.close()));
      this.#log.info({ sessions: this.summaries.length }, 'stopped');
    })();
    return this.#closing;
  }
}
