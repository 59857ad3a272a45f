/**
 * The parts of systemd's service protocol the supervisor speaks (sd_notify(3), sd_listen_fds(3)), so that
 * `systemctl restart lazysnap@ID` loses no VM: every descriptor a successor needs is kept in the unit's
 * file descriptor store (FDSTORE=1, named), and handed to the next instance in LISTEN_FDS /
 * LISTEN_FDNAMES. infra/systemd/lazysnap@.service enables the store (FileDescriptorStoreMax=).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';

import { addon } from '../../native/addon.js';
import { closeFd } from '../../native/index.js';

/** The first descriptor systemd passes (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;

/** Whether the service manager listens for notifications (Type=notify). */
export function notifySocket(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const s = env.NOTIFY_SOCKET;
  return s && (s.startsWith('/') || s.startsWith('@')) ? s : undefined;
}

/** Sends one notification (`READY=1`, `STATUS=...`, `FDSTORE=1\nFDNAME=x`) with descriptors; false without a socket. */
export function notify(state: string, fds: number[] = [], env: NodeJS.ProcessEnv = process.env): boolean {
  const path = notifySocket(env);
  if (!path) return false;
  addon().datagramSend(path, Buffer.from(state), fds);
  return true;
}

/** Keeps `fds` in the unit's descriptor store under `name` (a successor gets them back by name). */
export function storeFds(name: string, fds: number[]): boolean {
  return notify(`FDSTORE=1\nFDNAME=${name}`, fds);
}

/** Drops every descriptor stored under `name`. */
export function removeFds(name: string): boolean {
  return notify(`FDSTOREREMOVE=1\nFDNAME=${name}`);
}

/**
 * The descriptors the service manager passed (LISTEN_FDS, for this pid), by name. Each is moved to a
 * close-on-exec copy (systemd passes them inheritable: a worker must not get them by accident), and the
 * variables are removed from the environment so that no child takes them for its own.
 */
export function takeListenFds(env: NodeJS.ProcessEnv = process.env): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const count = Number(env.LISTEN_FDS ?? 0);
  const forUs = Number(env.LISTEN_PID) === process.pid;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (!forUs || !Number.isInteger(count) || count <= 0) return out;
  for (let i = 0; i < count; i++) {
    const fd = LISTEN_FDS_START + i;
    const copy = addon().dupFd(fd);
    closeFd(fd);
    const name = names[i] || 'unknown';
    out.set(name, [...(out.get(name) ?? []), copy]);
  }
  return out;
}

/** This process's systemd unit, from its cgroup (what sd_pid_get_unit reads), if it runs in one. */
export function ownUnit(cgroupFile = '/proc/self/cgroup'): string | undefined {
  let text: string;
  try {
    text = readFileSync(cgroupFile, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const path = line.split(':').slice(2).join(':');
    const unit = path
      .split('/')
      .reverse()
      .find((p) => p.endsWith('.service'));
    if (unit) return unit;
  }
  return undefined;
}

/**
 * Whether the job systemd is running on `unit` restarts it (`systemctl restart`, `try-restart`): then a
 * successor will start and adopt what is in the descriptor store. Anything else, including no answer
 * within 2 s, is a stop with no successor.
 */
export async function restartPending(unit: string): Promise<boolean> {
  const out = await new Promise<string>((resolve) =>
    execFile(
      'systemctl',
      ['list-jobs', '--no-legend', '--no-pager', '--full'],
      { timeout: 2000 },
      (e, stdout) => resolve(e ? '' : stdout),
    ),
  );
  return jobRestarts(out, unit);
}

/** From `systemctl list-jobs --no-legend` output: whether `unit`'s job is a restart. */
export function jobRestarts(listJobs: string, unit: string): boolean {
  for (const line of listJobs.split('\n')) {
    const [, name, type] = line.trim().split(/\s+/);
    if (name === unit) return type === 'restart' || type === 'try-restart';
  }
  return false;
}
