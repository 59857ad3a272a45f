/**
 * `lazysnap serve`: a Unix socket that Firecracker (or any process using the same handshake) uses as
 * its UFFD memory backend. One session per connection; all sessions of the server share the
 * snapshot's chunk table, the fetcher (one fetch per chunk however many want it) and the disk cache.
 * The socket is created 0600 in a directory created 0700, and an existing directory others could
 * write is refused (runtime/serve-socket.ts); a malformed handshake, a peer outside allowUids or a
 * silent peer closes that connection and nothing else. With a verify key only a manifest signed by
 * it is served; an encrypted snapshot is served only with its key (checked before listening).
 */
import { EventEmitter } from 'node:events';
import { unlinkSync } from 'node:fs';

import {
  HandshakeError,
  InsecurePathError,
  KeyUnavailableError,
  SignatureError,
  WrongKeyError,
} from '../core/errors.js';
import { componentLogger, type Logger } from '../core/logger.js';
import {
  acceptUnix,
  closeFd,
  peerCredentials,
  peerPidfd,
  pidfdOpen,
  recvWithFds,
  watchFd,
  type FdWatch,
} from '../native/index.js';
import type { Manifest } from '../store/manifest.js';
import { assertSnapshotId } from '../store/keys.js';
import { assertUserfaultfd, parseHandshake } from './handshake.js';
import type { RuntimeMetrics } from './metrics.js';
import {
  RestoreSession,
  type LiveSessionStats,
  type SessionContext,
  type SessionSummary,
} from './restore-session.js';
import { openServeContext, securityFields, type ServeContext } from './serve-context.js';
import { resolveServeOptions, type ResolvedServeOptions, type ServeOptions } from './serve-options.js';
import { listenSocket } from './serve-socket.js';
import { warmUpFaultPath } from './warm-up.js';

export type { LiveSessionStats, ServeOptions, SessionSummary };

/** What a RestoreServer emits (it is an EventEmitter with these typed events). */
export interface RestoreServerEvents {
  /** A peer completed the handshake; its session is serving faults. */
  session: [info: { restoreId: string; pid: number }];
  /** A session ended (peer exited, was killed failing closed, or the server shut down). */
  sessionEnd: [summary: SessionSummary];
  /** A connection was closed before a session began (bad handshake, uid not allowed, timeout). */
  rejected: [info: { pid: number; reason: string }];
}

/** A connection: one watcher for its whole life (handshake, then EOF), the peer's pidfd. */
interface Conn {
  fd: number;
  pidfd: number;
  pid: number;
  watch: FdWatch;
  timer: NodeJS.Timeout | undefined;
  session: RestoreSession | undefined;
}

export class RestoreServer extends EventEmitter<RestoreServerEvents> {
  readonly socketPath: string;
  readonly metrics: RuntimeMetrics;
  readonly sessions = new Set<RestoreSession>();
  /** The most recent ended sessions' summaries, oldest first (at most 1024; listen to 'sessionEnd' for all). */
  readonly summaries: SessionSummary[] = [];
  metricsPort: number | undefined;
  /** How long the start-up warm-up of the fault path took (runtime/warm-up.ts); undefined when it could not run. */
  warmUpMs: number | undefined;
  /** The served snapshot's geometry, from its manifest. */
  readonly snapshot: {
    id: string;
    totalSize: number;
    pageSize: number;
    chunkSize: number;
    chunks: number;
    vmstate: Manifest['vmstate'];
  };
  readonly #o: ResolvedServeOptions;
  readonly #log: Logger;
  readonly #parts: ServeContext;
  readonly #ctx: SessionContext;
  readonly #lfd: number;
  readonly #watch: FdWatch;
  readonly #pending = new Set<Conn>();
  #metricsServer: { close: () => Promise<void> } | undefined;
  #nextId = 1;
  #endedCount = 0;
  #closing: Promise<void> | undefined;
  #idle: (() => void) | undefined;

  private constructor(o: ResolvedServeOptions, parts: ServeContext, log: Logger) {
    super();
    const { ctx } = parts;
    this.#o = o;
    this.#parts = parts;
    this.#ctx = ctx;
    this.#log = log;
    this.metrics = ctx.metrics;
    this.socketPath = o.socketPath;
    const m = ctx.index.manifest;
    this.snapshot = {
      id: o.id,
      totalSize: m.totalSize,
      pageSize: m.pageSize,
      chunkSize: m.chunkSize,
      chunks: ctx.index.count,
      vmstate: m.vmstate,
    };
    const onStale = () =>
      log.warn(
        { socket: o.socketPath },
        'replaced a stale socket: the previous server did not shut down cleanly (peers it served, if still running, wait on faults no one answers)',
      );
    this.#lfd = listenSocket(o.socketPath, o.socketGroup, onStale);
    this.#watch = watchFd(this.#lfd, { readable: true }, () => this.#acceptAll());
  }

