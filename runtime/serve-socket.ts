/**
 * `serve`'s listening socket: where it goes, and who may reach it. Whoever can connect hands the server a
 * userfaultfd and gets guest memory back, and whoever can replace the socket file can put their own
 * server in front of the VMs, so:
 *
 * - the socket is 0600 (native listenUnix chmods it between bind and listen, so nobody connects in
 *   between), in a directory created 0700 when it is missing;
 * - the directory must be owned by this process's user or root and writable by nobody else, and
 *   every directory above it must be owned by this user or root and writable by others only with
 *   the sticky bit (like /tmp): the OpenSSH StrictModes rule. Symlinks are resolved first and the
 *   real path is checked. Anything else is refused (InsecurePathError), never "fixed";
 * - `group` (a gid) lets peers of another uid in, as a jailed Firecracker needs: the socket becomes
 *   0660 of that group, and the directories this call creates 0710 of that group (traversable, not
 *   listable). A directory that already exists keeps its owner and mode: giving the group access
 *   to it is the operator's decision. Pair it with an allowlist of peer uids (SO_PEERCRED).
 */
import { chmodSync, chownSync, lstatSync, realpathSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';

import { makeDirsSync } from '../core/make-dirs.js';
import { InsecurePathError, InvalidArgumentError } from '../core/errors.js';
import { closeFd, listenUnix } from '../native/index.js';

const STICKY = 0o1000;
const OTHERS_WRITE = 0o022;

/**
 * Checks (and if need be creates) the socket's directory, replaces a stale socket (never any other
 * file; onStale is told), and listens. Returns the listening fd.
 */
export function listenSocket(
  socketPath: string,
  group?: number,
  onStale?: () => void,
  backlog = 1024,
): number {
  prepareSocketDir(socketPath, group);
  try {
    if (!lstatSync(socketPath).isSocket())
      throw new InvalidArgumentError('socket', 'a path that is free or holds a stale socket', socketPath);
    unlinkSync(socketPath); // a previous server's socket; nothing else is ever removed
    onStale?.();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const fd = listenUnix(socketPath, backlog);
  if (group !== undefined) {
    try {
      shareSocket(socketPath, group);
    } catch (e) {
      closeFd(fd);
      unlinkSync(socketPath);
      throw e;
    }
  }
  return fd;
}

/** Creates the socket's directory if missing and checks it and every directory above it. */
export function prepareSocketDir(socketPath: string, group?: number): string {
  const dir = path.dirname(path.resolve(socketPath));
  const first = makeDirsSync(dir, 0o700);
  if (first !== undefined && group !== undefined) {
    // Every directory this call created, from the first down to the socket's own.
    for (let d = dir; ; d = path.dirname(d)) {
      chownSync(d, -1, group);
      chmodSync(d, 0o710);
      if (d === first || d === path.dirname(d)) break;
    }
  }
  checkDir(dir);
  return dir;
}

/** After listen: opens the socket to `group` (0660). */
function shareSocket(socketPath: string, group: number): void {
  chownSync(socketPath, -1, group);
  chmodSync(socketPath, 0o660);
}

function checkDir(dir: string): void {
  const euid = process.geteuid?.() ?? 0;
  const real = realpathSync(dir);
  const st = lstatSync(real);
  if (!st.isDirectory()) throw new InsecurePathError(real, 'not a directory');
  trusted(real, st.uid, euid);
  if (st.mode & OTHERS_WRITE) {
    throw new InsecurePathError(
      real,
      `the socket's directory is writable by ${who(st.mode)} (mode ${octal(st.mode)}): use a directory only its owner can write (chmod go-w, or a new path lazysnap creates 0700)`,
    );
  }
  for (let d = path.dirname(real); ; d = path.dirname(d)) {
    const a = statSync(d);
    trusted(d, a.uid, euid);
    if (a.mode & OTHERS_WRITE && !(a.mode & STICKY)) {
      throw new InsecurePathError(
        d,
        `a directory above the socket is writable by ${who(a.mode)} without the sticky bit (mode ${octal(a.mode)}): others could rename the socket's directory away`,
      );
    }
    if (d === path.dirname(d)) break;
  }
}

function trusted(p: string, uid: number, euid: number): void {
  if (uid !== euid && uid !== 0)
    throw new InsecurePathError(p, `owned by uid ${uid}, not by this process's uid ${euid} or root`);
}

const who = (mode: number) =>
  mode & 0o020 && mode & 0o002 ? 'group and others' : mode & 0o020 ? 'its group' : 'others';
const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;
