/**
 * A restore server in this process (the SDK's RestoreServer): a Unix socket that Firecracker (or any
 * process using the same handshake) uses as its UFFD memory backend, and the sessions behind it
 * (runtime/session-host.ts). One session per connection; all sessions share the snapshot's chunk table,
 * the fetcher (one fetch per chunk however many want it) and the disk cache. `lazysnap serve` runs the
 * same host in a supervised worker process instead (runtime/supervisor/), so that a crash loses no VM.
 *
 * The socket is created 0600 in a directory created 0700, and an existing directory others could
 * write is refused (runtime/serve-socket.ts); a malformed handshake, a peer outside allowUids or a
 * silent peer closes that connection and nothing else. With a verify key only a manifest signed by
 * it is served; an encrypted snapshot is served only with its key (checked before listening).
 */
import { EventEmitter } from 'node:events';
import { unlinkSync } from 'node:fs';

import type { Context } from '@opentelemetry/api';

import { componentLogger, type Logger } from '../core/logger.js';
import { closeFd } from '../native/index.js';
import type { Manifest } from '../store/manifest.js';
import { assertSnapshotId } from '../store/keys.js';
import { Acceptor } from './acceptor.js';
import type { RuntimeMetrics } from './metrics.js';
import type { LiveSessionStats, RestoreSession, SessionSummary } from './restore-session.js';
import { resolveServeOptions, type ResolvedServeOptions, type ServeOptions } from './serve-options.js';
import { listenSocket } from './serve-socket.js';
import { logRefusal, startServing } from './serve-start.js';
import type { SessionHost } from './session-host.js';

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

export class RestoreServer extends EventEmitter<RestoreServerEvents> {
  readonly socketPath: string;
  readonly metrics: RuntimeMetrics;
  /** Live sessions. */
  readonly sessions: Set<RestoreSession>;
  /** The most recent ended sessions' summaries, oldest first (at most 1024; listen to 'sessionEnd' for all). */
  readonly summaries: SessionSummary[];
  metricsPort: number | undefined;
  /** How long the start-up warm-up of the fault path took (runtime/warm-up.ts); undefined when it could not run. */
  warmUpMs: number | undefined;
  /** Whether the warm-up ran a whole session of its own (it needs the right to create a userfaultfd). */
  warmUpSession = false;
  /** Whether that session's own fault took the demand path (crossed into JS and was fetched). */
  warmUpFault = false;
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
  readonly #host: SessionHost;
  readonly #acceptor: Acceptor;
  #metricsServer: { close: () => Promise<void> } | undefined;
  #closing: Promise<void> | undefined;
  /** Trace parents for sessions about to arrive (expectSession), oldest first. */
  readonly #parents: { ctx: Context; pid: number | undefined }[] = [];

