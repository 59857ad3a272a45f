/**
 * The demo's fresh process: restores the snapshot lazily into its own WebAssembly memory with
 * attach() (the runtime in a worker thread, this thread faulting), runs the workload over the
 * working set, checks every chunk it read against the source's digests, then checks all the rest.
 *
 * argv: JOB_FILE (RestoreJob as JSON). stdout: one JSON line (RestoreOutcome).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

import type {} from '../../core/webassembly.js';
import type { LiveSessionStats } from '../../runtime/restore-session.js';
import { attach } from '../../sdk/attach.js';

export interface RestoreJob {
  mode: 'lazy' | 'eager';
  stores: string[];
  id: string;
  size: number;
  chunkSize: number;
  /** Chunk indices the workload reads, in order. */
  touch: number[];
  digests: string[];
}

export interface RestoreOutcome {
  pid: number;
  mode: 'lazy' | 'eager';
  userModeOnly: boolean;
  /** From the restore call until the memory is served (runtime started, manifest loaded, registered). */
  attachMs: number;
  /** Eager only: fetching and installing every chunk before the workload. */
  populateMs: number;
  /** From the restore call to the first byte the workload read. */
  firstByteMs: number;
  /** From the restore call to the end of the workload. */
  workloadDoneMs: number;
  /** The session when the workload finished (before the full check faults everything in). */
  stats: LiveSessionStats;
  pagesRead: number;
  /** Chunks the workload read whose bytes differ from the source's. */
  mismatchedTouched: number[];
  /** Every chunk, checked after the workload. */
  mismatchedAll: number[];
}

/** What the process prints when the restore cannot run; the demo rethrows it with its code. */
export interface RestoreFailure {
  error: { code: string; message: string };
}

async function run(job: RestoreJob): Promise<RestoreOutcome> {
  const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  const memory = new WebAssembly.Memory({ initial: job.size / 65536 });
  const t0 = performance.now();
  const att = await attach(memory, { stores: job.stores, id: job.id, prefetch: 'off' });
  const attachMs = performance.now() - t0;
  if (job.mode === 'eager') await att.populate();
  const populateMs = job.mode === 'eager' ? performance.now() - t0 - attachMs : 0;
  const bytes = new Uint8Array(memory.buffer, 0, job.size);
  let firstByteMs = 0;
  let pagesRead = 0;
  let sum = 0;
  const mismatchedTouched: number[] = [];
  for (const c of job.touch) {
    const off = c * job.chunkSize;
    const end = Math.min(job.size, off + job.chunkSize);
    // Page by page, as a program walks its data; the first read of a missing chunk is the fault.
    for (let p = off; p < end; p += 4096) {
      sum += bytes[p]!;
      pagesRead++;
      if (firstByteMs === 0) firstByteMs = performance.now() - t0;
    }
    if (digest(bytes.subarray(off, end)) !== job.digests[c]) mismatchedTouched.push(c);
  }
  const workloadDoneMs = performance.now() - t0;
  const stats = await att.stats();
  const mismatchedAll: number[] = [];
  for (let c = 0; c * job.chunkSize < job.size; c++) {
    if (
      digest(bytes.subarray(c * job.chunkSize, Math.min(job.size, (c + 1) * job.chunkSize))) !==
      job.digests[c]
    )
      mismatchedAll.push(c);
  }
  await att.detach();
  void sum;
  const outcome: RestoreOutcome = {
    pid: process.pid,
    mode: job.mode,
    userModeOnly: att.userModeOnly,
    attachMs,
    populateMs,
    firstByteMs,
    workloadDoneMs,
    stats,
    pagesRead,
    mismatchedTouched,
    mismatchedAll,
  };
  return outcome;
}

const job = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as RestoreJob;
run(job).then(
  (o) => process.stdout.write(`${JSON.stringify(o)}\n`),
  (e: unknown) => {
    const failure: RestoreFailure = {
      error: { code: (e as { code?: string }).code ?? 'LAZYSNAP_ERROR', message: (e as Error).message },
    };
    process.stdout.write(`${JSON.stringify(failure)}\n`);
    process.exitCode = 1;
  },
);
