/**
 * The typed edge for sockets, processes and memory: what the handshake, the SDK and the tests need
 * that Node does not provide (SCM_RIGHTS, SO_PEERCRED, pidfds, process_vm_readv, raw mappings).
 */
import { constants as osConstants } from 'node:os';

import { InvalidArgumentError, type SystemError } from '../core/errors.js';
import { addon, type RecvResult } from './addon.js';

/**
 * Listens on a Unix socket created mode 0600 (non-blocking, close-on-exec): a stream socket, or with
 * `seqpacket` one that keeps message boundaries (the supervisor's control socket).
 */
export function listenUnix(path: string, backlog = 128, seqpacket = false): number {
  return addon().sockListen(path, backlog, seqpacket);
}
/** Accepts one pending connection; -1 when none is pending. */
export function acceptUnix(fd: number): number {
  return addon().sockAccept(fd);
}
export function connectUnix(path: string, seqpacket = false): number {
  return addon().sockConnect(path, seqpacket);
}
/** One recvmsg: data plus every SCM_RIGHTS fd that came with it; null when nothing is pending. */
export function recvWithFds(fd: number, maxBytes: number, maxFds: number): RecvResult | null {
  return addon().sockRecv(fd, maxBytes, maxFds);
}
/** One sendmsg carrying data and, in one SCM_RIGHTS message, the given fds. */
export function sendWithFds(fd: number, data: ArrayBufferView, fds: number[] = []): number {
  return addon().sockSend(fd, data, fds);
}
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  return addon().sockPeerCred(fd);
}
/** A pidfd for the connected peer (SO_PEERPIDFD, Linux 6.5+): signals sent to it can never hit a recycled PID. */
export function peerPidfd(fd: number): number {
  return addon().sockPeerPidfd(fd);
}
export function pidfdOpen(pid: number): number {
  return addon().pidfdOpen(pid);
}
export function pidfdSendSignal(pidfd: number, signal: NodeJS.Signals | number): void {
  addon().pidfdSendSignal(pidfd, signalNumber(signal));
}
export function closeFd(fd: number): void {
  addon().closeFd(fd);
}

/** Maps anonymous private memory (MAP_NORESERVE; hugetlb 2 MiB pages on request). */
export function mmapAnonymous(length: number, options: { hugetlb?: boolean } = {}): bigint {
  return addon().mmapAnonymous(length, options.hugetlb ?? false);
}
export function munmap(address: bigint, length: number): void {
  addon().munmap(address, length);
}
/**
 * Reads the byte at `address` on a thread of libuv's pool. On memory a fault session of this process
 * serves, that is a real fault, waited for off the JS thread (which serves it). The address must stay
 * mapped until the promise settles.
 */
export function touchAsync(address: bigint): Promise<number> {
  return addon().touchAsync(address);
}
export function madvise(address: bigint, length: number, advice: number): void {
  addon().madvise(address, length, advice);
}
/** Reads another process's memory into target; returns bytes read (short at an unreadable page). */
export function processVmRead(pid: number, remoteAddress: bigint, target: ArrayBufferView): number {
  return addon().processVmRead(pid, remoteAddress, target);
}
export function kill(pid: number, signal: NodeJS.Signals | number): void {
  addon().kill(pid, signalNumber(signal));
}
/**
 * An ArrayBuffer over existing memory the caller keeps mapped. Never touch uffd-registered memory
 * from the thread whose event loop serves its faults: that deadlocks. Use a worker.
 */
export function arrayBufferAt(address: bigint, length: number): ArrayBuffer {
  return addon().arrayBufferAt(address, length);
}
export function addressOf(view: ArrayBufferView): bigint {
  return addon().addressOf(view);
}

/** Data extents [start, end) of a file (sparse files: the holes are left out), via SEEK_DATA/SEEK_HOLE. */
export function fileDataExtents(fd: number): [number, number][] {
  return addon().fileDataExtents(fd);
}

export interface FdWatch {
  stop(): void;
}
export interface WatchEvents {
  readable?: boolean;
  writable?: boolean;
  disconnect?: boolean;
}
export const WATCH_READABLE = 1;
export const WATCH_WRITABLE = 2;
export const WATCH_DISCONNECT = 4;

/** Calls back on Node's event loop when fd is ready. Stop the watch before closing the fd. */
export function watchFd(
  fd: number,
  events: WatchEvents,
  cb: (err: SystemError | null, events: number) => void,
): FdWatch {
  const mask =
    (events.readable ? WATCH_READABLE : 0) |
    (events.writable ? WATCH_WRITABLE : 0) |
    (events.disconnect ? WATCH_DISCONNECT : 0);
  if (mask === 0)
    throw new InvalidArgumentError('events', 'at least one of readable, writable, disconnect', events);
  const h = addon().watchStart(fd, mask, cb);
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      addon().watchStop(h);
    },
  };
}

function signalNumber(signal: NodeJS.Signals | number): number {
  if (typeof signal === 'number') return signal;
  const n = osConstants.signals[signal];
  if (n === undefined) throw new InvalidArgumentError('signal', 'a signal name such as SIGKILL', signal);
  return n;
}
