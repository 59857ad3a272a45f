/**
 * The shape of bench/results/<scenario>.json (written by each bench/*.bench.ts, read by
 * scripts/bench-report.ts), the environment block and the small statistics both need.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import path from 'node:path';

import { repoRoot } from '../../test/helpers/fixtures.js';

export interface Environment {
  date: string;
  kernel: string;
  cpuModel: string;
  nproc: number;
  node: string;
  commit: string;
  dirty: boolean | null;
}

/** One row of a scenario's table in bench/README.md. */
export interface ResultRow {
  case: string;
  unit: string;
  /** Medians over rounds; the ranges are [min, max] over the same rounds. */
  reference: number | null;
  lazysnap: number | null;
  referenceRange?: [number, number];
  lazysnapRange?: [number, number];
  /** lazysnap / reference */
  ratio: number | null;
  /** e.g. "≤ 1.25×", or null for an informational row */
  target: string | null;
  met: boolean | null;
}

export interface ScenarioResult {
  scenario: string;
  title: string;
  howMeasured: string;
  env: Environment;
  config: Record<string, unknown>;
  rows: ResultRow[];
  /** Raw per-round numbers, in the order they were run. */
  rounds: Record<string, unknown>[];
  medians: Record<string, number>;
  /** Scenario-specific details that fit none of the above (the chaos soak's fail-closed reasons). */
  extra?: Record<string, unknown>;
}

function sh(cmd: string, args: string[]): string | null {
  try {
    // GIT_OPTIONAL_LOCKS=0: `git status` must not write the index while reporting.
    return execFileSync(cmd, args, {
      cwd: repoRoot,
      encoding: 'utf8',
      env: { ...process.env, GIT_OPTIONAL_LOCKS: '0' },
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return null;
  }
}

export function environment(): Environment {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  // The results this run writes are not a change to the code being measured.
  const status = sh('git', ['status', '--porcelain', '--', '.', ':!bench/results', ':!bench/README.md']);
  return {
    date: new Date().toISOString(),
    kernel: sh('uname', ['-r']) ?? release(),
    cpuModel: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown',
    nproc: Number(sh('nproc', [])) || cpus().length,
    node: process.version,
    commit: sh('git', ['rev-parse', '--short', 'HEAD']) ?? 'unknown',
    dirty: status === null ? null : status.length > 0,
  };
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of nothing');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function range(xs: readonly number[]): [number, number] {
  return [Math.min(...xs), Math.max(...xs)];
}

export const resultsDir = path.join(repoRoot, 'bench', 'results');

export function writeResult(r: ScenarioResult): string {
  mkdirSync(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${r.scenario}.json`);
  writeFileSync(file, `${JSON.stringify(r, null, 2)}\n`);
  return file;
}

/**
 * Rounds per handler and case. LAZYSNAP_BENCH_ROUNDS overrides it for smoke runs; the count is
 * recorded in the results and printed in bench/README.md, so a short run cannot pass for a real one.
 */
export function roundCount(dflt: number): number {
  const env = Number(process.env.LAZYSNAP_BENCH_ROUNDS);
  return Number.isInteger(env) && env >= 1 ? env : dflt;
}

/**
 * Rows from rounds tagged with a `mode` (and `warmup` for the round left out): each cell is the median
 * of one [mode, key] over the other rounds, with its range. `row` gives lazysnap / reference as the
 * ratio (none when `withRatio` is false) and, with `atMost`, the target "≤ atMost×".
 */
export function modeTable<Mode extends string>(rounds: readonly Record<string, unknown>[]) {
  const xs = (mode: Mode, k: string) =>
    rounds.filter((r) => r.mode === mode && !r.warmup).map((r) => r[k] as number);
  const med = (mode: Mode, k: string) => median(xs(mode, k));
  const row = (
    label: string,
    unit: string,
    ref: [Mode, string],
    lazy: [Mode, string],
    atMost: number | null,
    withRatio = true,
  ): ResultRow => {
    const [r, l] = [med(...ref), med(...lazy)];
    const q = withRatio ? l / r : null;
    return {
      case: label,
      unit,
      reference: r,
      lazysnap: l,
      referenceRange: range(xs(...ref)),
      lazysnapRange: range(xs(...lazy)),
      ratio: q,
      target: atMost === null ? null : `≤ ${atMost}×`,
      met: atMost === null ? null : q !== null && q <= atMost,
    };
  };
  return { xs, med, row };
}
