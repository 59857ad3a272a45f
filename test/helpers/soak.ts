/**
 * Load through ONE `lazysnap serve` process: `concurrency` Firecracker-exact clients restoring back
 * to back for `durationMs`, each verifying every page. Shared by the short version in `npm test`
 * (test/unit/load.test.ts) and the soak (bench/soak.ts, `npm run soak`).
 *
 * Memory: serve's RSS is sampled from /proc throughout. Its expected ceiling is
 *   baseline (idle, manifest loaded) + memory budget (resident chunks, shared by all sessions)
 *   + fetch buffers (fetch concurrency x chunk size, compressed and decoded) + N x per-session overhead,
 * where the per-session overhead is measured first: RSS with N sessions connected but idle, minus
 * the baseline, over N. fds are counted before and after (by kind: origin TCP connections idle in
 * the keep-alive pool are reported apart, the rest must come back to the baseline exactly).
 */
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { startClient, type ClientResult, type RunningClient } from './fc-client.js';
import { snapshotTo } from './serve.js';
import {
  bounded,
  fdKinds,
  startServe,
  until,
  type FdKinds,
  type LogLine,
  type ServeProcess,
} from './serve-process.js';

export interface SoakOptions {
  /** A private directory for the store, sockets and cache. */
  dir: string;
  /** The image to snapshot (at chunkSize) and restore; its size decides the work per restore. */
  image: string;
  chunkSize: number;
  durationMs: number;
  concurrency: number;
  /** serve --memory-budget, in bytes. */
  memoryBudget: number;
  /** serve --cache-budget (a --cache-dir under `dir`), in bytes; 0: no disk cache. */
  cacheBudget: number;
  /** serve --fetch-concurrency. @default 16 */
  fetchConcurrency?: number;
  /** An origin URL in front of the store (e.g. nginx); the directory store itself when absent. */
  origin?: (storeDir: string) => Promise<{ url: string; stop(): Promise<void> }>;
  sampleMs?: number;
  /** Called with each sample (for a live progress line). */
  onSample?: (s: SoakSample) => void;
  /** Called once serve is up, with its pid (for diagnostics from outside: reports, perf). */
  onServe?: (pid: number) => void;
}

export interface SoakSample {
  ms: number;
  rssBytes: number;
  fds: number;
  restoresDone: number;
  clientsRunning: number;
}

export interface SoakResult {
  restores: number;
  /** Restores whose client did not exit 0 with an ok report. */
  failedRestores: { code: number | null; signal: string | null; stderr: string }[];
  pagesVerified: number;
  mismatchedPages: number;
  sessionSummaries: number;
  /** Warn/error lines serve logged. */
  problems: LogLine[];
  rss: {
    baselineBytes: number;
    idleSessionsBytes: number;
    perSessionBytes: number;
    peakBytes: number;
    finalBytes: number;
    boundBytes: number;
  };
  /** serve's V8 heap (committed and used), idle before the load and right after it: part of what RSS holds beyond the budget. */
  jsHeap: { baseline: HeapFigures | null; end: HeapFigures | null };
  fds: { before: FdKinds; after: FdKinds; settledMs: number | null };
  serveExit: { code: number | null; signal: NodeJS.Signals | null };
  samples: SoakSample[];
  elapsedMs: number;
}

export interface HeapFigures {
  totalBytes: number;
  usedBytes: number;
}

const rssNow = (s: ServeProcess) => s.rssBytes();

/**
 * Asks serve for a Node diagnostic report (SIGUSR2, enabled by NODE_OPTIONS at its start) and
 * reads its V8 heap figures. null when no report appears (a Node without reports).
 */
