/**
 * `lazysnap demo`, end to end on the embedded default (a local directory store, no services):
 * a child process builds a data set in memory; the snapshotter copies it (held with SIGSTOP) into
 * the store; a fresh process restores it lazily with attach() and runs a workload over part of it,
 * then verifies every chunk against the source's digests. With compare, a second fresh process
 * restores eagerly (everything fetched first) for a side-by-side view.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';

import { LazysnapError, SourceError, isErrorCode } from '../../core/errors.js';
import { moduleCommand } from '../../core/worker.js';
import { snapshot, type SnapshotProgress, type SnapshotSummary } from '../../sdk/snapshot.js';
import type { RestoreFailure, RestoreJob, RestoreOutcome } from './restore-proc.js';
import type { SourceReady } from './source-proc.js';

export interface DemoOptions {
  /** Bytes of memory the source process fills. */
  size: number;
  chunkSize: number;
  /** Fraction of the chunks the workload reads. */
  workingSet: number;
  /** The local store directory. */
  store: string;
  id: string;
  compare: boolean;
  seed: number;
  signal?: AbortSignal;
  onProgress?: (stage: string, p?: SnapshotProgress) => void;
}

export interface DemoReport {
  source: { pid: number; size: number; records: number; buildMs: number };
  snapshot: SnapshotSummary & { store: string };
  chunks: number;
  touched: number;
  runs: RestoreOutcome[];
}

/** The first line a child prints, as JSON; its stderr passes through; a silent death is an error. */
async function firstLine<T>(child: ChildProcess, what: string, signal?: AbortSignal): Promise<T> {
  const lines = createInterface({ input: child.stdout! });
  const exit = once(child, 'exit').then(([code, sig]) => {
    throw new SourceError(`${what} exited (${sig ?? `code ${code}`}) before reporting`);
  });
  const abort = () => child.kill('SIGKILL');
  signal?.addEventListener('abort', abort, { once: true });
  try {
    const [line] = (await Promise.race([once(lines, 'line'), exit])) as [string];
    return JSON.parse(line) as T;
  } finally {
    signal?.removeEventListener('abort', abort);
    lines.close();
  }
}

function start(module: string, args: string[]): ChildProcess {
  const { command, args: pre } = moduleCommand(new URL(module, import.meta.url));
  return spawn(command, [...pre, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
}

export async function runDemo(o: DemoOptions): Promise<DemoReport> {
  o.signal?.throwIfAborted();
  mkdirSync(o.store, { recursive: true });
  const work = mkdtempSync(path.join(tmpdir(), 'lazysnap-demo-'));
  const children = new Set<ChildProcess>();
  try {
    o.onProgress?.('building the data set in a child process');
    const src = start('./source-proc.js', [String(o.size), String(o.chunkSize), String(o.seed)]);
    children.add(src);
    const ready = await firstLine<SourceReady>(src, 'the source process', o.signal);
    const lo = BigInt(ready.address);
    o.onProgress?.(`snapshotting process ${ready.pid}`);
    // A new snapshot id per run (snapshots are never overwritten, and a demo must not delete one):
    // the chunks of an identical data set are already there, so a second run uploads nothing.
    const summary = await snapshot({
      store: o.store,
      id: o.id,
      source: { pid: ready.pid, maps: [`0x${lo.toString(16)}-0x${(lo + BigInt(o.size)).toString(16)}`] },
      chunkSize: o.chunkSize,
      ...(o.signal ? { signal: o.signal } : {}),
      onProgress: (p) => o.onProgress?.('snapshot', p),
    });
    src.stdin!.end(); // the source may go: from here on its memory lives only in the store
    await once(src, 'exit');
    children.delete(src);

    const chunks = Math.ceil(o.size / o.chunkSize);
    const touch = workingSet(chunks, o.workingSet, o.seed);
    const runs: RestoreOutcome[] = [];
    for (const mode of o.compare ? (['lazy', 'eager'] as const) : (['lazy'] as const)) {
      o.onProgress?.(`${mode} restore into a fresh process`);
      const job: RestoreJob = {
        mode,
        stores: [path.resolve(o.store)],
        id: o.id,
        size: o.size,
        chunkSize: o.chunkSize,
        touch,
        digests: ready.digests,
      };
      const jobFile = path.join(work, `${mode}.json`);
      writeFileSync(jobFile, JSON.stringify(job));
      const child = start('./restore-proc.js', [jobFile]);
      children.add(child);
      const out = await firstLine<RestoreOutcome | RestoreFailure>(
        child,
        `the ${mode} restore process`,
        o.signal,
      );
      await once(child, 'exit');
      children.delete(child);
      if ('error' in out) {
        const { code, message } = out.error;
        throw isErrorCode(code)
          ? new LazysnapError(code, message)
          : Object.assign(new Error(message), { code });
      }
      runs.push(out);
    }
    return {
      source: { pid: ready.pid, size: o.size, records: ready.records, buildMs: ready.buildMs },
      snapshot: { ...summary, store: path.resolve(o.store) },
      chunks,
      touched: touch.length,
      runs,
    };
  } finally {
    for (const c of children) c.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  }
}

/** The working set: a deterministic, scattered sample of chunk indices. */
export function workingSet(chunks: number, fraction: number, seed: number): number[] {
  const n = Math.max(1, Math.round(chunks * fraction));
  const idx = [...Array(chunks).keys()];
  let x = seed >>> 0 || 1;
  for (let i = chunks - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const j = (x >>> 0) % (i + 1);
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx.slice(0, n);
}
