/**
 * A minimal handler built directly on the native layer, for testing that layer: accept on a 0600
 * socket, receive the handshake, open a FaultSession over a ChunkTable, and answer `need` events
 * from an in-memory image with a pluggable policy. The real runtime (runtime/) adds fetching,
 * caching and validation; this harness is deliberately simple so that tests see the mechanism.
 */
import { unlinkSync } from 'node:fs';
import path from 'node:path';

import {
  ChunkTable,
  FaultSession,
  acceptUnix,
  closeFd,
  listenUnix,
  recvWithFds,
  watchFd,
  type PageSize,
  type Region,
  type SessionEvent,
} from '../../native/index.js';

export interface Accepted {
  session: FaultSession;
  uffd: number;
  conn: number;
  regions: Region[];
  pageSize: PageSize;
  events: SessionEvent[];
  /** Resolves when a chunk shows up in an `installed` event. */
  installed(chunk: number): Promise<void>;
}

export type NeedPolicy = (chunks: Uint32Array, a: Accepted, h: Harness) => void;

export interface HarnessOptions {
  dir: string;
  image: Buffer;
  chunkSize: number;
  /** Chunks the table marks zero up front (faults on them must never reach JS). */
  zeroChunks?: number[];
  /** Chunks made resident before any client connects. */
  residentChunks?: number[] | 'all';
  /** What to do with `need`: default puts the image bytes and installs at once. */
  onNeed?: NeedPolicy;
  /** Open each session in direct mode (FaultSession option `direct`), before any fault. */
  direct?: boolean;
}

export class Harness {
  readonly socketPath: string;
  readonly table: ChunkTable;
  readonly accepted: Accepted[] = [];
  readonly needSeen: number[] = [];
  readonly #lfd: number;
  readonly #watch: { stop(): void };
  readonly #waiters: ((a: Accepted) => void)[] = [];
  readonly #opts: HarnessOptions;
  #closed = false;

  constructor(opts: HarnessOptions) {
    this.#opts = opts;
    this.socketPath = path.join(opts.dir, 'uffd.sock');
    try {
      unlinkSync(this.socketPath);
    } catch {
      // No socket left from an earlier run: nothing to remove.
    }
    this.table = new ChunkTable(opts.image.length, opts.chunkSize);
    for (const z of opts.zeroChunks ?? []) this.table.setZero(z);
    const resident =
      opts.residentChunks === 'all' ? [...Array(this.table.chunks).keys()] : (opts.residentChunks ?? []);
    for (const i of resident) this.putChunk(i);
    this.#lfd = listenUnix(this.socketPath);
    this.#watch = watchFd(this.#lfd, { readable: true }, () => this.#accept());
  }

  putChunk(i: number): void {
    const cs = this.#opts.chunkSize;
    this.table.put(i, this.#opts.image.subarray(i * cs, Math.min(this.#opts.image.length, (i + 1) * cs)));
  }

  /** Resolves with the index-th accepted session (0 = the first), once it is accepted. */
  session(index = 0): Promise<Accepted> {
    const a = this.accepted[index];
    if (a) return Promise.resolve(a);
    return new Promise((res) =>
      this.#waiters.push((x) => (this.accepted.indexOf(x) === index ? res(x) : undefined)),
    );
  }

  #accept(): void {
    for (let c = acceptUnix(this.#lfd); c >= 0; c = acceptUnix(this.#lfd)) {
      const conn = c;
      const w = watchFd(conn, { readable: true }, () => {
        const m = recvWithFds(conn, 64 * 1024, 4);
        if (!m) return;
        w.stop();
        this.#open(conn, m.data, m.fds);
      });
    }
  }

  #open(conn: number, data: Buffer, fds: number[]): void {
    const raw = JSON.parse(data.toString('utf8')) as {
      base_host_virt_addr: number;
      size: number;
      offset: number;
      page_size?: number;
      page_size_kib?: number;
    }[];
    const pageSize = (raw[0]?.page_size ?? raw[0]?.page_size_kib ?? 4096) as PageSize;
    const regions = raw.map((r) => ({ base: BigInt(r.base_host_virt_addr), size: r.size, offset: r.offset }));
    const uffd = fds[0]!;
    const waiters = new Map<number, (() => void)[]>();
    const done = new Set<number>();
    const a = {} as Accepted;
    const events: SessionEvent[] = [];
    // Direct mode from creation on: switched on afterwards, the first faults would already be `need`s.
    const direct = this.#opts.direct ?? false;
    const session = new FaultSession(uffd, { table: this.table, pageSize, regions, direct }, (e) => {
      events.push(e);
      for (const i of e.installed) {
        done.add(i);
        for (const f of waiters.get(i) ?? []) f();
        waiters.delete(i);
      }
      if (e.need.length) {
        this.needSeen.push(...e.need);
        (this.#opts.onNeed ?? defaultNeed)(e.need, a, this);
      }
      if (e.missing.length) (this.#opts.onNeed ?? defaultNeed)(e.missing, a, this);
    });
    Object.assign(a, {
      session,
      uffd,
      conn,
      regions,
      pageSize,
      events,
      installed: (i: number) =>
        done.has(i)
          ? Promise.resolve()
          : new Promise<void>((res) => waiters.set(i, [...(waiters.get(i) ?? []), res])),
    });
    this.accepted.push(a);
    for (const f of this.#waiters) f(a);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.stop();
    closeFd(this.#lfd);
    for (const a of this.accepted) {
      a.session.close();
      closeFd(a.conn);
    }
    try {
      unlinkSync(this.socketPath);
    } catch {
      // Never bound, or already removed: nothing to clean up.
    }
  }
}

const defaultNeed: NeedPolicy = (chunks, a, h) => {
  for (const i of chunks) h.putChunk(i);
  a.session.install(chunks);
};
