/**
 * The link between the supervisor and its worker: a SOCK_SEQPACKET socketpair (native proc.c), one JSON
 * message per packet with the descriptors it concerns in SCM_RIGHTS. Non-blocking on both sides: a worker
 * that stops reading never blocks the supervisor (a send that cannot go through is that worker's end).
 *
 * Every message names the link version; a worker of another version is not spoken to (the supervisor
 * starts its own program, so this only guards a half-upgraded install).
 */
import {
  closeFd,
  recvWithFds,
  sendWithFds,
  watchFd,
  WATCH_WRITABLE,
  type FdWatch,
} from '../../native/index.js';
import type { ServeOptions } from '../serve-options.js';

export const LINK_VERSION = 1;
/** Slots of a worker's activity page (Int32 each): one per loader thread, with room for replacements. */
export const ACTIVITY_SLOTS = 64;
/** Largest message: a handshake (64 KiB) base64-encoded, and its envelope. */
export const LINK_MAX_BYTES = 96 * 1024;

/** The worker's serve options: ServeOptions without what cannot cross a process boundary. */
export type WorkerOptions = Omit<ServeOptions, 'logger' | 'keys' | 'verifyKey'> & { verifyKeyPem?: string };

export type ToWorker =
  | {
      t: 'start';
      options: WorkerOptions;
      /** Chunks being decoded when earlier workers died, and how many times (crash attribution). */
      suspects: Record<string, number>;
      /** Crashes after which a suspect chunk is failed closed instead of loaded. */
      suspectLimit: number;
      /** Open the snapshot and wait to be promoted (no metrics port, no sessions yet). */
      standby: boolean;
      restarts: number;
      unservedMs: number;
    }
  /** A connection and its handshake message; fds: [conn, pidfd, state memfd, ...the message's]. */
  | { t: 'conn'; id: number; pid: number; uid: number; data: string; fdsTruncated: boolean }
  /** A session to adopt; fds: [conn, pidfd, uffd, state memfd]. */
  | { t: 'adopt'; id: number; pid: number; uid: number }
  /** Count a refusal the supervisor made (it has no metrics of its own). */
  | { t: 'count'; what: 'handshakeErrors' | 'peersRefused' }
  /**
   * This worker serves from now on (it is about to get every session): bind the metrics port if it has
   * not, take the current suspects, and add what happened since its start to the carried counters.
   */
  | { t: 'promote'; restarts: number; unservedMs: number; suspects: Record<string, number> }
  /** Which chunks are resident (a successor warms its table with them before it takes over). */
  | { t: 'resident' }
  /**
   * Fetch these chunks into the table before sessions arrive (`chunks`: encodeChunkList), giving up
   * after timeoutMs: an upgrade's successor, so that its first faults find what its predecessor had.
   */
  | { t: 'warm'; chunks: string; timeoutMs: number }
  /** Stop serving every session without ending it (a handover), then exit. */
  | { t: 'release' }
  /** Drain (graceMs), fail the rest closed, then exit: a shutdown with no successor. */
  | { t: 'drain'; graceMs: number };

export type FromWorker =
  /** Serving can begin; `fields` are what the `serving` line says about the snapshot. */
  | { t: 'ready'; fields: Record<string, unknown> }
  /** Promoted: `fields` now say where its metrics are. */
  | { t: 'promoted'; fields: Record<string, unknown> }
  /** The worker could not start (no manifest, a bad signature, a wrong key): `code` is the error's. */
  | { t: 'failed'; message: string; code?: string; url?: string }
  | { t: 'session'; id: number; restoreId: string }
  | { t: 'rejected'; id: number; reason: string }
  | { t: 'ended'; id: number; outcome: string }
  /** A suspect chunk loaded fine: it was only in flight by chance. */
  | { t: 'cleared'; chunk: number }
  | { t: 'resident'; chunks: string }
  | { t: 'warmed'; asked: number; fetched: number; ms: number }
  | { t: 'released' }
  | { t: 'drained' };

/**
 * At most this many chunk numbers cross a link in one message: 4 bytes each, base64, within
 * LINK_MAX_BYTES with room for the envelope (6 GiB of 512 KiB chunks, more than any memory budget).
 */
export const MAX_CHUNK_LIST = 12_288;

