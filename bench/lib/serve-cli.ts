/**
 * `lazysnap serve` exactly as a user runs it, for the benchmarks of the serve path (local-restore,
 * cold-start): the compiled CLI, `node dist/cli/bin.js serve --store … --id … --socket …`, one fresh
 * process per round, with no option the caller does not name (so default options unless a case
 * says otherwise), its pino log parsed for the session summary.
 *
 * ensureDist() first compiles the TypeScript (`npm run build`, a few seconds), so a benchmark never
 * measures a dist/ older than the sources; the native addon it cannot rebuild cheaply (node-gyp
 * rebuild, ~1 min), so it refuses to run when native/src is newer than the built addon.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

import type { StallSplit } from '../../runtime/trace-format.js';
import { repoRoot } from '../../test/helpers/fixtures.js';
import { startServe, type LogLine, type ServeProcess } from '../../test/helpers/serve-process.js';
import { timeout } from './procs.js';

const ADDON = path.join(repoRoot, 'native', 'build', 'Release', 'lazysnap.node');

export function ensureDist(): void {
  const src = path.join(repoRoot, 'native', 'src');
  const newest = Math.max(...readdirSync(src).map((f) => statSync(path.join(src, f)).mtimeMs));
  let built = 0;
  try {
    built = statSync(ADDON).mtimeMs;
  } catch {
    // missing: reported below
  }
  if (built < newest)
    throw new Error(
      `the native addon (${ADDON}) is missing or older than native/src: run npm run build:native`,
    );
  const tsc = path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: repoRoot, stdio: 'inherit' });
}

/** The session summary serve logs when a restore session ends (runtime/session-types.ts). */
export interface SummaryLine extends LogLine {
  outcome: 'ended' | 'killed' | 'shutdown';
  faults: number;
  zeroFaults: number;
  /** Faults a loader thread served straight from a local store (the direct path). */
  directFaults: number;
  fetchedChunks: number;
  bytesFetched: number;
  hitsByTier: Record<string, number>;
  failedChunks: number[];
  prefetchedChunks: number;
  recordedChunks: number;
  timeToFirstFaultServedMs: number | null;
  /** The faults that crossed into JS: how long they waited in all and where it went (runtime/stall.ts). */
  stall: { faults: number; totalMs: number } & StallSplit;
}

export interface ServeRun {
  serve: ServeProcess;
  /** Spawn to the `serving` log line (node start-up, manifest load, socket). */
  startMs: number;
}

/**
 * Starts `lazysnap serve --socket socket ...args` from dist/ and waits until it serves. `opts.root`: another
 * built checkout to run it from (a baseline); `opts.env`: extra environment.
 */
export async function startServeCli(
  socket: string,
  args: string[],
  stepMs: number,
  opts: { root?: string; env?: Record<string, string> } = {},
): Promise<ServeRun> {
  const t0 = performance.now();
  const serve = await timeout(
    startServe(socket, args, { dist: true, startTimeoutMs: stepMs, ...opts }),
    stepMs,
    'serve start',
  );
  return { serve, startMs: performance.now() - t0 };
}

/** Waits for the summary of serve's `n`th session (1-based). */
export async function sessionSummary(serve: ServeProcess, stepMs: number, n = 1): Promise<SummaryLine> {
  let seen = 0;
  const line = await serve.waitForLog(
    (l) => l.msg === 'restore session summary' && ++seen === n,
    stepMs,
    `session summary ${n}`,
  );
  return line as SummaryLine;
}

/**
 * SIGTERM, as an operator stops it: serve drains, waits for its disk-cache writes and profile
 * saves, and must exit 0 having logged no warning or error.
 */
export async function stopServe(serve: ServeProcess): Promise<void> {
  const e = await serve.stop('SIGTERM');
  const problems = serve.problems();
  if (e.code !== 0 || problems.length > 0)
    throw new Error(
      `serve exited ${e.code ?? e.signal}; problems: ${problems.map((l) => JSON.stringify(l)).join('\n')} ${serve.text()}`,
    );
}
