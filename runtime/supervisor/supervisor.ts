/**
 * `lazysnap serve` as two processes, so that neither a crash nor an upgrade loses a VM (OpenSSH's
 * privilege separation is the model). The supervisor (this) parses nothing from the network: it
 * accepts connections, receives each handshake message unread, and holds what must outlive a worker:
 * the listening socket, and for every session its connection, the peer's pidfd, its userfaultfd and its
 * state memfd (the removed-page bitmap and what a successor needs, runtime/session-state.ts). The worker
 * (worker-main.ts) does everything else: handshakes, manifests, origin bodies, decoding, fault threads.
 *
 * When the worker dies the supervisor starts another (runtime/supervisor/restart-policy.ts) and hands it
 * every session (SCM_RIGHTS); it adopts them: re-applies the REMOVEs its predecessor read, wakes every
 * region so that faults taken while nobody served are taken again, and serves on. The chunks the
 * dead worker's loader threads were decoding are read from a shared page: a chunk in flight at
 * `suspectCrashes` deaths is failed closed rather than loaded again, so one object that crashes the
 * decoder ends one session, not every session on the host in a crash loop.
 *
 * Shutdown and upgrade (docs/RELIABILITY.md, "Crashes and upgrades"):
 * - stop(): with a successor coming (systemd restarting the unit, fdStore) the worker releases every
 *   session and this process exits, its descriptors kept in systemd's store; otherwise a drain:
 *   sessions run out the grace period, the rest are failed closed.
 * - a serve started with takeOver asks this one, over `<socket>.ctl`, for everything (handover.ts).
 */
import { EventEmitter } from 'node:events';
import { lstatSync, readFileSync, unlinkSync } from 'node:fs';

import {
  HandoverRefusedError,
  InvalidUrlError,
  LazysnapError,
  WorkerFailedError,
  isErrorCode,
} from '../../core/errors.js';
import { settleHeap } from '../../core/heap.js';
import { componentLogger, type Logger } from '../../core/logger.js';
import { addon } from '../../native/addon.js';
import {
  acceptUnix,
  closeFd,
  connectUnix,
  listenUnix,
  peerCredentials,
  pidfdOpen,
  pidfdSendSignal,
  watchFd,
  type FdWatch,
} from '../../native/index.js';
import { assertSnapshotId } from '../../store/keys.js';
import { Acceptor } from '../acceptor.js';
import { resolveServeOptions, type ResolvedServeOptions, type ServeOptions } from '../serve-options.js';
import { listenSocket } from '../serve-socket.js';
import type { HandshakeMessage, Peer } from '../session-host.js';
import {
  controlPath,
  incompatibility,
  ownVersions,
  HANDOVER_VERSION,
  type ToNew,
  type ToOld,
  type Versions,
} from './handover.js';
import { Link, type FromWorker, type ToWorker, type WorkerOptions } from './link.js';
import { RestartPolicy } from './restart-policy.js';
import { notify, ownUnit, removeFds, restartPending, storeFds, takeListenFds } from './systemd.js';
import { WorkerProcess } from './worker-process.js';

export interface SupervisorOptions extends ServeOptions {
  /** Worker restarts within a minute answered at once; beyond them the delay doubles up to 5 s. @default 10 */
  restartBurst?: number;
  /** Worker deaths with a chunk being decoded after which that chunk is failed closed. @default 3 */
  suspectCrashes?: number;
  /** Take every session over from the serve running on this socket (an upgrade in place). @default false */
  takeOver?: boolean;
  /**
   * Keep every descriptor a successor needs in systemd's file descriptor store (the unit's
   * FileDescriptorStoreMax=), and adopt what the store hands back at start. @default false
   */
  fdStore?: boolean;
  /** What this serve calls its version in handovers and logs. @default the package's */
  release?: string;
  /**
   * Keep a standby worker ready (snapshot open, warmed up), so that a crash is answered by promoting it
   * in milliseconds rather than by starting a process (about half a second). Costs one idle worker's
   * memory (about 95 MiB RSS), which a host running a serve per snapshot pays per snapshot. @default false
   */
  standby?: boolean;
}

/** A connection whose handshake was received: forwarded to a worker, or its session confirmed. */
interface Conn {
  id: number;
  peer: Peer & { uid: number };
  /** forwarded: the worker has (or will get) the handshake; session: it serves it. */
  state: 'forwarded' | 'session';
  stateFd: number;
  /** The handshake, kept until the session is confirmed (a new worker gets it again). */
  msg: HandshakeMessage | undefined;
  uffd: number | undefined;
}

type Phase = 'starting' | 'serving' | 'handing-over' | 'stopping' | 'stopped';

export interface SupervisorStats {
  sessions: number;
  handshakes: number;
  workerPid: number | undefined;
  standbyPid: number | undefined;
  restarts: number;
  unservedMs: number;
  suspects: Record<string, number>;
}

