/**
 * The front door of a served socket: accepts connections, identifies each peer (runtime/peer.ts: uid
 * allowlist, a pidfd taken at accept), and receives its handshake message, bytes and descriptors,
 * without reading them: what they mean is the SessionHost's business (in this process or a worker's).
 * Shared by the in-process RestoreServer and the supervisor of `lazysnap serve`.
 *
 * A peer that sends nothing within the handshake timeout, or whose message cannot be received, is
 * refused (its connection closed); one outside the allowlist is closed unread.
 */
import type { Logger } from '../core/logger.js';
import { acceptUnix, closeFd, recvWithFds, watchFd, type FdWatch } from '../native/index.js';
import type { RuntimeMetrics } from './metrics.js';
import { identifyPeer } from './peer.js';
import type { HandshakeMessage, Peer } from './session-host.js';

export interface AcceptorOptions {
  allowUids: readonly number[] | undefined;
  handshakeTimeoutMs: number;
  log: Logger;
  /** Where refused peers are counted (a supervisor has no registry: it counts in onPeerRefused). */
  metrics?: Pick<RuntimeMetrics, 'peersRefused'>;
  /** A handshake message arrived (the callee owns the peer's and the message's descriptors). */
  onMessage: (peer: Peer & { uid: number }, msg: HandshakeMessage) => void;
  /** A connection was refused before its message: the peer's descriptors are the callee's to close. */
  onRefused: (peer: Peer & { uid: number }, reason: string) => void;
  /** A peer outside the allowlist was closed unread (already logged). */
  onPeerRefused: (pid: number, reason: string) => void;
}

/** A connection waiting for its handshake message. */
export interface PendingConnection {
  peer: Peer & { uid: number };
  watch: FdWatch;
  timer: NodeJS.Timeout | undefined;
}

export class Acceptor {
  readonly #lfd: number;
  readonly #o: AcceptorOptions;
  readonly #pending = new Set<PendingConnection>();
  #watch: FdWatch | undefined;

  constructor(listenFd: number, o: AcceptorOptions) {
    this.#lfd = listenFd;
    this.#o = o;
    this.#watch = watchFd(listenFd, { readable: true }, () => this.acceptAll());
  }

  get listenFd(): number {
    return this.#lfd;
  }

  /** Connections accepted whose handshake has not arrived yet. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Accepts every connection in the backlog. */
  acceptAll(): void {
    for (let conn = acceptUnix(this.#lfd); conn >= 0; conn = acceptUnix(this.#lfd)) {
      const peer = identifyPeer(conn, this.#o.allowUids, this.#o.metrics, this.#o.log, this.#o.onPeerRefused);
      if (peer) this.wait(peer);
    }
  }

  /** Waits for the handshake of an accepted, identified connection (also one handed over mid-wait). */
  wait(peer: Peer & { uid: number }): void {
    const p: PendingConnection = { peer, timer: undefined, watch: { stop() {} } };
    p.watch = watchFd(peer.fd, { readable: true, disconnect: true }, () => this.#receive(p));
    p.timer = setTimeout(
      () => this.#refuse(p, `no handshake within ${this.#o.handshakeTimeoutMs} ms`),
      this.#o.handshakeTimeoutMs,
    );
    this.#pending.add(p);
    // A peer sends its handshake right after connecting, and it is often there already: received now,
    // not a turn of the event loop later (a wake-up of its own; the time to the first page, P6, counts it).
    this.#receive(p);
  }

  /** Stops accepting (the listening fd stays open: the caller closes or hands it over). */
  stop(): void {
    this.#watch?.stop();
    this.#watch = undefined;
  }

  /**
   * Gives up the connections still waiting for their handshake, without refusing them: the peers are
   * returned for someone else to wait on (a successor). Their timers and watches stop here.
   */
  takePending(): (Peer & { uid: number })[] {
    const out = [...this.#pending].map((p) => (this.#settle(p), p.peer));
    return out;
  }

  /**
   * Receives every handshake that has already arrived, now rather than on the next turn of the
   * event loop: a drain that starts must count the connections the kernel completed before it.
   */
  receiveArrived(): void {
    for (const p of [...this.#pending]) this.#receive(p);
  }

  /** Receives what has arrived, then refuses every connection still waiting (a shutdown). */
  flush(reason: string): void {
    this.receiveArrived();
    for (const p of [...this.#pending]) this.#refuse(p, reason);
  }

  #refuse(p: PendingConnection, reason: string): void {
    this.#settle(p);
    this.#o.onRefused(p.peer, reason);
  }

  #settle(p: PendingConnection): void {
    p.watch.stop();
    clearTimeout(p.timer);
    this.#pending.delete(p);
  }

  #receive(p: PendingConnection): void {
    let msg;
    try {
      // Firecracker sends the whole payload in one sendmsg, and a stream socket returns it whole to
      // one recvmsg of this size; the fd arrives with its first byte.
      msg = recvWithFds(p.peer.fd, 64 * 1024, 4);
    } catch (e) {
      this.#refuse(p, (e as Error).message);
      return;
    }
    if (msg === null) return;
    this.#settle(p);
    this.#o.onMessage(p.peer, msg);
  }
}

/** Closes a refused connection's descriptors. */
export function closePeer(peer: Peer): void {
  closeFd(peer.fd);
  closeFd(peer.pidfd);
}
