/**
 * Handing a running `serve` to its successor without dropping a VM (an upgrade in place, as nginx
 * upgrades its binary): the new serve (`--take-over`) starts its worker, opens the snapshot, then
 * connects to the old one's control socket (`<socket>.ctl`, 0600, same uid or root) and asks for its
 * sessions. Both sides check that the other's versions are ones they read; then the old one stops
 * serving (its worker releases every session: no peer is killed, faults taken meanwhile wait in the
 * kernel), sends the listening socket and every session's descriptors, and exits once the new one has
 * them. A successor that refuses, or dies before it has everything, leaves the old one serving.
 *
 * Messages are JSON over SOCK_SEQPACKET (runtime/supervisor/link.ts), descriptors in SCM_RIGHTS.
 */
import { addon } from '../../native/addon.js';
import { SESSION_META_VERSION } from '../session-state.js';

/** This protocol's version: both sides must speak the same. */
export const HANDOVER_VERSION = 1;

/** What each side says about itself; a successor adopts only what it can read. */
export interface Versions {
  handover: number;
  /** The native session-state layout (native/src/session_state.h). */
  state: number;
  /** The session metadata written next to it (runtime/session-state.ts). */
  meta: number;
  snapshotId: string;
  /** The package version, for the logs. */
  release: string;
}

export function ownVersions(snapshotId: string, release: string): Versions {
  return {
    handover: HANDOVER_VERSION,
    state: addon().STATE_VERSION,
    meta: SESSION_META_VERSION,
    snapshotId,
    release,
  };
}

/** Why `theirs` cannot be adopted by (or from) `ours`; undefined when it can. */
export function incompatibility(ours: Versions, theirs: Versions): string | undefined {
  if (theirs.handover !== ours.handover)
    return `handover protocol ${theirs.handover}, this side speaks ${ours.handover}`;
  if (theirs.state !== ours.state)
    return `session state layout ${theirs.state}, this side reads ${ours.state}`;
  if (theirs.meta !== ours.meta) return `session metadata ${theirs.meta}, this side reads ${ours.meta}`;
  if (theirs.snapshotId !== ours.snapshotId)
    return `it serves snapshot ${theirs.snapshotId}, this side ${ours.snapshotId}`;
  return undefined;
}

/** The successor (connecting side) to the running serve. */
export type ToOld =
  | { t: 'hello'; versions: Versions; pid: number }
  /** Go: stop serving and send everything. */
  | { t: 'take' }
  /** Everything arrived and is being served: the old serve may exit. */
  | { t: 'ok' }
  | { t: 'refuse'; reason: string };

/** The running serve to its successor. */
export type ToNew =
  /** resident: the chunks the running worker holds (link.ts encodeChunkList), for the successor to warm. */
  | { t: 'offer'; versions: Versions; sessions: number; resident?: string }
  | { t: 'refuse'; reason: string }
  /** fds: [listening socket] */
  | { t: 'listen' }
  /** A live session; fds: [conn, pidfd, uffd, state memfd]. */
  | { t: 'session'; pid: number; uid: number }
  /** A handshake received, its session not yet confirmed; fds: [conn, pidfd, state memfd, ...message's]. */
  | { t: 'conn'; pid: number; uid: number; data: string; fdsTruncated: boolean }
  /** A connection whose handshake has not arrived; fds: [conn, pidfd]. */
  | { t: 'waiting'; pid: number; uid: number }
  | {
      t: 'done';
      suspects: Record<string, number>;
      restarts: number;
      unservedMs: number;
      /** When the old serve stopped serving (its clock is not ours: a duration since is sent instead). */
      stoppedMsAgo: number;
    };

/** The control socket beside a serve socket. */
export function controlPath(socketPath: string): string {
  return `${socketPath}.ctl`;
}
