/**
 * The faulting side of the demo: a worker thread reads restored memory while the main thread serves
 * its faults (memory registered with a uffd must never be touched by the thread that serves it).
 */
import { parentPort, workerData } from 'node:worker_threads';

import { arrayBufferAt } from '../../native/index.js';
import { chunkBytes } from './image.js';

export interface DemoWorkerData {
  address: bigint;
  size: number;
  chunkSize: number;
  seed: number;
  /** Chunk indices to read, in order (the "working set"). */
  touch: number[];
}

export interface DemoWorkerResult {
  firstByteNs: number;
  totalNs: number;
  pagesRead: number;
  mismatchedChunks: number[];
}

const d = workerData as DemoWorkerData;
const mem = new Uint8Array(arrayBufferAt(d.address, d.size));
const t0 = process.hrtime.bigint();
let firstByteNs = 0;
let pagesRead = 0;
const mismatched: number[] = [];
for (const c of d.touch) {
  const off = c * d.chunkSize;
  const len = Math.min(d.chunkSize, d.size - off);
  // Touch page by page, as a program would; the first read of the chunk is the fault.
  let sum = 0;
  for (let p = 0; p < len; p += 4096) {
    sum += mem[off + p]!;
    pagesRead++;
    if (firstByteNs === 0) firstByteNs = Number(process.hrtime.bigint() - t0);
  }
  void sum;
  const want = chunkBytes(c, len, d.seed);
  const got = mem.subarray(off, off + len);
  if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(want)) mismatched.push(c);
}
const result: DemoWorkerResult = {
  firstByteNs,
  totalNs: Number(process.hrtime.bigint() - t0),
  pagesRead,
  mismatchedChunks: mismatched,
};
parentPort!.postMessage(result);