export interface SupervisorEvents {
  /** A worker died; another starts after `delayMs` (undefined: giving up). */
  workerDied: [
    info: { pid: number | undefined; code: number | null; signal: string | null; delayMs?: number },
  ];
  /** A worker is ready and serving every session there was (`unservedMs`: how long none was). */
  workerReady: [info: { pid: number | undefined; adopted: number; unservedMs: number }];
}

/** How long a worker may take to answer a question that is optional (its resident chunks). */
const ASK_TIMEOUT_MS = 1000;
/**
 * How long a successor warms its chunk table before it takes over (the old serve serves meanwhile):
 * a memory budget's worth of chunks from an S3-like origin takes about a second.
 */
const WARM_TIMEOUT_MS = 10_000;

const PACKAGE_RELEASE = (() => {
  try {
    return (
      JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
        version: string;
      }
    ).version;
  } catch {
    try {
      return (
        JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
          version: string;
        }
      ).version;
    } catch {
      return 'unknown';
    }
  }
})();

export class Supervisor extends EventEmitter<SupervisorEvents> {
  readonly socketPath: string;
  readonly #o: ResolvedServeOptions;
  readonly #so: SupervisorOptions;
  readonly #log: Logger;
  readonly #versions: Versions;
  readonly #policy: RestartPolicy;
  readonly #conns = new Map<number, Conn>();
  readonly #suspects = new Map<number, number>();
  #nextId = 1;
  #phase: Phase = 'starting';
  /** The worker serving (or about to: it is being started). */
  #worker: WorkerProcess | undefined;
  /** A standby worker, ready to be promoted when the serving one dies. */
  #spare: WorkerProcess | undefined;
  #workerFields: Record<string, unknown> = {};
  #acceptor: Acceptor | undefined;
  #ctlFd: number | undefined;
  #ctlWatch: FdWatch | undefined;
  /** The worker that has been given every connection: new ones go straight to it. */
  #serving: WorkerProcess | undefined;
  /** Connections still waiting for their handshake when they were handed to a successor. */
  #waitingHandedOver: (Peer & { uid: number })[] = [];
  #restarts = 0;
  #unservedMs = 0;
  /** performance.now() when the last worker stopped serving, while none serves. */
  #unservedSince: number | undefined;
  #settle!: { resolve: () => void; reject: (e: Error) => void };
  /** Resolves when this serve has stopped (drained, or handed over); rejects when it gave up. */
  readonly done: Promise<void>;

