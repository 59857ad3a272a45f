/**
 * The snapshot manifest, format "lazysnap/1". JSON, written last (its presence commits a snapshot).
 *
 * Per-chunk data is packed, not one JSON value per chunk, so a 64 GiB snapshot's manifest (131,072
 * chunks of 512 KiB) is ~6 MB and parses in a few ms:
 *   chunks.hashes: base64 of n × 32 bytes, the BLAKE3 of each chunk (32 zero bytes for zero chunks)
 *   chunks.flags:  base64 of n bytes, 0 = all-zero chunk (not stored), k > 0 = stored with codecs[k-1]
 * Readers accept any 1.x format and reject another major version with UnsupportedFormatError.
 */
import { ManifestError, UnsupportedFormatError, showUntrusted } from '../core/errors.js';
import { CODECS, type Codec } from './chunk.js';
import { validateEncryptionInfo, type ChunkCrypto, type EncryptionInfo } from './chunk-crypto.js';
import { assertSnapshotId } from './keys.js';

export const FORMAT = 'lazysnap/1';
const FORMAT_RE = /^lazysnap\/(\d+)(?:\.(\d+))?$/;
const MAX_CHUNK = 64 * 1024 * 1024;

export interface ManifestRegion {
  /** Offset of the region in the snapshot image. Regions are laid end to end. */
  offset: number;
  size: number;
  /** Original virtual address, as "0x…" (process snapshots; Firecracker's are not known). */
  address?: string;
}

export interface Manifest {
  format: string;
  id: string;
  createdAt: string;
  source: { kind: 'memory-file' | 'diff-file' | 'process' | 'raw'; detail?: string };
  pageSize: 4096 | 2097152;
  chunkSize: number;
  totalSize: number;
  regions: ManifestRegion[];
  /** The id this snapshot was taken relative to (diff snapshots); informational once written. */
  parent: string | null;
  vmstate: { key: string; size: number; hash: string } | null;
  chunks: { hashes: string; flags: string; codecs: Codec[] };
  /**
   * Present when chunks (and the vmstate) are encrypted (store/chunk-crypto.ts): then each chunk's
   * 32 bytes in chunks.hashes are its keyed id, not its plain BLAKE3. Absent otherwise.
   */
  encryption?: EncryptionInfo;
}

/** A manifest decoded for use: per-chunk arrays instead of base64. */
export interface SnapshotIndex {
  manifest: Manifest;
  count: number;
  /** 32 bytes per chunk. */
  hashes: Buffer;
  /** 0 = zero chunk, k = stored with manifest.chunks.codecs[k-1]. */
  flags: Uint8Array;
  /** The cipher of an encrypted snapshot, when it was loaded with a key (store/reader.ts loadIndex). */
  crypto?: ChunkCrypto;
}

export function chunkCount(totalSize: number, chunkSize: number): number {
  return Math.ceil(totalSize / chunkSize);
}

export function chunkHash(ix: SnapshotIndex, i: number): string | null {
  return ix.flags[i] === 0 ? null : ix.hashes.toString('hex', i * 32, i * 32 + 32);
}

export function chunkCodec(ix: SnapshotIndex, i: number): Codec | null {
  const f = ix.flags[i]!;
  return f === 0 ? null : ix.manifest.chunks.codecs[f - 1]!;
}

export function encodeChunks(hashes: Buffer, flags: Uint8Array, codecs: Codec[]): Manifest['chunks'] {
  return {
    hashes: hashes.toString('base64'),
    flags: Buffer.from(flags.buffer, flags.byteOffset, flags.length).toString('base64'),
    codecs,
  };
}

export function serializeManifest(m: Manifest): Buffer {
  return Buffer.from(`${JSON.stringify(m, null, 1)}\n`);
}

const show = showUntrusted;

const isInt = (v: unknown, min = 0): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= min;

function need(cond: boolean, field: string, msg: string): asserts cond {
  if (!cond) throw new ManifestError(field, msg);
}

