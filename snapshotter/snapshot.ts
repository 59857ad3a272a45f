/**
 * Source → chunks → store. Each chunk is read, checked for all-zero (not stored, marked in the
 * manifest), hashed (BLAKE3 of the uncompressed bytes), and, unless the store or this run already
 * has it, compressed and uploaded. The manifest is written last, so an interrupted snapshot never
 * leaves a manifest pointing at missing chunks, and a retry skips the chunks already uploaded.
 *
 * Optionally chunks and the vmstate are encrypted before upload (store/chunk-crypto.ts), and the
 * manifest is signed (store/signing.ts): the detached signature is written just before the
 * manifest, so a published manifest is never without its signature.
 *
 * Memory bound: at most 2 × concurrency chunk buffers (running + queued) plus their compressed copies.
 */
import PQueue from 'p-queue';

import { InvalidArgumentError, SourceError, StoreReadOnlyError } from '../core/errors.js';
import type { StoreBackend } from '../store/backend.js';
import { assertCodec, encodeChunk, hashChunk, isZero, type Codec } from '../store/chunk.js';
import { ChunkCrypto, ENCRYPTION_MODES, type EncryptionMode } from '../store/chunk-crypto.js';
import { DEFAULT_KEY_ID, envKeyProvider, isKeyId, type KeyProvider } from '../store/key-provider.js';
import { chunkKey, assertSnapshotId, manifestKey, signatureKey, vmstateKey } from '../store/keys.js';
import {
  FORMAT,
  chunkCount,
  chunkCodec,
  encodeChunks,
  serializeManifest,
  type Manifest,
  type SnapshotIndex,
} from '../store/manifest.js';
import { loadIndex, readChunk } from '../store/reader.js';
import { keyFingerprint, signManifest, signingKey, type KeyInput } from '../store/signing.js';
import type { MemorySource } from './source.js';

export interface SnapshotOptions {
  source: MemorySource;
  store: StoreBackend;
  id: string;
  /** A power of two, a multiple of the page size (of 2 MiB for hugepage snapshots). @default 512 KiB */
  chunkSize?: number;
  /** @default 'zstd' */
  codec?: Codec;
  /** zstd level. @default 1 */
  level?: number;
  /** Required for diff sources: the snapshot whose unchanged chunks this one reuses. */
  parent?: string;
  /** A Firecracker vmstate file's bytes, stored as vmstate/<id>. */
  vmstate?: Buffer;
  /** Chunks processed at once (read, hash, compress, upload). @default 8 */
  concurrency?: number;
  /**
   * Encrypt chunks and the vmstate before upload (AES-256-GCM; store/chunk-crypto.ts) with the key
   * `keyId` from `keys`. mode: 'convergent' keeps dedup across snapshots made with the same key;
   * 'random' shares nothing between snapshots. A diff must be encrypted like its parent (same key,
   * same mode). @default unencrypted; mode 'convergent', keyId 'default', keys from the environment
   * (LAZYSNAP_CHUNK_KEY or LAZYSNAP_CHUNK_KEY_FILE)
   */
  encrypt?: { mode?: EncryptionMode; keyId?: string; keys?: KeyProvider };
  /**
   * Ed25519 private key (a KeyObject or PEM): writes manifests/<id>.json.sig, a detached signature
   * of the manifest's exact bytes, just before the manifest. @default unsigned
   */
  signKey?: KeyInput;
  signal?: AbortSignal;
  onProgress?: (p: SnapshotProgress) => void;
}

export interface SnapshotProgress {
  chunksDone: number;
  chunks: number;
  bytesDone: number;
  totalSize: number;
}

export interface SnapshotSummary {
  id: string;
  totalSize: number;
  chunks: number;
  zeroChunks: number;
  /** Distinct non-zero chunks in this snapshot. */
  uniqueChunks: number;
  /** Chunks inherited from the parent without reading them (diff snapshots). */
  inheritedChunks: number;
  uploadedChunks: number;
  /** Bytes sent to the store (compressed), manifest and vmstate excluded. */
  uploadedBytes: number;
  /** Non-zero bytes of the image / bytes uploaded. */
  dedupRatio: number;
  elapsedMs: number;
  /** Image bytes processed per second. */
  mbPerSecond: number;
  /** How chunks were encrypted, or null. */
  encryption: { mode: EncryptionMode; keyId: string } | null;
  /** Fingerprint of the key that signed the manifest, or null. */
  signedBy: string | null;
}