/** Chunk numbers as base64 of little-endian uint32s (JSON arrays of numbers would not fit as many). */
export function encodeChunkList(chunks: readonly number[]): string {
  const a = Uint32Array.from(chunks.slice(0, MAX_CHUNK_LIST));
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
}

/** The inverse of encodeChunkList; anything malformed is an empty list (warming is best effort). */
export function decodeChunkList(text: string): number[] {
  const b = Buffer.from(text, 'base64');
  if (b.length % 4 !== 0 || b.length / 4 > MAX_CHUNK_LIST) return [];
  const out: number[] = [];
  for (let o = 0; o < b.length; o += 4) out.push(b.readUInt32LE(o));
  return out;
}

type Envelope<T> = T & { v: number };

/**
 * One end of a SOCK_SEQPACKET link: JSON messages, descriptors in SCM_RIGHTS. `onMessage` gets each
 * message with the descriptors that came with it (the callee owns them). Sends never block: a message
 * the socket cannot take now waits in order until it can (the sender keeps its own copies of the
 * descriptors meanwhile, so they must stay open until the link is done with them).
 */
export class Link<In, Out> {
  readonly fd: number;
  readonly #onMessage: (msg: In, fds: number[]) => void;
  readonly #onClose: (reason: string) => void;
  readonly #version: number;
  readonly #out: { data: Buffer; fds: number[] }[] = [];
  #watch: FdWatch;
  #writable = false;
  #closed = false;

  constructor(
    fd: number,
    onMessage: (msg: In, fds: number[]) => void,
    onClose: (reason: string) => void,
    version = LINK_VERSION,
  ) {
    this.fd = fd;
    this.#onMessage = onMessage;
    this.#onClose = onClose;
    this.#version = version;
    this.#watch = this.#arm(false);
  }

  get closed(): boolean {
    return this.#closed;
  }

  #arm(writable: boolean): FdWatch {
    this.#writable = writable;
    return watchFd(this.fd, { readable: true, writable, disconnect: true }, (_err, events) => {
      if (events & WATCH_WRITABLE) this.#flush();
      if (!this.#closed) this.#read();
    });
  }

  #read(): void {
    for (;;) {
      let m;
      try {
        m = recvWithFds(this.fd, LINK_MAX_BYTES, 253);
      } catch (e) {
        this.#fail((e as Error).message);
        return;
      }
      if (m === null) return;
      if (m.data.length === 0) {
        for (const f of m.fds) closeFd(f);
        this.#fail('the other end closed the link');
        return;
      }
      let msg: Envelope<In>;
      try {
        if (m.truncated) throw new Error(`a message longer than ${LINK_MAX_BYTES} bytes`);
        msg = JSON.parse(m.data.toString('utf8')) as Envelope<In>;
        if (msg.v !== this.#version) throw new Error(`version ${msg.v}, expected ${this.#version}`);
      } catch (e) {
        for (const f of m.fds) closeFd(f);
        this.#fail(`a message that is not this protocol: ${(e as Error).message}`);
        return;
      }
      this.#onMessage(msg, m.fds);
      if (this.#closed) return;
    }
  }

  /** Queues one message (sent at once when the socket takes it); false when the link is closed. */
  send(msg: Out, fds: number[] = []): boolean {
    if (this.#closed) return false;
    this.#out.push({ data: Buffer.from(JSON.stringify({ ...msg, v: this.#version })), fds });
    this.#flush();
    return !this.#closed;
  }

  /** Messages not yet taken by the socket. */
  get backlog(): number {
    return this.#out.length;
  }

  #flush(): void {
    while (this.#out.length > 0 && !this.#closed) {
      const m = this.#out[0]!;
      try {
        sendWithFds(this.fd, m.data, m.fds);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
        this.#fail((e as Error).message);
        return;
      }
      this.#out.shift();
    }
    const want = this.#out.length > 0;
    if (!this.#closed && want !== this.#writable) {
      this.#watch.stop();
      this.#watch = this.#arm(want);
    }
  }

  #fail(reason: string): void {
    if (this.#closed) return;
    this.close();
    this.#onClose(reason);
  }

  /** Closes the link; queued messages are dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#out.length = 0;
    this.#watch.stop();
    closeFd(this.fd);
  }
}
