/**
 * The UFFD handshake payload, byte for byte as Firecracker sends it (PROTOCOL.md): a JSON array, one
 * object per guest memory region, in ONE sendmsg whose SCM_RIGHTS carries exactly one fd, the uffd.
 * Three shapes exist: v1.1–1.6 (no page size: 4096), v1.7+ `page_size_kib`, v1.12+ `page_size`
 * (both hold bytes, despite the name). Everything is validated against the snapshot before a single
 * page is served: a malformed handshake closes that connection and nothing else.
 */
import { readFileSync, readlinkSync } from 'node:fs';

import { HandshakeError, showUntrusted } from '../core/errors.js';
import { constants, type PageSize, type Region } from '../native/index.js';

export interface Handshake {
  regions: Region[];
  pageSize: PageSize;
  shape: 'v1' | 'v7' | 'v12';
}

export interface SnapshotShape {
  totalSize: number;
  pageSize: PageSize;
}

const MAX_REGIONS = 1024;
const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const show = showUntrusted;

/**
 * Parses a complete payload. `fdCount` is how many fds came with it. Throws HandshakeError with the
 * reason; the caller closes every fd it received.
 */
export function parseHandshake(data: Buffer, fdCount: number, snapshot: SnapshotShape): Handshake {
  if (fdCount !== 1)
    throw new HandshakeError(
      fdCount === 0
        ? 'no file descriptor came with the message (expected the uffd)'
        : `${fdCount} file descriptors came with the message (expected exactly one, the uffd)`,
    );
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    throw new HandshakeError(`payload of ${data.length} bytes is not JSON`);
  }
  if (!Array.isArray(raw)) throw new HandshakeError('payload is not a JSON array of regions');
  if (raw.length === 0 || raw.length > MAX_REGIONS)
    throw new HandshakeError(`${raw.length} regions (expected 1 to ${MAX_REGIONS})`);
  let shape: Handshake['shape'] | undefined;
  let pageSize: number | undefined;
  const regions = raw.map((r: unknown, i): Region => {
    if (r === null || typeof r !== 'object' || Array.isArray(r))
      throw new HandshakeError(`region ${i} is not an object`);
    const o = r as Record<string, unknown>;
    const { base_host_virt_addr: base, size, offset } = o;
    if (!isUint(base) || !isUint(size) || !isUint(offset)) {
      throw new HandshakeError(
        `region ${i} needs non-negative integer base_host_virt_addr, size and offset (safe integers)`,
      );
    }
    const ps = o.page_size ?? o.page_size_kib;
    if (o.page_size !== undefined && o.page_size_kib !== undefined && o.page_size !== o.page_size_kib) {
      throw new HandshakeError(
        `region ${i}: page_size ${show(o.page_size)} and page_size_kib ${show(o.page_size_kib)} disagree`,
      );
    }
    const rshape = o.page_size !== undefined ? 'v12' : o.page_size_kib !== undefined ? 'v7' : 'v1';
    const rps = ps === undefined ? 4096 : ps;
    if (rps !== 4096 && rps !== 2097152)
      throw new HandshakeError(`region ${i}: page size ${show(rps)} (expected 4096 or 2097152 bytes)`);
    if (shape !== undefined && (shape !== rshape || pageSize !== rps))
      throw new HandshakeError(`region ${i} uses another payload shape or page size than region 0`);
    shape = rshape;
    pageSize = rps;
    if (size === 0 || size % rps || offset % rps || base % rps)
      throw new HandshakeError(
        `region ${i}: base, size and offset must be multiples of the page size ${rps}, size non-zero`,
      );
    return { base: BigInt(base), size, offset };
  });
  if (pageSize !== snapshot.pageSize)
    throw new HandshakeError(`page size ${pageSize} does not match the snapshot's ${snapshot.pageSize}`);
  for (const [i, r] of regions.entries()) {
    if (r.offset + r.size > snapshot.totalSize) {
      throw new HandshakeError(
        `region ${i} [${r.offset}, ${r.offset + r.size}) lies beyond the snapshot's ${snapshot.totalSize} bytes`,
      );
    }
  }
  const overlap = (key: (r: Region) => [bigint, bigint], what: string) => {
    const sorted = regions.map(key).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    for (let i = 1; i < sorted.length; i++)
      if (sorted[i]![0] < sorted[i - 1]![1]) throw new HandshakeError(`regions overlap in ${what}`);
  };
  overlap((r) => [r.base, r.base + BigInt(r.size)], 'host address space');
  overlap((r) => [BigInt(r.offset), BigInt(r.offset + r.size)], 'snapshot offsets');
  return { regions, pageSize, shape: shape! };
}

/** fs/userfaultfd.c: set in ctx->features once UFFDIO_API has been done (shown in fdinfo). */
const UFFD_FEATURE_INITIALIZED = 1n << 31n;

/**
 * Throws unless `fd` (received from the peer) is a userfaultfd this server can serve correctly. The
 * fault thread trusts what it reads from the fd: from a pipe or a file a peer could feed forged events,
 * and a forged FORK event names an fd that the thread closes, any of the server's own (its listening
 * socket, another VM's uffd). /dev/null or a pipe at EOF would also keep the thread spinning on
 * "readable".
 *
 * The features the peer negotiated are in the fd's fdinfo ("API:\t<api>:<features>:<ioctls>"). Two are
 * refused: a uffd on which UFFDIO_API was never done (nothing can be served on it), and one without
 * UFFD_FEATURE_EVENT_REMOVE. Without REMOVE events the kernel zaps pages the peer gives back (a balloon
 * inflating, MADV_DONTNEED) and tells nobody: the next fault there would get the snapshot's bytes where
 * the peer must read zeros. Firecracker always requests it, as do lazysnap_client.h and attach().
 */
export function assertUserfaultfd(fd: number): void {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    throw new HandshakeError(`cannot tell what the received file descriptor is (${(e as Error).message})`);
  }
  if (target !== 'anon_inode:[userfaultfd]') {
    // Name the kind only: a path the peer chose does not belong in the log.
    const kind = /^(anon_inode:\[[\w-]+\]|pipe|socket)/.exec(target)?.[1] ?? 'a file';
    throw new HandshakeError(`the file descriptor that came with the message is ${kind}, not a userfaultfd`);
  }
  const features = uffdFeatures(fd);
  if (features === undefined) return; // a kernel that does not show them: nothing to check against
  if ((features & UFFD_FEATURE_INITIALIZED) === 0n)
    throw new HandshakeError(
      'the userfaultfd was never initialized with UFFDIO_API: nothing could be served on it',
    );
  if ((features & constants().UFFD_FEATURE_EVENT_REMOVE) === 0n)
    throw new HandshakeError(
      'the userfaultfd was created without UFFD_FEATURE_EVENT_REMOVE: pages the peer removes (balloon, ' +
        'MADV_DONTNEED) would later be served snapshot bytes instead of zeros; request it in UFFDIO_API ' +
        '(Firecracker and lazysnap_client.h do)',
    );
}

/** The features negotiated on a uffd, from /proc/self/fdinfo; undefined when not shown. */
function uffdFeatures(fd: number): bigint | undefined {
  let info: string;
  try {
    info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^API:\s*[0-9a-f]+:([0-9a-f]+):/m.exec(info);
  return m ? BigInt(`0x${m[1]}`) : undefined;
}