/** Parses and validates a manifest. Throws ManifestError / UnsupportedFormatError with the field. */
export function parseManifest(text: Buffer | string, expectedId?: string): SnapshotIndex {
  let m: Manifest;
  try {
    m = JSON.parse(typeof text === 'string' ? text : text.toString('utf8')) as Manifest;
  } catch (e) {
    throw new ManifestError('(document)', `not JSON (${(e as Error).message})`);
  }
  need(m !== null && typeof m === 'object' && !Array.isArray(m), '(document)', 'not an object');
  need(typeof m.format === 'string', 'format', 'missing');
  const fm = FORMAT_RE.exec(m.format);
  need(fm !== null, 'format', `${JSON.stringify(m.format)} is not a lazysnap format`);
  if (fm[1] !== '1') throw new UnsupportedFormatError(m.format, 'lazysnap/1.x');
  try {
    assertSnapshotId(m.id, 'id');
  } catch {
    throw new ManifestError('id', `${JSON.stringify(m.id)} is not a valid snapshot id`);
  }
  if (expectedId !== undefined)
    need(m.id === expectedId, 'id', `is ${JSON.stringify(m.id)}, expected ${JSON.stringify(expectedId)}`);
  need(
    m.pageSize === 4096 || m.pageSize === 2097152,
    'pageSize',
    `must be 4096 or 2097152, is ${show(m.pageSize)}`,
  );
  need(
    isInt(m.chunkSize, 4096) && (m.chunkSize & (m.chunkSize - 1)) === 0 && m.chunkSize <= MAX_CHUNK,
    'chunkSize',
    `must be a power of two from 4096 to ${MAX_CHUNK}, is ${show(m.chunkSize)}`,
  );
  need(m.chunkSize % m.pageSize === 0, 'chunkSize', `must be a multiple of pageSize ${m.pageSize}`);
  need(
    isInt(m.totalSize, 1) && m.totalSize % m.pageSize === 0,
    'totalSize',
    `must be a positive multiple of pageSize, is ${show(m.totalSize)}`,
  );
  need(
    Array.isArray(m.regions) && m.regions.length > 0 && m.regions.length <= 4096,
    'regions',
    'must be a non-empty array',
  );
  let next = 0;
  m.regions.forEach((r, i) => {
    const f = `regions[${i}]`;
    need(r !== null && typeof r === 'object', f, 'not an object');
    need(
      isInt(r.offset) && r.offset === next,
      `${f}.offset`,
      `must be ${next} (regions are laid end to end), is ${show(r.offset)}`,
    );
    need(
      isInt(r.size, 1) && r.size % m.pageSize === 0,
      `${f}.size`,
      `must be a positive multiple of pageSize, is ${show(r.size)}`,
    );
    need(
      r.address === undefined || (typeof r.address === 'string' && /^0x[0-9a-f]{1,16}$/.test(r.address)),
      `${f}.address`,
      'must be "0x" and hex digits',
    );
    next += r.size;
  });
  need(next === m.totalSize, 'regions', `sizes add up to ${next}, not totalSize ${m.totalSize}`);
  need(
    m.parent === null || m.parent === undefined || typeof m.parent === 'string',
    'parent',
    'must be a snapshot id or null',
  );
  // Informational fields, but readers print them: a non-string here must not reach a template.
  need(typeof m.createdAt === 'string', 'createdAt', 'must be a string');
  const src = m.source as Partial<Manifest['source']> | null;
  need(
    src !== null &&
      typeof src === 'object' &&
      typeof src.kind === 'string' &&
      (src.detail === undefined || typeof src.detail === 'string'),
    'source',
    'must be {kind, detail?} with string values',
  );
  if (m.vmstate) {
    need(
      typeof m.vmstate.key === 'string' &&
        isInt(m.vmstate.size) &&
        typeof m.vmstate.hash === 'string' &&
        /^[0-9a-f]{64}$/.test(m.vmstate.hash),
      'vmstate',
      'must be {key, size, hash}',
    );
  }
  if (m.encryption !== undefined) validateEncryptionInfo(m.encryption);
  const c = m.chunks;
  need(
    c !== null && typeof c === 'object' && typeof c.hashes === 'string' && typeof c.flags === 'string',
    'chunks',
    'must be {hashes, flags, codecs}',
  );
  need(
    Array.isArray(c.codecs) && c.codecs.length <= 255 && c.codecs.every((x) => CODECS.includes(x)),
    'chunks.codecs',
    `must list codecs among ${CODECS.join(', ')}`,
  );
  const count = chunkCount(m.totalSize, m.chunkSize);
  const hashes = Buffer.from(c.hashes, 'base64');
  const flagsBuf = Buffer.from(c.flags, 'base64');
  need(
    hashes.length === count * 32,
    'chunks.hashes',
    `must hold ${count} hashes (${count * 32} bytes), holds ${hashes.length} bytes`,
  );
  need(flagsBuf.length === count, 'chunks.flags', `must hold ${count} flags, holds ${flagsBuf.length}`);
  const flags = new Uint8Array(flagsBuf.buffer, flagsBuf.byteOffset, flagsBuf.length);
  for (let i = 0; i < count; i++) {
    need(
      flags[i]! <= c.codecs.length,
      'chunks.flags',
      `chunk ${i} names codec ${flags[i]! - 1}, which the manifest does not list`,
    );
  }
  return { manifest: m, count, hashes, flags };
}
