/**
 * The sessions of one served snapshot, whoever accepted their connections: RestoreServer in this process
 * (the SDK's in-process server), or a supervisor in another (runtime/supervisor/: `lazysnap serve`, where
 * this host runs in a worker process that may crash and be replaced).
 *
 * A connection arrives with its handshake message already received (bytes and descriptors): the host
 * validates it (runtime/handshake.ts) and starts a session, or rejects it. A session of a predecessor
 * arrives as its descriptors (connection, pidfd, uffd, state memfd): the host adopts it from the state
 * memfd's record (runtime/session-state.ts). Either way the host watches the connection: Firecracker keeps
 * it open for the life of the VM and never sends anything else, so its EOF ends the session.
 */
import { EventEmitter } from 'node:events';

import { HandshakeError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { closeFd, pidfdSendSignal, recvWithFds, watchFd, type FdWatch } from '../native/index.js';
import { assertUserfaultfd, parseHandshake } from './handshake.js';
import type { RuntimeMetrics } from './metrics.js';
import {
  RestoreSession,
  type LiveSessionStats,
  type SessionContext,
  type SessionSummary,
} from './restore-session.js';
import type { ServeContext } from './serve-context.js';
import { readSessionState } from './session-state.js';

/** What a host emits (RestoreServer re-emits them). */
export interface SessionHostEvents {
  /** A peer completed the handshake (or a session was adopted); it is being served. */
  session: [info: { restoreId: string; pid: number; adopted: boolean }];
  /** A session ended (peer exited, was killed failing closed, or the server shut down). */
  sessionEnd: [summary: SessionSummary];
  /** A connection was closed before a session began (bad handshake, uid not allowed, timeout). */
  rejected: [info: { pid: number; reason: string }];
}

/** A connected peer: the connection, a pidfd of the peer (taken at accept), who it is. */
export interface Peer {
  fd: number;
  pidfd: number;
  pid: number;
}

/** A handshake message as received: bytes, and the descriptors that came with it. */
export interface HandshakeMessage {
  data: Buffer;
  fds: number[];
  fdsTruncated: boolean;
}

interface Live {
  session: RestoreSession;
  peer: Peer;
  watch: FdWatch;
}

export class SessionHost extends EventEmitter<SessionHostEvents> {
  readonly sessions = new Set<RestoreSession>();
  /** The most recent ended sessions' summaries, oldest first (at most 1024; listen to 'sessionEnd' for all). */
  readonly summaries: SessionSummary[] = [];
  readonly parts: ServeContext;
  readonly #ctx: SessionContext;
  readonly #log: Logger;
  readonly #snapshotId: string;
  readonly #live = new Map<RestoreSession, Live>();
  #nextId = 1;
  #endedCount = 0;
  #idle: (() => void) | undefined;

  constructor(parts: ServeContext, snapshotId: string, log: Logger) {
    super();
    this.parts = parts;
    this.#ctx = parts.ctx;
    this.#snapshotId = snapshotId;
    this.#log = log;
  }

  get metrics(): RuntimeMetrics {
    return this.#ctx.metrics;
  }

  get endedCount(): number {
    return this.#endedCount;
  }

  /**
   * Validates a connection's handshake and starts its session. Takes ownership of every descriptor
   * given: the peer's, the message's, and `stateFd` (an empty memfd someone else holds too, for
   * adoption later; a non-empty one is a predecessor's session that never reported back: adopted).
   * On a bad handshake the connection is closed and `rejected` emitted; returns undefined.
   */
  open(peer: Peer, msg: HandshakeMessage, stateFd?: number): RestoreSession | undefined {
    const m = this.#ctx.index.manifest;
    let handshake;
    try {
      if (msg.data.length === 0)
        throw new HandshakeError('the peer closed the connection before the handshake');
      if (msg.fdsTruncated)
        throw new HandshakeError('more file descriptors than expected came with the message');
      handshake = parseHandshake(msg.data, msg.fds.length, { totalSize: m.totalSize, pageSize: m.pageSize });
      assertUserfaultfd(msg.fds[0]!);
    } catch (e) {
      for (const fd of msg.fds) closeFd(fd);
      if (stateFd !== undefined) closeFd(stateFd);
      this.reject(peer, (e as Error).message);
      return undefined;
    }
    const restoreId = `${this.#snapshotId}-${process.pid}-${this.#nextId++}`;
    return this.#start(peer, handshake, msg.fds[0]!, restoreId, stateFd, undefined);
  }

  /**
   * Adopts a session a predecessor served, from its descriptors: connection, pidfd, uffd and state
   * memfd (all owned from here on). The predecessor's record says who the peer is and what it had;
   * one this runtime cannot read is refused: the peer is killed (failing closed), never left hung.
   */
  adopt(peer: Peer, uffd: number, stateFd: number): RestoreSession | undefined {
    let state;
    try {
      state = readSessionState(stateFd);
      if (state.meta.snapshotId !== this.#snapshotId)
        throw new HandshakeError(`the session restores ${state.meta.snapshotId}, not ${this.#snapshotId}`);
      if (state.meta.pid !== peer.pid)
        throw new HandshakeError(
          `the session's peer was pid ${state.meta.pid}, the connection's is ${peer.pid}`,
        );
    } catch (e) {
      this.#log.error(
        { pid: peer.pid, reason: (e as Error).message },
        'cannot adopt a session: killing its peer (SIGKILL) rather than leave it hung',
      );
      this.metrics.adoptionsRefused.inc();
      killQuietly(peer.pidfd);
      for (const fd of [uffd, stateFd, peer.fd, peer.pidfd]) closeFd(fd);
      return undefined;
    }
    const s = this.#start(peer, state.handshake, uffd, state.meta.restoreId, stateFd, {
      installed: state.installed,
    });
    if (s) this.metrics.sessionsAdopted.inc();
    return s;
  }

  #start(
    peer: Peer,
    handshake: ReturnType<typeof parseHandshake>,
    uffd: number,
    restoreId: string,
    stateFd: number | undefined,
    adopted: { installed: Uint8Array } | undefined,
  ): RestoreSession | undefined {
    let session: RestoreSession;
    try {
      session = new RestoreSession({
        ctx: this.#ctx,
        handshake,
        uffd,
        pidfd: peer.pidfd,
        pid: peer.pid,
        restoreId,
        ...(stateFd !== undefined ? { state: { fd: stateFd, ...(adopted ? { adopted } : {}) } } : {}),
        onEnd: (s, summary) => this.#ended(s, summary),
      });
    } catch (e) {
      closeFd(uffd);
      if (stateFd !== undefined) closeFd(stateFd);
      if (adopted) {
        killQuietly(peer.pidfd);
        this.#log.error(
          { pid: peer.pid, reason: (e as Error).message },
          'cannot adopt a session: peer killed',
        );
        closeFd(peer.fd);
        closeFd(peer.pidfd);
        return undefined;
      }
      this.reject(peer, (e as Error).message);
      return undefined;
    }
    // The session took its own copy of the state memfd (the native side duplicates it).
    if (stateFd !== undefined) closeFd(stateFd);
    const live: Live = { session, peer, watch: { stop() {} } };
    live.watch = watchFd(peer.fd, { readable: true, disconnect: true }, () => this.#drain(live));
    this.#live.set(session, live);
    this.sessions.add(session);
    this.emit('session', { restoreId, pid: peer.pid, adopted: adopted !== undefined });
    return session;
  }

  /** Closes a connection that never became a session, with its reason logged and counted. */
  reject(peer: Peer, reason: string): void {
    this.metrics.handshakeErrors.inc();
    this.#log.warn({ pid: peer.pid, reason }, 'handshake rejected; connection closed');
    closeFd(peer.fd);
    closeFd(peer.pidfd);
    this.emit('rejected', { pid: peer.pid, reason });
  }

  /** Stray bytes after the handshake are read and dropped, stray fds closed; EOF ends the session. */
  #drain(live: Live): void {
    let m;
    try {
      m = recvWithFds(live.peer.fd, 4096, 4);
    } catch {
      m = { data: Buffer.alloc(0), fds: [] as number[] };
    }
    if (m === null) return;
    for (const fd of m.fds) closeFd(fd);
    if (m.data.length === 0) live.session.end('ended');
  }

  #ended(s: RestoreSession, summary: SessionSummary): void {
    const live = this.#live.get(s);
    if (live) {
      live.watch.stop();
      closeFd(live.peer.fd);
      this.#live.delete(s);
    }
    this.sessions.delete(s);
    this.#endedCount++;
    this.summaries.push(summary);
    if (this.summaries.length > 1024) this.summaries.shift(); // a long-lived server must not grow
    this.emit('sessionEnd', summary);
    if (this.sessions.size === 0) this.#idle?.();
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

  /** Resolves when no session is left, or after graceMs. */
  async drain(graceMs: number): Promise<void> {
    if (this.sessions.size === 0) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, graceMs);
      this.#idle = () => (clearTimeout(t), resolve());
    });
    this.#idle = undefined;
  }

  /** Fails every live session closed: nothing will answer their peers' next faults (SIGKILL). */
  abandon(graceMs: number): void {
    for (const s of [...this.sessions]) s.abandon(graceMs);
  }

  /**
   * Stops serving every session without ending it for its peer: fault threads stop, this process's
   * descriptors close, nobody is killed. For a handover: whoever holds the other descriptors (a
   * supervisor, a successor) adopts them and serves on; faults taken meanwhile wait in the kernel.
   */
  release(): void {
    for (const [s, live] of [...this.#live]) {
      live.watch.stop();
      s.release(); // closes its uffd, state memfd and pidfd copies
      closeFd(live.peer.fd);
      this.#live.delete(s);
      this.sessions.delete(s);
    }
  }
}

function killQuietly(pidfd: number): void {
  try {
    pidfdSendSignal(pidfd, 'SIGKILL');
  } catch {
    // gone already
  }
}
