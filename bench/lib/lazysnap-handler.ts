/**
 * lazysnap-handler: the lazysnap side of the fault-path benchmarks, a standalone program that serves
 * ONE Firecracker-exact client with the native fault path, like bench/ref/ref-handler.c does in C.
 *
 *   node --import tsx bench/lib/lazysnap-handler.ts --socket P --image F --chunk-size N [--mode resident|install]
 *
 * --mode resident (default): every chunk is put in the ChunkTable before listening, so the native
 *   fault thread resolves every fault in C and JS never sees one (what P1 and P2 compare).
 * --mode install: the table starts empty; when the handshake arrives JS reads, puts and install()s
 *   every chunk in order, as a prefetch stream would. Timed from the first install() to the last
 *   `installed` event; printed as one `{"event":"install-done",...}` line as soon as it completes.
 *
 * stdout: `listening`, then (install mode) the install-done line, then one stats JSON line when the
 * client closes its socket (EOF); then the process exits. Errors exit 1 after printing to stderr.
 * The harness (bench/lib/procs.ts) kills this process on timeout, so the fault thread never outlives it.
 */
import { fstatSync, openSync, readSync, unlinkSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { arenaHugePages } from '../../runtime/memory-tier.js';
import { describeFailure } from '../../runtime/native-failure.js';
import { DEFAULT_MEMORY_BUDGET_BYTES } from '../../runtime/serve-options.js';

import {
  ChunkTable,
  FaultSession,
  acceptUnix,
  closeFd,
  listenUnix,
  recvWithFds,
  watchFd,
  type FdWatch,
  type PageSize,
  type SessionEvent,
} from '../../native/index.js';

interface WireRegion {
  base_host_virt_addr: number;
  size: number;
  offset: number;
  page_size?: number;
  page_size_kib?: number;
}

const { values } = parseArgs({
  options: {
    socket: { type: 'string' },
    image: { type: 'string' },
    'chunk-size': { type: 'string' },
    mode: { type: 'string', default: 'resident' },
  },
  strict: true,
});
const mode = values.mode;
const chunkSize = Number(values['chunk-size']);
if (
  !values.socket ||
  !values.image ||
  !Number.isInteger(chunkSize) ||
  (mode !== 'resident' && mode !== 'install')
) {
  console.error(
    'usage: lazysnap-handler --socket PATH --image FILE --chunk-size N [--mode resident|install]',
  );
  process.exit(2);
}
const socketPath = values.socket;

function fail(msg: string, cause?: unknown): never {
  console.error(`lazysnap-handler: ${msg}${cause instanceof Error ? `: ${cause.message}` : ''}`);
  process.exit(1);
}

/*
 * Chunks are read from the image file one at a time into one reusable buffer, as a local store would
 * hand them over, and put() copies each into the table: the process holds the table and nothing else
 * of the image. (An earlier version kept the whole image in a JS Buffer beside the table; that second
 * 1 GiB of 4 KiB-mapped memory cut populate throughput about 3× on this nested VM; see
 * bench/ANALYSIS.md.)
 */
const imageFd = openSync(values.image, 'r');
const imageBytes = fstatSync(imageFd).size;
// Pages as `serve` with its default --memory-budget picks them for this snapshot (runtime/memory-tier.ts).
const table = new ChunkTable(imageBytes, chunkSize, {
  hugePages: arenaHugePages(chunkSize, imageBytes, DEFAULT_MEMORY_BUDGET_BYTES),
});
const readBuf = Buffer.allocUnsafe(chunkSize);
function readChunk(i: number): Buffer {
  const len = table.chunkLength(i);
  let got = 0;
  while (got < len) {
    const n = readSync(imageFd, readBuf, got, len - got, i * chunkSize + got);
    if (n === 0) fail(`image shrank while reading chunk ${i}`);
    got += n;
  }
  return readBuf.subarray(0, len);
}
if (mode === 'resident') for (let i = 0; i < table.chunks; i++) table.put(i, readChunk(i));

let session: FaultSession | undefined;
let installStart = 0n;
let installNs: number | null = null;
let installedCount = 0;
let needEvents = 0;
let errors = 0;

function onEvent(e: SessionEvent): void {
  // Resident chunks never produce `need`; in install mode a need would mean the client faulted
  // before its chunk was put (it waits for `go`, so it should not). Counted, not served: the
  // in-order stream installs that chunk anyway.
  needEvents += e.need.length;
  errors += e.failures.length;
  for (const f of e.failures) console.error(`lazysnap-handler: session failure: ${describeFailure(f)}`);
  if (mode === 'install' && e.installed.length) {
    installedCount += e.installed.length;
    if (installedCount >= table.chunks && installNs === null) {
      installNs = Number(process.hrtime.bigint() - installStart);
      const gbps = imageBytes / installNs;
      console.log(JSON.stringify({ event: 'install-done', chunks: installedCount, installNs, gbps }));
    }
  }
}

function openSession(raw: WireRegion[], fds: number[]): void {
  const uffd = fds[0];
  if (uffd === undefined || !Array.isArray(raw) || raw.length === 0)
    fail('handshake: expected regions JSON and one uffd');
  for (const extra of fds.slice(1)) closeFd(extra);
  const pageSize = (raw[0]?.page_size ?? raw[0]?.page_size_kib ?? 4096) as PageSize;
  const regions = raw.map((r) => ({ base: BigInt(r.base_host_virt_addr), size: r.size, offset: r.offset }));
  session = new FaultSession(uffd, { table, pageSize, regions }, onEvent);
  if (mode === 'install') {
    // The JS-driven stream, as a prefetcher receiving chunks would run it: read, put and install()
    // each chunk in order, one install() per chunk (each wakes the fault thread via its eventfd).
    for (let i = 0; i < table.chunks; i++) {
      table.put(i, readChunk(i));
      if (i === 0) installStart = process.hrtime.bigint();
      session.install(i);
    }
  }
}

function finish(conn: number, w: FdWatch): void {
  w.stop();
  const stats = session?.stats() ?? null;
  session?.close();
  closeFd(conn);
  const out: Record<string, unknown> = {
    handler: 'lazysnap',
    mode,
    chunkSize,
    imageBytes,
    needEvents,
    errors,
    stats,
  };
  if (mode === 'install') {
    out.installNs = installNs;
    out.installGBps = installNs ? imageBytes / installNs : null;
  }
  console.log(JSON.stringify(out));
  process.exit(errors || (mode === 'install' && installNs === null) ? 1 : 0);
}

function serve(conn: number): void {
  let handshaken = false;
  const w = watchFd(conn, { readable: true }, () => {
    for (;;) {
      let m;
      try {
        m = recvWithFds(conn, 64 * 1024, 4);
      } catch {
        return finish(conn, w); // ECONNRESET and the like: the client is gone as well
      }
      if (!m) return; // nothing pending
      if (m.data.length === 0 && m.fds.length === 0) return finish(conn, w); // EOF: the client is gone
      if (handshaken) {
        for (const fd of m.fds) closeFd(fd);
        continue; // nothing is sent after the handshake; discard
      }
      handshaken = true;
      try {
        openSession(JSON.parse(m.data.toString('utf8')) as WireRegion[], m.fds);
      } catch (e) {
        fail('handshake', e);
      }
    }
  });
}

try {
  unlinkSync(socketPath);
} catch {
  // No socket left from an earlier run: nothing to remove.
}
const lfd = listenUnix(socketPath);
const lw = watchFd(lfd, { readable: true }, () => {
  const conn = acceptUnix(lfd);
  if (conn < 0) return;
  lw.stop();
  closeFd(lfd); // exactly one client
  serve(conn);
});
console.log('listening');