export async function createSnapshot(options: SnapshotOptions): Promise<SnapshotSummary> {
  const { source, store, id, signal } = options;
  const chunkSize = options.chunkSize ?? 512 * 1024;
  const codec = options.codec ?? 'zstd';
  const concurrency = options.concurrency ?? 8;
  assertSnapshotId(id);
  assertCodec(codec);
  if (
    !Number.isSafeInteger(chunkSize) ||
    chunkSize < source.pageSize ||
    (chunkSize & (chunkSize - 1)) !== 0 ||
    chunkSize % source.pageSize !== 0
  ) {
    throw new InvalidArgumentError(
      'chunkSize',
      `a power of two and a multiple of the page size ${source.pageSize}`,
      chunkSize,
    );
  }
  if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 256)
    throw new InvalidArgumentError('concurrency', 'an integer from 1 to 256', concurrency);
  // Both checked before anything is read or uploaded: a bad key must not cost a whole upload.
  const signer = options.signKey !== undefined ? signingKey(options.signKey) : undefined;
  const enc = options.encrypt;
  if (enc !== undefined) {
    if (enc.mode !== undefined && !ENCRYPTION_MODES.includes(enc.mode))
      throw new InvalidArgumentError('encrypt.mode', `one of ${ENCRYPTION_MODES.join(', ')}`, enc.mode);
    if (enc.keyId !== undefined && !isKeyId(enc.keyId))
      throw new InvalidArgumentError(
        'encrypt.keyId',
        '1-128 characters of [A-Za-z0-9._:/-] starting with a letter or digit',
        enc.keyId,
      );
  }
  const keys = enc ? (enc.keys ?? envKeyProvider()) : undefined;
  signal?.throwIfAborted();
  if (!store.writable) throw new StoreReadOnlyError(store.url);
  if (await store.has(manifestKey(id), { ...(signal ? { signal } : {}) })) {
    throw new InvalidArgumentError('id', `an id not already used in ${store.url}`, id);
  }
  let parent: SnapshotIndex | undefined;
  if (options.parent !== undefined) {
    assertSnapshotId(options.parent, 'parent');
    parent = await loadIndex(store, options.parent, signal, keys ? { keys } : {});
    const pm = parent.manifest;
    if (pm.totalSize !== source.totalSize || pm.chunkSize !== chunkSize || pm.pageSize !== source.pageSize) {
      throw new InvalidArgumentError(
        'parent',
        `a snapshot of the same size, chunk size and page size (${source.totalSize}/${chunkSize}/${source.pageSize})`,
        `${options.parent} (${pm.totalSize}/${pm.chunkSize}/${pm.pageSize})`,
      );
    }
    // Inherited entries are the parent's ids, which only mean something under the parent's cipher.
    const pe = pm.encryption;
    if (!pe !== !enc)
      throw new InvalidArgumentError(
        'parent',
        `a snapshot ${enc ? 'encrypted like this one' : 'that is not encrypted (or encrypt this one like it)'}`,
        `${options.parent} (${pe ? `encrypted, ${pe.mode}, key id ${pe.keyId}` : 'not encrypted'})`,
      );
    if (pe && enc && ((enc.mode ?? 'convergent') !== pe.mode || (enc.keyId ?? DEFAULT_KEY_ID) !== pe.keyId)) {
      throw new InvalidArgumentError(
        'parent',
        `a snapshot encrypted in ${enc.mode ?? 'convergent'} mode under key id ${enc.keyId ?? DEFAULT_KEY_ID}`,
        `${options.parent} (${pe.mode}, key id ${pe.keyId})`,
      );
    }
  } else if (source.relativeToParent) {
    throw new SourceError(
      `${source.detail} is a diff snapshot: give the snapshot it was taken relative to (--parent)`,
      undefined,
      { input: true },
    );
  }
  let crypto: ChunkCrypto | undefined;
  if (enc && keys) {
    const keyId = enc.keyId ?? DEFAULT_KEY_ID;
    crypto =
      parent?.crypto ?? ChunkCrypto.create(await keys.getKey(keyId, signal), enc.mode ?? 'convergent', keyId);
  }

  const t0 = performance.now();
  const n = chunkCount(source.totalSize, chunkSize);
  const hashes = Buffer.alloc(n * 32);
  const flags = new Uint8Array(n);
  const codecs: Codec[] = [codec];
  const codecFlag = (c: Codec) => {
    let k = codecs.indexOf(c);
    if (k < 0) k = codecs.push(c) - 1;
    return k + 1;
  };
  const known = new Set<string>(); // hashes this run already uploaded or found stored
  const free: Buffer[] = [];
  const s = { zero: 0, inherited: 0, uploaded: 0, uploadedBytes: 0, done: 0, bytesDone: 0 };
  const ranges = source.dataRanges;
  let r = 0; // index of the first data range that may overlap the current chunk (chunks go in order)

  const processChunk = async (i: number, lo: number, hi: number, overlaps: [number, number][]) => {
    const len = hi - lo;
    const buf = free.pop() ?? Buffer.allocUnsafe(chunkSize);
    try {
      const bytes = buf.subarray(0, len);
      const full = overlaps.length === 1 && overlaps[0]![0] === lo && overlaps[0]![1] === hi;
      if (full || !source.relativeToParent) {
        // Holes of a full image read as zero, so one read of the whole chunk is exact.
        await source.read(lo, bytes);
      } else {
        // Partly changed chunk of a diff: the parent's bytes with the changed pages laid over them.
        (await readChunk(store, parent!, i, signal)).copy(bytes);
        for (const [a, b] of overlaps) await source.read(a, bytes.subarray(a - lo, b - lo));
      }
      signal?.throwIfAborted();
      if (isZero(bytes)) {
        s.zero++;
        return;
      }
      const hash = crypto ? crypto.id(bytes) : hashChunk(bytes);
      hashes.write(hash, i * 32, 'hex');
      flags[i] = codecFlag(codec);
      if (known.has(hash)) return;
      known.add(hash);
      const key = chunkKey(hash, codec);
      if (await store.has(key, { ...(signal ? { signal } : {}) })) return;
      const encoded = encodeChunk(codec, bytes, {
        ...(options.level !== undefined ? { level: options.level } : {}),
      });
      const body = crypto ? crypto.seal(hash, encoded) : encoded;
      await store.put(key, body, { ...(signal ? { signal } : {}) });
      s.uploaded++;
      s.uploadedBytes += body.length;
    } finally {
      free.push(buf);
      s.done++;
      s.bytesDone += len;
      options.onProgress?.({
        chunksDone: s.done,
        chunks: n,
        bytesDone: s.bytesDone,
        totalSize: source.totalSize,
      });
    }
  };

  const queue = new PQueue({ concurrency });
  // Boxed: the first failure is kept whatever was thrown.
  let failure: { error: unknown } | undefined;
  for (let i = 0; i < n && failure === undefined; i++) {
    const lo = i * chunkSize;
    const hi = Math.min(source.totalSize, lo + chunkSize);
    while (r < ranges.length && ranges[r]![1] <= lo) r++;
    const overlaps: [number, number][] = [];
    for (let k = r; k < ranges.length && ranges[k]![0] < hi; k++)
      overlaps.push([Math.max(lo, ranges[k]![0]), Math.min(hi, ranges[k]![1])]);
    if (overlaps.length === 0) {
      // Nothing written here: zero in a full image, the parent's chunk in a diff.
      if (parent && parent.flags[i] !== 0) {
        parent.hashes.copy(hashes, i * 32, i * 32, i * 32 + 32);
        flags[i] = codecFlag(chunkCodec(parent, i)!);
        s.inherited++;
      } else s.zero++;
      s.done++;
      s.bytesDone += hi - lo;
      options.onProgress?.({
        chunksDone: s.done,
        chunks: n,
        bytesDone: s.bytesDone,
        totalSize: source.totalSize,
      });
      continue;
    }
    await queue.onSizeLessThan(concurrency);
    queue
      .add(() => processChunk(i, lo, hi, overlaps))
      .catch((e: unknown) => {
        failure ??= { error: e };
        queue.clear();
      });
  }
  await queue.onIdle();
  if (failure !== undefined) throw failure.error;
  signal?.throwIfAborted();

  let vmstate: Manifest['vmstate'] = null;
  if (options.vmstate) {
    const hash = crypto ? crypto.id(options.vmstate) : hashChunk(options.vmstate);
    await store.put(vmstateKey(id), crypto ? crypto.seal(hash, options.vmstate) : options.vmstate, {
      ...(signal ? { signal } : {}),
    });
    vmstate = { key: vmstateKey(id), size: options.vmstate.length, hash };
  }
  const manifest: Manifest = {
    format: FORMAT,
    id,
    createdAt: new Date().toISOString(),
    source: { kind: source.kind, detail: source.detail },
    pageSize: source.pageSize,
    chunkSize,
    totalSize: source.totalSize,
    regions: source.regions.map((x) => ({ ...x })),
    parent: options.parent ?? null,
    vmstate,
    chunks: encodeChunks(hashes, flags, codecs),
    ...(crypto ? { encryption: { ...crypto.info } } : {}),
  };
  const manifestBytes = serializeManifest(manifest);
  // The signature first: the manifest is the commit point, and a committed snapshot is never
  // without its signature. A run that dies in between leaves a signature of nothing, which the
  // next run with this id overwrites.
  if (signer)
    await store.put(signatureKey(id), signManifest(manifestBytes, signer), { ...(signal ? { signal } : {}) });
  await store.put(manifestKey(id), manifestBytes, { ...(signal ? { signal } : {}) });

  const unique = new Set<string>();
  for (let i = 0; i < n; i++) if (flags[i]) unique.add(hashes.toString('hex', i * 32, i * 32 + 32));
  const elapsedMs = performance.now() - t0;
  const nonZeroBytes = (n - s.zero) * chunkSize;
  return {
    id,
    totalSize: source.totalSize,
    chunks: n,
    zeroChunks: s.zero,
    uniqueChunks: unique.size,
    inheritedChunks: s.inherited,
    uploadedChunks: s.uploaded,
    uploadedBytes: s.uploadedBytes,
    dedupRatio: s.uploadedBytes > 0 ? nonZeroBytes / s.uploadedBytes : 0,
    elapsedMs,
    mbPerSecond: source.totalSize / 1e6 / (elapsedMs / 1000),
    encryption: crypto ? { mode: crypto.info.mode, keyId: crypto.info.keyId } : null,
    signedBy: signer ? keyFingerprint(signer) : null,
  };
}