async function heapOf(serve: ServeProcess, dir: string): Promise<HeapFigures | null> {
  for (const f of readdirSync(dir)) rmSync(path.join(dir, f));
  // The worker holds the sessions and their heap (the supervisor has neither).
  process.kill(serve.workerPid() ?? serve.pid, 'SIGUSR2');
  // The report is written in pieces: poll until the file parses whole.
  let r: { javascriptHeap: { totalMemory: number; usedMemory: number } } | undefined;
  const parsed = () => {
    const file = readdirSync(dir).find((f) => f.endsWith('.json'));
    try {
      r = file ? JSON.parse(readFileSync(path.join(dir, file), 'utf8')) : undefined;
    } catch {
      r = undefined;
    }
    return r !== undefined;
  };
  if (!(await until(parsed, 5000))) return null;
  return { totalBytes: r!.javascriptHeap.totalMemory, usedBytes: r!.javascriptHeap.usedMemory };
}
const nonTcp = (k: FdKinds) => k.uffd + k.pidfd + k.memfd + k.unix + k.file + k.other;

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const storeDir = path.join(o.dir, 'store');
  await snapshotTo(storeDir, o.image, 'soak', o.chunkSize);
  const origin = o.origin ? await o.origin(storeDir) : undefined;
  const fetchConcurrency = o.fetchConcurrency ?? 16;
  const args = [
    '--store',
    origin?.url ?? storeDir,
    '--id',
    'soak',
    '--memory-budget',
    String(o.memoryBudget),
    '--fetch-concurrency',
    String(fetchConcurrency),
    '--prefetch',
    'off',
  ];
  if (o.cacheBudget > 0) {
    mkdirSync(path.join(o.dir, 'cache'), { recursive: true });
    args.push('--cache-dir', path.join(o.dir, 'cache'), '--cache-budget', String(o.cacheBudget));
  }
  const reports = path.join(o.dir, 'reports');
  mkdirSync(reports, { recursive: true });
  const nodeOptions = `--report-on-signal --report-signal=SIGUSR2 --report-compact --report-directory=${reports}`;
  const serve = await startServe(path.join(o.dir, 'run', 'soak.sock'), args, {
    env: { NODE_OPTIONS: nodeOptions },
  }).catch(async (e: unknown) => {
    await origin?.stop();
    throw e;
  });
  const clients = new Set<RunningClient>();
  let sampler: NodeJS.Timeout | undefined;
  o.onServe?.(serve.pid);
  try {
    await sleep(500); // let startup garbage settle before the baseline
    const baseline = rssNow(serve);
    const before = serve.fdKinds();
    const base = ['--socket', serve.socket, '--image', o.image, '--threads', '1', '--order', 'random'];

    // Per-session overhead: N clients connected (handshake done), nothing faulted yet.
    const idle = Array.from({ length: o.concurrency }, (_, k) =>
      startClient([...base, '--seed', String(k), '--wait']),
    );
    for (const c of idle) clients.add(c);
    await bounded(Promise.all(idle.map((c) => c.ready)), 60_000, 'idle handshakes');
    // A session exists once serve has read the handshake: its uffd is then open there.
    await until(() => fdKinds(serve.workerPid() ?? serve.pid).uffd === o.concurrency, 10_000);
    await sleep(300);
    const idleSessions = rssNow(serve);
    const perSession = Math.max(0, (idleSessions - baseline) / o.concurrency);
    const heapBaseline = await heapOf(serve, reports); // after the RSS figures: writing a report allocates

    const results: ClientResult[] = [];
    const samples: SoakSample[] = [];
    const t0 = performance.now();
    const deadline = t0 + o.durationMs;
    let peak = idleSessions;
    sampler = setInterval(() => {
      try {
        const s = {
          ms: Math.round(performance.now() - t0),
          rssBytes: rssNow(serve),
          fds: serve.fdCount(),
          restoresDone: results.length,
          clientsRunning: clients.size,
        };
        peak = Math.max(peak, s.rssBytes);
        samples.push(s);
        o.onSample?.(s);
      } catch {
        // serve exited: the checks below report it
      }
    }, o.sampleMs ?? 250);
    const track = (c: RunningClient) =>
      c.result.then((r) => {
        clients.delete(c);
        results.push(r);
        return r;
      });
    // The idle clients go first, then each slot restores again and again until the deadline.
    let seed = o.concurrency;
    const slots = idle.map(async (c) => {
      c.go();
      c.release();
      await track(c);
      while (performance.now() < deadline) {
        const next = startClient([...base, '--seed', String(seed++)]);
        clients.add(next);
        next.release();
        await track(next);
      }
    });
    await bounded(Promise.all(slots), o.durationMs + 120_000, 'soak clients');
    const elapsedMs = performance.now() - t0;
    // Sessions end when serve reads each client's EOF; their fds close then (asynchronously).
    const tSettle = performance.now();
    const settled = await until(() => nonTcp(serve.fdKinds()) === nonTcp(before), 15_000, 50);
    const summaries = () => serve.logs.filter((l) => l.msg === 'restore session summary').length;
    await until(() => summaries() >= results.length, 10_000, 50);
    clearInterval(sampler);
    const after = serve.fdKinds();
    const finalBytes = rssNow(serve);
    peak = Math.max(peak, finalBytes);
    const heapEnd = await heapOf(serve, reports);
    const serveExit = await serve.stop();
    const ok = (r: ClientResult) => r.code === 0 && r.report?.ok === true;
    return {
      restores: results.length,
      failedRestores: results
        .filter((r) => !ok(r))
        .map((r) => ({ code: r.code, signal: r.signal, stderr: r.stderr.slice(0, 300) })),
      pagesVerified: results.reduce((n, r) => n + (r.report?.pagesVerified ?? 0), 0),
      mismatchedPages: results.reduce((n, r) => n + (r.report?.mismatches ?? 0), 0),
      sessionSummaries: summaries(),
      problems: serve.problems(),
      rss: {
        baselineBytes: baseline,
        idleSessionsBytes: idleSessions,
        perSessionBytes: perSession,
        peakBytes: peak,
        finalBytes,
        boundBytes:
          baseline + o.memoryBudget + 2 * fetchConcurrency * o.chunkSize + o.concurrency * perSession,
      },
      jsHeap: { baseline: heapBaseline, end: heapEnd },
      fds: { before, after, settledMs: settled ? Math.round(performance.now() - tSettle) : null },
      serveExit,
      samples,
      elapsedMs,
    };
  } finally {
    clearInterval(sampler);
    for (const c of clients) c.child.kill('SIGKILL');
    await serve.stop('SIGKILL');
    await origin?.stop();
  }
}