  private constructor(o: ResolvedServeOptions, host: SessionHost, log: Logger) {
    super();
    this.#o = o;
    this.#host = host;
    this.#log = log;
    this.metrics = host.metrics;
    this.sessions = host.sessions;
    this.summaries = host.summaries;
    this.socketPath = o.socketPath;
    const { ctx } = host.parts;
    const m = ctx.index.manifest;
    this.snapshot = {
      id: o.id,
      totalSize: m.totalSize,
      pageSize: m.pageSize,
      chunkSize: m.chunkSize,
      chunks: ctx.index.count,
      vmstate: m.vmstate,
    };
    ctx.trace.parentFor = (pid) => this.#parentFor(pid);
    host.on('session', ({ restoreId, pid }) => this.emit('session', { restoreId, pid }));
    host.on('sessionEnd', (s) => this.emit('sessionEnd', s));
    host.on('rejected', (r) => this.emit('rejected', r));
    const onStale = () =>
      log.warn(
        { socket: o.socketPath },
        'replaced a stale socket: the previous server did not shut down cleanly (peers it served, if still running, wait on faults no one answers)',
      );
    this.#acceptor = new Acceptor(listenSocket(o.socketPath, o.socketGroup, onStale), {
      allowUids: o.allowUids,
      handshakeTimeoutMs: o.handshakeTimeoutMs,
      log,
      metrics: this.metrics,
      onMessage: (peer, msg) => host.open(peer, msg),
      onRefused: (peer, reason) => host.reject(peer, reason),
      onPeerRefused: (pid, reason) => this.emit('rejected', { pid, reason }),
    });
  }

  /** Loads the snapshot's manifest (first store that has it) and starts listening. */
  static async start(options: ServeOptions, signal?: AbortSignal): Promise<RestoreServer> {
    const o = resolveServeOptions(options);
    assertSnapshotId(o.id);
    const log = (o.logger ?? componentLogger('runtime.serve')).child({ snapshotId: o.id });
    const started = await startServing(o, log, signal);
    let server: RestoreServer;
    try {
      server = new RestoreServer(o, started.host, log);
    } catch (e) {
      logRefusal(e, log);
      await started.metricsServer?.close();
      await started.parts.close();
      throw e;
    }
    server.#metricsServer = started.metricsServer;
    server.metricsPort = started.metricsServer?.port;
    server.warmUpMs = started.warmUp?.ms;
    server.warmUpSession = started.warmUp?.session ?? false;
    server.warmUpFault = started.warmUp?.demandFault ?? false;
    log.info({ socket: o.socketPath, ...started.fields() }, 'serving');
    return server;
  }

  /**
   * Makes the span of a session about to arrive (its peer is being told to connect) a child of `parent`,
   * so that the restore shows up inside the platform's own trace: the session whose peer is `pid`, or
   * without a pid, the next session to start that no other expectation names. Returns a function that withdraws it
   * (call it once the peer has connected or given up: an expectation nobody takes would parent a later,
   * unrelated session).
   */
  expectSession(parent: Context, pid?: number): () => void {
    const e = { ctx: parent, pid };
    this.#parents.push(e);
    return () => {
      const i = this.#parents.indexOf(e);
      if (i >= 0) this.#parents.splice(i, 1);
    };
  }

  #parentFor(pid: number): Context | undefined {
    let i = this.#parents.findIndex((e) => e.pid === pid);
    if (i < 0) i = this.#parents.findIndex((e) => e.pid === undefined);
    return i < 0 ? undefined : this.#parents.splice(i, 1)[0]!.ctx;
  }

  /** The stores' URLs, in order, without credentials. */
  get storeUrls(): string[] {
    return this.#host.parts.stores.map((s) => s.url);
  }

  /**
   * The snapshot's vmstate, verified against the manifest (and decrypted for encrypted snapshots),
   * from the first store that delivers it; undefined when the snapshot has none.
   */
  readVmstate(signal?: AbortSignal): Promise<Buffer | undefined> {
    return this.#host.parts.readVmstate(signal);
  }

  /** Live figures: sessions, resident chunk bytes (within memoryBudgetBytes), memory-tier evictions. */
  stats(): { sessions: number; pendingHandshakes: number; residentBytes: number; memoryEvictions: number } {
    const { ctx } = this.#host.parts;
    return {
      sessions: this.sessions.size,
      pendingHandshakes: this.#acceptor.pending,
      residentBytes: ctx.table.stats().residentBytes,
      memoryEvictions: ctx.memory.evictions,
    };
  }

  /** Every live session's figures (native counters, fetched chunks and bytes). */
  sessionStats(): LiveSessionStats[] {
    return this.#host.sessionStats();
  }

  /** The live session of a peer process, if it has one. */
  sessionOf(pid: number): RestoreSession | undefined {
    return this.#host.sessionOf(pid);
  }

  /**
   * Stops accepting: the path goes first, then the backlog is accepted, because a peer that got in
   * has sent its uffd and would hang if dropped unread. Lets sessions (and handshakes) run until
   * their peers exit or graceMs passes, then fails the rest closed: peers are SIGKILLed, as nothing
   * would answer their next fault on a page they lack (README "Shutdown"). Idempotent.
   */
  close(graceMs = this.#o.shutdownGraceMs): Promise<void> {
    this.#closing ??= (async () => {
      const acceptor = this.#acceptor;
      acceptor.stop();
      try {
        unlinkSync(this.socketPath);
      } catch {
        // Already gone: nothing to remove.
      }
      acceptor.acceptAll();
      closeFd(acceptor.listenFd);
      const host = this.#host;
      if (host.sessions.size > 0 || acceptor.pending > 0) {
        this.#log.info(
          { sessions: host.sessions.size, handshakes: acceptor.pending, graceMs },
          'draining sessions',
        );
        // Handshakes that arrive during the grace period become sessions like any other.
        const end = performance.now() + graceMs;
        while ((host.sessions.size > 0 || acceptor.pending > 0) && performance.now() < end)
          await new Promise((r) => setTimeout(r, 10));
      }
      acceptor.flush('server shutting down');
      host.abandon(graceMs);
      await host.parts.profileSaves.idle();
      await this.#metricsServer?.close();
      await host.parts.close();
      this.#log.info({ sessions: host.endedCount }, 'stopped');
    })();
    return this.#closing;
  }
}
