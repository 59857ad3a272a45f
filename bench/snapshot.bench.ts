/**
 * P4, snapshotter throughput (docs/DESIGN.md, "Performance targets"): chunk + hash + zero-detect of a
 * 1 GiB zero-rich image at ≥ 1.5 GB/s; also MB/s of whole snapshots to the directory store and to
 * s3rver (informational).
 *
 *   node --import tsx bench/snapshot.bench.ts      (or `npm run bench`)
 *
 * The side-by-side reference is a plain sequential read of the same file in chunk-size pieces: the
 * input bound of the pipeline on this machine. Rounds alternate reference and lazysnap cases. The
 * image is half zero chunks (written as zero bytes, not holes, so they are read and checked like
 * data) and half random; the page cache holds it after the warm-up round.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import path from 'node:path';

import { createSnapshot } from '../snapshotter/snapshot.js';
import { openMemoryFile } from '../snapshotter/source.js';
import { FileStore } from '../store/file-store.js';
import { S3Store } from '../store/s3-store.js';
import { tempDir } from '../test/helpers/images.js';
import { S3RVER_CREDENTIALS, startS3rver } from '../test/helpers/s3rver.js';
import { NullStore } from './lib/null-store.js';
import { environment, median, range, roundCount, writeResult, type ResultRow } from './lib/results.js';
import { writeZeroRichImage } from './lib/image.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const MiB = 1024 * 1024;
const SIZE = 1024 * MiB;
const CS = 512 * 1024;
const ROUNDS = roundCount(5);
const S3_SIZE = 256 * MiB; // s3rver writes ~0.2 GB/s: a smaller image keeps the run short

function readPass(file: string): number {
  const fd = openSync(file, 'r');
  const buf = Buffer.allocUnsafe(CS);
  const t = performance.now();
  for (let off = 0; readSync(fd, buf, 0, CS, off) > 0; off += CS);
  const s = (performance.now() - t) / 1000;
  closeSync(fd);
  return SIZE / 1e9 / s;
}

async function snap(
  file: string,
  store: import('../store/backend.js').StoreBackend,
  id: string,
  codec: 'none' | 'zstd',
): Promise<number> {
  const source = await openMemoryFile(file);
  try {
    const s = await createSnapshot({ source, store, id, chunkSize: CS, codec });
    return s.mbPerSecond / 1000;
  } finally {
    await source.close();
  }
}

const tmp = tempDir('lazysnap-bench-');
const s3 = await startS3rver('bench');
try {
  const image = path.join(tmp.dir, 'p4.img');
  const small = path.join(tmp.dir, 'p4-small.img');
  writeZeroRichImage(image, SIZE, CS, (i) => i % 2 === 1);
  writeZeroRichImage(small, S3_SIZE, CS, (i) => i % 2 === 1);
  const cases: Record<string, number[]> = { reference: [], hashOnly: [], dirNone: [], dirZstd: [], s3: [] };
  for (let r = -1; r < ROUNDS; r++) {
    const ref = readPass(image);
    const hashOnly = await snap(image, new NullStore(), `h${r + 1}`, 'none');
    const dir = path.join(tmp.dir, `store-${r + 1}`);
    const dirNone = await snap(image, new FileStore(`${dir}-none`), 'p4', 'none');
    const dirZstd = await snap(image, new FileStore(`${dir}-zstd`), 'p4', 'zstd');
    const s3store = new S3Store({
      bucket: 'bench',
      prefix: `r${r + 1}`,
      endpoint: s3.endpoint,
      credentials: S3RVER_CREDENTIALS,
      region: 'us-east-1',
    });
    const s3rate = await snap(small, s3store, 'p4', 'zstd');
    await s3store.close();
    if (r < 0) continue; // warm-up: page cache, JIT
    cases.reference!.push(ref);
    cases.hashOnly!.push(hashOnly);
    cases.dirNone!.push(dirNone);
    cases.dirZstd!.push(dirZstd);
    cases.s3!.push(s3rate);
    console.error(
      `P4 round ${r + 1}/${ROUNDS}: read ${ref.toFixed(2)}, chunk+hash+zero ${hashOnly.toFixed(2)}, dir/none ${dirNone.toFixed(2)}, dir/zstd ${dirZstd.toFixed(2)}, s3rver ${s3rate.toFixed(3)} GB/s`,
    );
  }
  const ref = median(cases.reference!);
  const row = (
    c: string,
    key: string,
    target: string | null,
    ok: ((v: number) => boolean) | null,
  ): ResultRow => {
    const v = median(cases[key]!);
    return {
      case: c,
      unit: 'GB/s',
      reference: ref,
      lazysnap: v,
      referenceRange: range(cases.reference!),
      lazysnapRange: range(cases[key]!),
      ratio: v / ref,
      target,
      met: ok ? ok(v) : null,
    };
  };
  writeResult({
    scenario: 'snapshot',
    title: 'P4: snapshotter throughput',
    howMeasured:
      `A 1 GiB image of 512 KiB chunks, every other chunk zero bytes (not holes) and the rest random, in the page cache. ` +
      `Reference: one sequential read of the file in 512 KiB pieces (the input bound). "chunk + hash + zero-detect" snapshots into a store that keeps nothing with codec none, ` +
      `which leaves reading, zero detection, BLAKE3 and dedup on the clock (target ≥ 1.5 GB/s). The other rows write real stores; s3rver (the S3 protocol, ~0.2 GB/s itself) ` +
      `gets a 256 MiB image of the same shape. GB/s is image bytes / wall time of createSnapshot, manifest included. ${ROUNDS} rounds after a warm-up, alternating cases.`,
    env: environment(),
    config: { size: SIZE, chunkSize: CS, rounds: ROUNDS, s3Size: S3_SIZE },
    rows: [
      row('chunk + hash + zero-detect (null store, codec none)', 'hashOnly', '≥ 1.5 GB/s', (v) => v >= 1.5),
      row('snapshot to the directory store, codec none', 'dirNone', null, null),
      row('snapshot to the directory store, zstd level 1', 'dirZstd', null, null),
      row('snapshot to s3rver, zstd level 1 (256 MiB image)', 's3', null, null),
    ],
    rounds: cases.reference!.map((_, i) =>
      Object.fromEntries(Object.entries(cases).map(([k, v]) => [k, v[i]])),
    ),
    medians: Object.fromEntries(Object.entries(cases).map(([k, v]) => [k, median(v)])),
  });
} finally {
  await s3.stop();
  tmp.cleanup();
}