  private constructor(o: ResolvedServeOptions, so: SupervisorOptions, log: Logger) {
    super();
    this.#o = o;
    this.#so = so;
    this.#log = log;
    this.socketPath = o.socketPath;
    this.#versions = ownVersions(o.id, so.release ?? PACKAGE_RELEASE);
    this.#policy = new RestartPolicy({ burst: so.restartBurst ?? 10 });
    this.done = new Promise((resolve, reject) => (this.#settle = { resolve, reject }));
    // A give-up nobody awaits must still not be an unhandled rejection: the caller sees it in done.
    this.done.catch(() => {});
  }

  /**
   * Starts the first worker (it opens the snapshot: a bad manifest, signature or key is refused here,
   * before the socket exists), then listens: on the socket given, on the one systemd handed back, or on
   * the one a running serve hands over (takeOver). Sessions found in systemd's store are adopted.
   */
  static async start(options: SupervisorOptions, signal?: AbortSignal): Promise<Supervisor> {
    const o = resolveServeOptions(options);
    assertSnapshotId(o.id);
    const log = (o.logger ?? componentLogger('runtime.supervisor')).child({ snapshotId: o.id });
    const s = new Supervisor(o, options, log);
    try {
      // A successor's worker starts as a standby: the metrics port is its predecessor's until the
      // handover, and it is promoted (and binds it) once it has every session.
      const w = await s.#startWorker(options.takeOver === true, signal);
      if (options.takeOver) {
        s.#spare = undefined;
        s.#worker = s.#serving = w;
        await s.#takeOver();
      } else {
        s.#served(w, undefined);
        const stored = options.fdStore ? takeListenFds() : new Map<string, number[]>();
        s.#listen(stored.get('listen')?.[0]);
        stored.delete('listen');
        s.#adoptStored(stored);
      }
      s.#listenControl();
    } catch (e) {
      s.#teardown();
      throw e;
    }
    s.#phase = 'serving';
    s.#spareUp();
    // The supervisor receives every handshake: its start-up garbage is collected before the first one.
    settleHeap();
    notify('READY=1\nSTATUS=serving');
    log.info(
      {
        socket: o.socketPath,
        ...s.#workerFields,
        supervisor: process.pid,
        worker: s.#worker?.pid,
        sessions: s.#conns.size,
        release: s.#versions.release,
      },
      'serving',
    );
    return s;
  }

  stats(): SupervisorStats {
    let sessions = 0;
    for (const c of this.#conns.values()) if (c.state === 'session') sessions++;
    return {
      sessions,
      handshakes: this.#conns.size - sessions + (this.#acceptor?.pending ?? 0),
      workerPid: this.#worker?.pid,
      standbyPid: this.#spare?.readyAt !== undefined ? this.#spare.pid : undefined,
      restarts: this.#restarts,
      unservedMs: this.#unservedMs,
      suspects: Object.fromEntries(this.#suspects),
    };
  }

  get workerPid(): number | undefined {
    return this.#worker?.pid;
  }

  /** Where the worker serves Prometheus metrics (each worker binds the same port again). */
  get metricsPort(): number | undefined {
    return this.#workerFields.metricsPort as number | undefined;
  }

  // ---- workers ---------------------------------------------------------------------------------

  #workerOptions(): WorkerOptions {
    const { logger: _l, keys: _k, verifyKey, ...rest } = this.#o;
    return {
      ...rest,
      ...(verifyKey ? { verifyKeyPem: verifyKey.export({ type: 'spki', format: 'pem' }).toString() } : {}),
    };
  }

  /**
   * Starts a worker and resolves once it is ready (it has opened the snapshot and warmed up); rejects
   * with its reason when it is not, once it has exited. A standby waits to be promoted.
   */
  async #startWorker(standby: boolean, signal?: AbortSignal): Promise<WorkerProcess> {
    const env = { ...process.env };
    // What systemd gave this process is not the worker's to use.
    for (const k of [
      'NOTIFY_SOCKET',
      'LISTEN_FDS',
      'LISTEN_PID',
      'LISTEN_FDNAMES',
      'WATCHDOG_USEC',
      'WATCHDOG_PID',
    ])
      delete env[k];
    const w = WorkerProcess.spawn(env, { restarts: this.#restarts, unservedMs: this.#unservedMs });
    if (standby) this.#spare = w;
    else this.#worker = w;
    w.on('message', (msg, fds) => this.#onWorkerMessage(w, msg, fds));
    w.send({
      t: 'start',
      options: this.#workerOptions(),
      suspects: Object.fromEntries(this.#suspects),
      suspectLimit: this.#so.suspectCrashes ?? 3,
      restarts: this.#restarts,
      unservedMs: this.#unservedMs,
      standby,
    });
    let failure: Error | undefined;
    await new Promise<void>((resolve) => {
      const onAbort = () => ((failure = signal!.reason as Error), w.kill());
      signal?.addEventListener('abort', onAbort, { once: true });
      const off = () => {
        signal?.removeEventListener('abort', onAbort);
        w.off('message', onMsg);
        w.off('exit', onExit);
      };
      const onMsg = (msg: FromWorker) => {
        if (msg.t === 'ready') {
          this.#workerFields = { ...this.#workerFields, ...msg.fields };
          off();
          resolve();
        } else if (msg.t === 'failed') failure = workerFailure(msg);
      };
      const onExit = (how: { code: number | null; signal: string | null }) => {
        off();
        failure ??= new WorkerFailedError(
          `the worker process ended before it was ready (${how.signal ?? `exit code ${how.code}`})`,
        );
        resolve();
      };
      w.on('message', onMsg);
      w.once('exit', onExit);
    });
    if (failure) {
      w.kill();
      await w.gone();
      throw Object.assign(failure, { worker: w });
    }
    w.once('exit', (how) => this.#onWorkerExit(w, how));
    return w;
  }

  #onWorkerMessage(w: WorkerProcess, msg: FromWorker, fds: number[]): void {
    for (const fd of fds) closeFd(fd); // a worker never has descriptors to give
    if (w !== this.#worker) return;
    switch (msg.t) {
      case 'session': {
        const c = this.#conns.get(msg.id);
        if (!c || c.state === 'session') return;
        // The worker checked that the message's first descriptor is a userfaultfd; the rest are not needed.
        const [uffd, ...rest] = c.msg!.fds;
        for (const fd of rest) closeFd(fd);
        c.uffd = uffd;
        c.msg = undefined;
        c.state = 'session';
        return;
      }
      case 'rejected':
      case 'ended':
        this.#forget(msg.id);
        return;
      case 'cleared':
        this.#suspects.delete(msg.chunk);
        return;
      case 'promoted':
        this.#workerFields = { ...this.#workerFields, ...msg.fields };
        return;
      default:
        return;
    }
  }

  #hand(w: WorkerProcess, c: Conn): boolean {
    const who = { id: c.id, pid: c.peer.pid, uid: c.peer.uid };
    if (c.state === 'session')
      return w.send({ t: 'adopt', ...who }, [c.peer.fd, c.peer.pidfd, c.uffd!, c.stateFd]);
    const m = c.msg!;
    return w.send({ t: 'conn', ...who, data: m.data.toString('base64'), fdsTruncated: m.fdsTruncated }, [
      c.peer.fd,
      c.peer.pidfd,
      c.stateFd,
      ...m.fds,
    ]);
  }

  #onWorkerExit(w: WorkerProcess, how: { code: number | null; signal: NodeJS.Signals | null }): void {
    const now = performance.now();
    if (w === this.#spare) {
      // A standby that dies serves nobody; start another after the policy's delay.
      this.#spare = undefined;
      if (this.#phase !== 'serving') return;
      const delay = this.#policy.next(now, w.readyAt !== undefined);
      this.#log.warn(
        { worker: w.pid, code: how.code, signal: how.signal, delayMs: delay },
        'the standby worker died',
      );
      setTimeout(() => this.#spareUp(), delay).unref();
      return;
    }
    if (w !== this.#worker) return;
    this.#worker = undefined;
    this.#serving = undefined;
    const inFlight = w.inFlight;
    for (const c of inFlight) this.#suspects.set(c, (this.#suspects.get(c) ?? 0) + 1);
    if (this.#phase !== 'serving') return;
    this.#unservedSince ??= now;
    this.#restarts++;
    const delay = this.#policy.next(now, w.readyAt !== undefined);
    // Workers that cannot even start: keep trying while the sessions can wait (their fail timeout, the
    // promise a fault is made), then fail them closed. With no session there is nothing to wait for.
    if (
      this.#policy.startFailures >= 3 &&
      (this.#conns.size === 0 || now - this.#unservedSince + delay >= this.#o.failTimeoutMs)
    ) {
      this.emit('workerDied', { pid: w.pid, code: how.code, signal: how.signal });
      this.#giveUp(
        new WorkerFailedError(
          `${this.#policy.startFailures} workers in a row ended before they were ready (the last: ${how.signal ?? `exit code ${how.code}`})`,
        ),
      );
      return;
    }
    const spare = this.#spare?.readyAt !== undefined && delay === 0 ? this.#spare : undefined;
    this.emit('workerDied', { pid: w.pid, code: how.code, signal: how.signal, delayMs: delay });
    this.#log.error(
      {
        worker: w.pid,
        code: how.code,
        signal: how.signal,
        sessions: this.#conns.size,
        inFlight,
        restarts: this.#restarts,
        delayMs: delay,
        standby: spare?.pid ?? null,
      },
      spare
        ? 'the worker died: the standby takes its sessions over'
        : 'the worker died: starting another; its sessions wait in the kernel meanwhile',
    );
    if (spare) {
      this.#spare = undefined;
      this.#worker = spare;
      this.#served(spare, 'standby promoted');
      this.#spareUp();
    } else setTimeout(() => void this.#restart(), delay);
  }

  async #restart(): Promise<void> {
    if (this.#phase !== 'serving' || this.#worker) return;
    let w: WorkerProcess;
    try {
      w = await this.#startWorker(false);
    } catch (e) {
      this.#log.error({ err: (e as Error).message }, 'a replacement worker did not start');
      // The policy again: a start failure this time.
      const failed = (e as { worker?: WorkerProcess }).worker;
      if (failed)
        this.#onWorkerExit(failed, { code: failed.child.exitCode, signal: failed.child.signalCode });
      return;
    }
    this.#served(w, 'worker restarted');
    this.#spareUp();
  }

  /**
   * A worker is ready to serve: it is told the counters and suspects as they are now, given every
   * connection, and the time nobody served is accounted. `what` is the log line (none at start).
   */
  #served(w: WorkerProcess, what: string | undefined, handAll = true): void {
    const unservedMs = this.#unservedSince === undefined ? 0 : performance.now() - this.#unservedSince;
    this.#unservedSince = undefined;
    this.#unservedMs += unservedMs;
    w.send({
      t: 'promote',
      restarts: this.#restarts - w.carried.restarts,
      unservedMs: this.#unservedMs - w.carried.unservedMs,
      suspects: Object.fromEntries(this.#suspects),
    });
    w.carried = { restarts: this.#restarts, unservedMs: this.#unservedMs };
    if (handAll) for (const c of this.#conns.values()) this.#hand(w, c);
    this.#serving = w;
    this.emit('workerReady', { pid: w.pid, adopted: this.#conns.size, unservedMs });
    if (what)
      this.#log.info(
        {
          worker: w.pid,
          sessions: this.#conns.size,
          unservedMs: Math.round(unservedMs * 10) / 10,
          restarts: this.#restarts,
        },
        what,
      );
  }

  /** Starts a standby worker unless there is one (or standby is off). Failures are logged, not fatal. */
  #spareUp(): void {
    if (!this.#so.standby || this.#spare || this.#phase !== 'serving') return;
    this.#startWorker(true).then(
      (w) => this.#log.info({ standby: w.pid }, 'standby ready'),
      (e: unknown) => {
        this.#log.warn({ err: (e as Error).message }, 'the standby worker did not start');
        const failed = (e as { worker?: WorkerProcess }).worker;
        if (failed === this.#spare) this.#spare = undefined;
        if (this.#phase !== 'serving') return;
        const delay = this.#policy.next(performance.now(), false);
        setTimeout(() => this.#spareUp(), delay).unref();
      },
    );
  }

  /** No worker can serve: every session is failed closed (its peer killed), then this serve ends. */
  #giveUp(e: Error): void {
    this.#log.error(
      { err: e.message, sessions: this.#conns.size },
      'no worker can serve: failing every session closed (SIGKILL of its peer) and exiting',
    );
    for (const c of this.#conns.values()) killQuietly(c.peer.pidfd);
    this.#teardown();
    this.#settle.reject(e);
  }

  // ---- connections -------------------------------------------------------------------------------

  #listen(inherited: number | undefined): void {
    const o = this.#o;
    const lfd =
      inherited ??
      listenSocket(o.socketPath, o.socketGroup, () =>
        this.#log.warn(
          { socket: o.socketPath },
          'replaced a stale socket: the previous server did not shut down cleanly (peers it served, if still running, wait on faults no one answers)',
        ),
      );
    if (this.#so.fdStore) storeFds('listen', [lfd]);
    this.#accept(lfd);
  }

  #accept(lfd: number): void {
    this.#acceptor = new Acceptor(lfd, {
      allowUids: this.#o.allowUids,
      handshakeTimeoutMs: this.#o.handshakeTimeoutMs,
      log: this.#log,
      onMessage: (peer, msg) => this.#received(peer, msg),
      onRefused: (peer, reason) => {
        this.#log.warn({ pid: peer.pid, reason }, 'handshake rejected; connection closed');
        closeFd(peer.fd);
        closeFd(peer.pidfd);
        this.#worker?.send({ t: 'count', what: 'handshakeErrors' });
      },
      onPeerRefused: () => this.#worker?.send({ t: 'count', what: 'peersRefused' }),
    });
  }

  /** A handshake message arrived: a state memfd for its session, and on to the worker. */
  #received(peer: Peer & { uid: number }, msg: HandshakeMessage): Conn {
    const c: Conn = {
      id: this.#nextId++,
      peer,
      state: 'forwarded',
      stateFd: addon().memfdCreate('lazysnap-session'),
      msg,
      uffd: undefined,
    };
    this.#conns.set(c.id, c);
    // Stored at once, not when the worker confirms: if this process dies first, the next one finds the
    // session (and adopts it, or fails it closed if it never started), rather than a peer nobody knows.
    if (this.#so.fdStore) this.#store(c, msg.fds[0]);
    if (this.#serving) this.#hand(this.#serving, c);
    return c;
  }

  #store(c: Conn, uffd: number | undefined): void {
    storeFds(`s${c.id}.conn`, [c.peer.fd]);
    storeFds(`s${c.id}.pidfd`, [c.peer.pidfd]);
    storeFds(`s${c.id}.state`, [c.stateFd]);
    if (uffd !== undefined) storeFds(`s${c.id}.uffd`, [uffd]);
  }

  /** A connection that is over (rejected, or its session ended): every copy closed. */
  #forget(id: number): void {
    const c = this.#conns.get(id);
    if (!c) return;
    this.#conns.delete(id);
    if (this.#so.fdStore) for (const k of ['conn', 'pidfd', 'state', 'uffd']) removeFds(`s${id}.${k}`);
    closeConn(c);
  }

  /** Sessions systemd's store handed back (a restart of the unit): adopted, or failed closed. */
  #adoptStored(stored: Map<string, number[]>): void {
    const groups = new Map<string, Map<string, number>>();
    for (const [name, fds] of stored) {
      const m = /^s(\d+)\.(conn|pidfd|state|uffd)$/.exec(name);
      if (!m) {
        this.#log.warn({ name, fds: fds.length }, 'closing descriptors of an unknown name from the store');
        for (const fd of fds) closeFd(fd);
        removeFds(name);
        continue;
      }
      const g = groups.get(m[1]!) ?? new Map<string, number>();
      groups.set(m[1]!, g);
      g.set(m[2]!, fds[0]!);
      for (const fd of fds.slice(1)) closeFd(fd);
    }
    for (const [oldId, g] of groups) {
      for (const k of ['conn', 'pidfd', 'state', 'uffd']) removeFds(`s${oldId}.${k}`);
      const conn = g.get('conn');
      const state = g.get('state');
      const uffd = g.get('uffd');
      let pidfd = g.get('pidfd');
      if (conn !== undefined && state !== undefined && uffd !== undefined && pidfd !== undefined) {
        try {
          const cred = peerCredentials(conn);
          this.#adopt({ fd: conn, pidfd, pid: cred.pid, uid: cred.uid }, uffd, state);
          continue;
        } catch {
          // the peer hung up while nobody served it: handled as half a session below
        }
      }
      // Half a session cannot be served: its peer is killed rather than left waiting on faults.
      if (pidfd === undefined && conn !== undefined) {
        try {
          pidfd = pidfdOpen(peerCredentials(conn).pid);
        } catch {
          // the peer is gone already: nobody to kill
        }
      }
      if (pidfd !== undefined) killQuietly(pidfd);
      this.#log.error(
        { stored: [...g.keys()] },
        'an incomplete session in the descriptor store: its peer was killed',
      );
      for (const fd of g.values()) closeFd(fd);
      if (pidfd !== undefined && pidfd !== g.get('pidfd')) closeFd(pidfd);
    }
  }

  /** Registers a session handed over (systemd's store, a predecessor) and gives it to the worker. */
  #adopt(peer: Peer & { uid: number }, uffd: number, stateFd: number): void {
    const c: Conn = { id: this.#nextId++, peer, state: 'session', stateFd, msg: undefined, uffd };
    this.#conns.set(c.id, c);
    if (this.#so.fdStore) this.#store(c, uffd);
    if (this.#serving) this.#hand(this.#serving, c);
  }

  // ---- stopping ------------------------------------------------------------------------------

  /**
   * Stops this serve. With the descriptor store and systemd restarting the unit, the worker releases
   * every session and this process is done: the next instance adopts them from the store. Otherwise a
   * drain: no new connections, live sessions run up to graceMs, the rest are failed closed.
   */
  async stop(graceMs = this.#o.shutdownGraceMs): Promise<void> {
    if (this.#phase === 'stopping' || this.#phase === 'stopped') return this.done;
    if (this.#so.fdStore) {
      const unit = ownUnit();
      if (unit && (await restartPending(unit))) {
        notify('STOPPING=1\nSTATUS=handing sessions to the next instance');
        await this.#release('systemd is restarting the unit: sessions stay in its descriptor store');
        this.#teardown({ keepSocket: true });
        this.#settle.resolve();
        return this.done;
      }
    }
    await this.#drain(graceMs);
    return this.done;
  }

  async #drain(graceMs: number): Promise<void> {
    this.#phase = 'stopping';
    notify('STOPPING=1\nSTATUS=draining');
    const acceptor = this.#acceptor;
    acceptor?.stop();
    this.#unlinkPaths();
    acceptor?.acceptAll();
    // Handshakes already queued are handed to the worker before the drain message, so it counts them.
    acceptor?.receiveArrived();
    this.#log.info({ sessions: this.#conns.size, graceMs }, 'draining sessions');
    const w = this.#worker;
    if (w && w.readyAt !== undefined) {
      w.send({ t: 'drain', graceMs });
      // Handshakes that arrive during the grace period still become sessions (forwarded as they come).
      const bound = setTimeout(() => w.kill(), graceMs + 10_000);
      await w.gone();
      clearTimeout(bound);
    }
    acceptor?.flush('server shutting down');
    // Whatever the worker did not end (it died while draining, or there was none) is failed closed.
    for (const c of this.#conns.values()) killQuietly(c.peer.pidfd);
    const ended = this.#conns.size;
    this.#teardown();
    this.#log.info({ failedClosed: ended }, 'stopped');
    this.#settle.resolve();
  }

  /** Asks the worker to release every session (stop serving, kill nobody) and waits for it to exit. */
  async #release(why: string): Promise<void> {
    this.#phase = 'handing-over';
    this.#acceptor?.stop();
    this.#log.info({ sessions: this.#conns.size, reason: why }, 'releasing sessions');
    const w = this.#worker;
    if (!w) return;
    w.send({ t: 'release' });
    const bound = setTimeout(() => w.kill(), 5000);
    await w.gone();
    clearTimeout(bound);
  }

  /** Removes the paths this serve listens on (never another serve's: a refused successor owns none). */
  #unlinkPaths(): void {
    const mine = [
      ...(this.#acceptor ? [this.#o.socketPath] : []),
      ...(this.#ctlFd !== undefined ? [controlPath(this.#o.socketPath)] : []),
    ];
    for (const p of mine) {
      try {
        if (lstatSync(p).isSocket()) unlinkSync(p);
      } catch {
        // not there any more: nothing to remove
      }
    }
  }

  /** Closes everything this process holds. keepSocket: the paths belong to a successor now. */
  #teardown(opts: { keepSocket?: boolean } = {}): void {
    this.#phase = 'stopped';
    this.#worker?.kill();
    this.#spare?.kill();
    this.#acceptor?.stop();
    this.#ctlWatch?.stop();
    if (!opts.keepSocket) this.#unlinkPaths();
    if (this.#ctlFd !== undefined) closeFd(this.#ctlFd);
    this.#ctlFd = undefined;
    if (this.#acceptor) {
      for (const p of this.#acceptor.takePending()) {
        closeFd(p.fd);
        closeFd(p.pidfd);
      }
      closeFd(this.#acceptor.listenFd);
    }
    this.#acceptor = undefined;
    for (const c of this.#conns.values()) closeConn(c);
    this.#conns.clear();
  }

  // ---- handover ------------------------------------------------------------------------------

  /** The control socket a successor connects to (`<socket>.ctl`, 0600, in the socket's checked directory). */
  #listenControl(): void {
    const path = controlPath(this.#o.socketPath);
    try {
      if (lstatSync(path).isSocket()) unlinkSync(path); // a predecessor's, or a stale one
    } catch {
      // no such path: nothing to replace
    }
    const fd = listenUnix(path, 4, true);
    this.#ctlFd = fd;
    this.#ctlWatch = watchFd(fd, { readable: true }, () => {
      for (let c = acceptUnix(fd); c >= 0; c = acceptUnix(fd)) this.#controlConnection(c);
    });
  }

  #controlConnection(fd: number): void {
    let uid: number;
    try {
      uid = peerCredentials(fd).uid;
    } catch {
      closeFd(fd);
      return;
    }
    if (uid !== 0 && uid !== process.getuid?.()) {
      this.#log.warn({ uid }, 'control connection refused: only this user or root may take sessions over');
      closeFd(fd);
      return;
    }
    let accepted = false;
    const link: Link<ToOld, ToNew> = new Link<ToOld, ToNew>(
      fd,
      (msg, fds) => {
        for (const f of fds) closeFd(f);
        if (msg.t === 'hello') {
          const why =
            this.#phase !== 'serving'
              ? `this serve is ${this.#phase}`
              : incompatibility(this.#versions, msg.versions);
          if (why) {
            this.#log.warn({ successor: msg.pid, reason: why }, 'handover refused; still serving');
            link.send({ t: 'refuse', reason: why });
            return;
          }
          // With the chunks this worker holds, for the successor to warm its table from (warm-table.ts).
          void this.#ask(this.#serving, { t: 'resident' }, 'resident', ASK_TIMEOUT_MS).then((r) =>
            link.send({
              t: 'offer',
              versions: this.#versions,
              sessions: this.#conns.size,
              ...(r ? { resident: r.chunks } : {}),
            }),
          );
        } else if (msg.t === 'take' && this.#phase === 'serving') {
          void this.#handOver(link);
        } else if (msg.t === 'ok' && this.#phase === 'handing-over') {
          accepted = true;
          this.#log.info({ sessions: this.#conns.size }, 'handed over: exiting');
          link.close();
          this.#teardown({ keepSocket: true });
          this.#settle.resolve();
        } else if (msg.t === 'refuse') {
          this.#log.warn({ reason: msg.reason }, 'the successor refused the handover; still serving');
          link.close();
        }
      },
      (reason) => {
        if (!accepted && this.#phase === 'handing-over') {
          this.#log.error({ reason }, 'the successor went away mid-handover: serving again');
          void this.#resume();
        }
      },
      HANDOVER_VERSION,
    );
  }

  async #handOver(link: Link<ToOld, ToNew>): Promise<void> {
    const waiting = this.#acceptor?.takePending() ?? [];
    await this.#release('a successor is taking over');
    const stoppedAt = performance.now();
    const lfd = this.#acceptor!.listenFd;
    link.send({ t: 'listen' }, [lfd]);
    for (const c of this.#conns.values()) {
      const who = { pid: c.peer.pid, uid: c.peer.uid };
      if (c.state === 'session')
        link.send({ t: 'session', ...who }, [c.peer.fd, c.peer.pidfd, c.uffd!, c.stateFd]);
      else
        link.send(
          { t: 'conn', ...who, data: c.msg!.data.toString('base64'), fdsTruncated: c.msg!.fdsTruncated },
          [c.peer.fd, c.peer.pidfd, c.stateFd, ...c.msg!.fds],
        );
    }
    for (const p of waiting) link.send({ t: 'waiting', pid: p.pid, uid: p.uid }, [p.fd, p.pidfd]);
    this.#waitingHandedOver = waiting;
    link.send({
      t: 'done',
      suspects: Object.fromEntries(this.#suspects),
      restarts: this.#restarts,
      unservedMs: this.#unservedMs,
      stoppedMsAgo: performance.now() - stoppedAt,
    });
    this.#unservedSince = stoppedAt;
  }

  /** The successor failed mid-handover: listen again, start a worker, adopt everything back. */
  async #resume(): Promise<void> {
    const lfd = this.#acceptor!.listenFd;
    this.#phase = 'serving';
    this.#accept(lfd);
    for (const p of this.#waitingHandedOver.splice(0)) this.#acceptor!.wait(p);
    this.#unservedSince ??= performance.now();
    try {
      let w = this.#spare?.readyAt !== undefined ? this.#spare : undefined;
      if (w) this.#spare = undefined;
      else w = await this.#startWorker(false);
      this.#worker = w;
      this.#served(w, 'serving again after a failed handover');
      this.#spareUp();
    } catch (e) {
      this.#giveUp(e as Error);
    }
  }

  /**
   * Sends `msg` to worker `w` and resolves with its reply of type `reply`; undefined when there is no
   * worker, it exits, or it does not answer within timeoutMs (what is asked for is always optional).
   */
  #ask<K extends FromWorker['t']>(
    w: WorkerProcess | undefined,
    msg: ToWorker,
    reply: K,
    timeoutMs: number,
  ): Promise<Extract<FromWorker, { t: K }> | undefined> {
    if (!w || w.exited) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const done = (v: Extract<FromWorker, { t: K }> | undefined) => {
        clearTimeout(timer);
        w.off('message', onMsg);
        w.off('exit', onExit);
        resolve(v);
      };
      const onMsg = (m: FromWorker) => {
        if (m.t === reply) done(m as Extract<FromWorker, { t: K }>);
      };
      const onExit = () => done(undefined);
      const timer = setTimeout(() => done(undefined), timeoutMs);
      w.on('message', onMsg);
      w.once('exit', onExit);
      w.send(msg);
    });
  }

  /**
   * The successor's side of an offer: warm this worker's chunk table with what the running serve holds
   * (it keeps serving meanwhile), then ask for everything.
   */
  async #warmThenTake(link: Link<ToNew, ToOld>, resident: string | undefined): Promise<void> {
    if (resident) {
      const w = await this.#ask(
        this.#worker,
        { t: 'warm', chunks: resident, timeoutMs: WARM_TIMEOUT_MS },
        'warmed',
        WARM_TIMEOUT_MS + ASK_TIMEOUT_MS,
      );
      if (w)
        this.#log.info(
          { chunks: w.asked, fetched: w.fetched, ms: Math.round(w.ms) },
          "warmed the chunk table with the running serve's resident chunks",
        );
    }
    link.send({ t: 'take' });
  }

  /** Connects to the serve running on this socket and takes every session over. */
  async #takeOver(): Promise<void> {
    const path = controlPath(this.#o.socketPath);
    let fd: number;
    try {
      fd = connectUnix(path, true);
    } catch (e) {
      throw new HandoverRefusedError(
        `nothing serves ${this.#o.socketPath} to take over from (${path}: ${(e as Error).message})`,
        e,
      );
    }
    const t0 = performance.now();
    let taken = 0;
    await new Promise<void>((resolve, reject) => {
      let done = false;
      const link: Link<ToNew, ToOld> = new Link<ToNew, ToOld>(
        fd,
        (msg, fds) => {
          try {
            switch (msg.t) {
              case 'refuse':
                throw new HandoverRefusedError(msg.reason);
              case 'offer': {
                const why = incompatibility(this.#versions, msg.versions);
                if (why) {
                  link.send({ t: 'refuse', reason: why });
                  throw new HandoverRefusedError(
                    `the running serve (${msg.versions.release}) cannot be adopted: ${why}`,
                  );
                }
                this.#log.info({ from: msg.versions.release, sessions: msg.sessions }, 'taking over');
                void this.#warmThenTake(link, msg.resident);
                return;
              }
              case 'listen':
                this.#accept(fds[0]!);
                if (this.#so.fdStore) storeFds('listen', [fds[0]!]);
                return;
              case 'session': {
                const [conn, pidfd, uffd, state] = fds;
                this.#adopt({ fd: conn!, pidfd: pidfd!, pid: msg.pid, uid: msg.uid }, uffd!, state!);
                taken++;
                return;
              }
              case 'conn': {
                const [conn, pidfd, state, ...rest] = fds;
                const c = this.#received(
                  { fd: conn!, pidfd: pidfd!, pid: msg.pid, uid: msg.uid },
                  { data: Buffer.from(msg.data, 'base64'), fds: rest, fdsTruncated: msg.fdsTruncated },
                );
                // The predecessor's memfd, not a new one: its worker may have started the session.
                closeFd(c.stateFd);
                c.stateFd = state!;
                taken++;
                return;
              }
              case 'waiting':
                this.#acceptor!.wait({ fd: fds[0]!, pidfd: fds[1]!, pid: msg.pid, uid: msg.uid });
                return;
              case 'done': {
                for (const [c, n] of Object.entries(msg.suspects)) this.#suspects.set(Number(c), n);
                this.#restarts = msg.restarts;
                this.#unservedMs = msg.unservedMs;
                this.#unservedSince = performance.now() - msg.stoppedMsAgo;
                done = true;
                link.send({ t: 'ok' });
                link.close();
                resolve();
                return;
              }
            }
          } catch (e) {
            for (const f of fds) closeFd(f);
            link.close();
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        },
        (reason) => {
          if (!done) reject(new HandoverRefusedError(`the running serve went away: ${reason}`));
        },
        HANDOVER_VERSION,
      );
      link.send({ t: 'hello', versions: this.#versions, pid: process.pid });
    });
    this.#served(this.#worker!, 'took over', false);
    this.#phase = 'serving';
    this.#log.info(
      { sessions: taken, handoverMs: Math.round((performance.now() - t0) * 10) / 10 },
      'handover complete',
    );
  }
}

/**
 * The error a worker could not start with, rebuilt on this side of the process boundary: a store URL
 * the user typed stays an InvalidUrlError (the CLI reports it as a usage error naming the flag); any
 * other keeps its code and message.
 */
function workerFailure(msg: Extract<FromWorker, { t: 'failed' }>): Error {
  if (msg.code === 'LAZYSNAP_INVALID_URL' && msg.url !== undefined) {
    const e = new InvalidUrlError(msg.url, '');
    e.message = msg.message;
    return e;
  }
  if (msg.code !== undefined && isErrorCode(msg.code)) return new LazysnapError(msg.code, msg.message);
  return new WorkerFailedError(msg.message);
}

function closeConn(c: Conn): void {
  closeFd(c.peer.fd);
  closeFd(c.peer.pidfd);
  closeFd(c.stateFd);
  if (c.uffd !== undefined) closeFd(c.uffd);
  for (const fd of c.msg?.fds ?? []) closeFd(fd);
}

function killQuietly(pidfd: number): void {
  try {
    pidfdSendSignal(pidfd, 'SIGKILL');
  } catch {
    // gone already
  }
}
