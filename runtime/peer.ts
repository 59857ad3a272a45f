/**
 * Who connected: the peer's credentials (SO_PEERCRED, as of connect()) checked against the uid allowlist,
 * and a pidfd of it, taken now: a SIGKILL sent through it later can never reach a process that reused the
 * PID. Shared by the in-process server and the supervisor (which holds these for a worker that may die).
 */
import type { Logger } from '../core/logger.js';
import { closeFd, peerCredentials, peerPidfd, pidfdOpen } from '../native/index.js';
import type { RuntimeMetrics } from './metrics.js';
import type { Peer } from './session-host.js';

/**
 * The accepted connection `conn` as a Peer, or undefined when it was refused (a uid outside
 * `allowUids`, logged and counted) or cannot be identified; then `conn` is closed.
 */
export function identifyPeer(
  conn: number,
  allowUids: readonly number[] | undefined,
  metrics: Pick<RuntimeMetrics, 'peersRefused'> | undefined,
  log: Logger,
  onRejected: (pid: number, reason: string) => void,
): (Peer & { uid: number }) | undefined {
  try {
    const cred = peerCredentials(conn);
    if (allowUids && !allowUids.includes(cred.uid)) {
      metrics?.peersRefused.inc();
      log.warn(
        { uid: cred.uid, pid: cred.pid, allowUids },
        `connection refused: peer uid ${cred.uid} (pid ${cred.pid}) is not in the allowlist`,
      );
      closeFd(conn);
      onRejected(cred.pid, `uid ${cred.uid} is not in the allowlist`);
      return undefined;
    }
    let pidfd: number;
    try {
      pidfd = peerPidfd(conn);
    } catch {
      pidfd = pidfdOpen(cred.pid);
    }
    return { fd: conn, pidfd, pid: cred.pid, uid: cred.uid };
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'connection dropped: cannot identify the peer');
    closeFd(conn);
    return undefined;
  }
}