  /** Loads the snapshot's manifest (first store that has it) and starts listening. */
  static async start(options: ServeOptions, signal?: AbortSignal): Promise<RestoreServer> {
    const o = resolveServeOptions(options);
    assertSnapshotId(o.id);
    const log = (o.logger ?? componentLogger('runtime.serve')).child({ snapshotId: o.id });
    let parts: ServeContext | undefined;
    let metricsServer: { port: number; close: () => Promise<void> } | undefined;
    try {
      parts = await openServeContext(o, log, signal);
      const { ctx, stores } = parts;
      // Metrics before the socket: an abandoned server would keep it (a bad --metrics-host did).
      if (o.metricsPort !== undefined) metricsServer = await ctx.metrics.listen(o.metricsPort, o.metricsHost);
      // Before the socket exists: the first peer's first fault must not pay for cold code.
      const m0 = ctx.index.manifest;
      const warmUpMs = await warmUpFaultPath(
        {
          loader: parts.loader,
          crypto: ctx.index.crypto,
          chunkSize: m0.chunkSize,
          pageSize: m0.pageSize,
          totalSize: m0.totalSize,
        },
        log,
      );
      const server = new RestoreServer(o, parts, log);
      server.#metricsServer = metricsServer;
      server.warmUpMs = warmUpMs;
      server.metricsPort = metricsServer?.port;
      const m = ctx.index.manifest;
      log.info(
        {
          socket: o.socketPath,
          stores: stores.map((s) => s.url),
          chunks: ctx.index.count,
          totalSize: m.totalSize,
          canPoison: ctx.canPoison,
          metricsPort: server.metricsPort,
          warmUpMs: warmUpMs === undefined ? null : Math.round(warmUpMs * 10) / 10,
          ...securityFields(o, m),
        },
        'serving',
      );
      return server;
    } catch (e) {
      if (
        e instanceof SignatureError ||
        e instanceof WrongKeyError ||
        e instanceof KeyUnavailableError ||
        e instanceof InsecurePathError
      ) {
        log.error({ code: e.code }, `refusing to serve: ${e.message}`);
      }
      await metricsServer?.close();
      await parts?.close();
      throw e;
    }
  }

  /** The stores' URLs, in order, without credentials. */
  get storeUrls(): string[] {
    return this.#parts.stores.map((s) => s.url);
  }

  /**
   * The snapshot's vmstate, verified against the manifest (and decrypted for encrypted snapshots),
   * from the first store that delivers it; undefined when the snapshot has none.
   */
  readVmstate(signal?: AbortSignal): Promise<Buffer | undefined> {
    return this.#parts.readVmstate(signal);
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

  /** Every live session's figures (native counters, fetched chunks and bytes). */
  sessionStats(): LiveSessionStats[] {
    return [...this.sessions].map((s) => s.liveStats());
  }

  /** The live session of a peer process, if it has one. */
  sessionOf(pid: number): RestoreSession | undefined {
    for (const s of this.sessions) if (s.pid === pid) return s;
    return undefined;
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
        this.metrics.peersRefused.inc();
        this.#log.warn(
          { uid: cred.uid, pid: cred.pid, allowUids: this.#o.allowUids },
          `connection refused: peer uid ${cred.uid} (pid ${cred.pid}) is not in the allowlist`,
        );
        closeFd(conn);
        this.emit('rejected', { pid: cred.pid, reason: `uid ${cred.uid} is not in the allowlist` });
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
    const c: Conn = {
      fd: conn,
      pidfd,
      pid: cred.pid,
      session: undefined,
      timer: undefined,
      watch: { stop() {} },
    };
    c.watch = watchFd(conn, { readable: true, disconnect: true }, () =>
      c.session ? this.#drain(c) : this.#handshake(c),
    );
    c.timer = setTimeout(
      () => this.#reject(c, `no handshake within ${this.#o.handshakeTimeoutMs} ms`),
      this.#o.handshakeTimeoutMs,
    );
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
    this.emit('rejected', { pid: c.pid, reason });
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
      if (msg.data.length === 0)
        throw new HandshakeError('the peer closed the connection before the handshake');
      if (msg.fdsTruncated)
        throw new HandshakeError('more file descriptors than expected came with the message');
      handshake = parseHandshake(msg.data, msg.fds.length, {
        totalSize: this.#ctx.index.manifest.totalSize,
        pageSize: this.#ctx.index.manifest.pageSize,
      });
      assertUserfaultfd(msg.fds[0]!);
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
          this.#endedCount++;
          this.summaries.push(summary);
          if (this.summaries.length > 1024) this.summaries.shift(); // a long-lived server must not grow
          this.emit('sessionEnd', summary);
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
    this.emit('session', { restoreId, pid: c.pid });
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
        this.#log.info(
          { sessions: this.sessions.size, handshakes: this.#pending.size, graceMs },
          'draining sessions',
        );
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, graceMs);
          this.#idle = () => (clearTimeout(t), resolve());
          this.#checkIdle();
        });
      }
      for (const p of [...this.#pending]) this.#handshake(p); // a handshake that arrived at the last moment
      for (const p of [...this.#pending]) this.#reject(p, 'server shutting down');
      for (const s of [...this.sessions]) s.abandon(graceMs);
      await this.#parts.profileSaves.idle();
      await this.#metricsServer?.close();
      await this.#parts.close();
      this.#log.info({ sessions: this.#endedCount }, 'stopped');
    })();
    return this.#closing;
  }
}
