/**
 * What a fuzz target is and how one runs: the quick run inside `npm test` (test/unit/fuzz.test.ts)
 * and the long one of `npm run fuzz` (scripts/fuzz.ts) call the same `run`, only with other case
 * counts, so a failure found by either replays in both with the printed seed and path.
 */
import fc from 'fast-check';

import { LazysnapError } from '../../core/errors.js';

export interface RunOptions {
  numRuns: number;
  seed?: number;
  /** fast-check's counterexample path, to replay one failure. */
  path?: string;
}

export interface Outcome {
  target: string;
  cases: number;
  failed: boolean;
  seed: number;
  /** fast-check's report (counterexample, seed, path) or the failed after-check. */
  report: string;
  /** The slowest single case, ms (informational: a case that nearly hangs shows here). */
  slowestMs: number;
  skipped?: string;
  /** How the cases split (accepted/refused, exit codes...), to show the fuzz reached both sides. */
  notes?: string;
}

/** Counts outcomes by label, for Outcome.notes. */
export class Tally {
  readonly #n = new Map<string, number>();
  add(label: string): void {
    this.#n.set(label, (this.#n.get(label) ?? 0) + 1);
  }
  toString(): string {
    return [...this.#n]
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  }
}

export interface FuzzTarget {
  name: string;
  /** The surface, as the RELIABILITY.md table names it. */
  surface: string;
  /** Share of `npm run fuzz`'s total case budget (the weights add up to 100: thousands of the default 100,000). */
  weight: number;
  /** Cases in the quick run of `npm test`. */
  quickRuns: number;
  run(o: RunOptions): Promise<Outcome>;
}

/** Times every case of a property so the slowest can be reported. */
export class CaseClock {
  slowestMs = 0;
  time<T>(f: () => T): T {
    const t0 = performance.now();
    try {
      return f();
    } finally {
      this.slowestMs = Math.max(this.slowestMs, performance.now() - t0);
    }
  }
  async timeAsync<T>(f: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      this.slowestMs = Math.max(this.slowestMs, performance.now() - t0);
    }
  }
}

export function params(o: RunOptions): fc.Parameters<unknown> {
  return {
    numRuns: o.numRuns,
    ...(o.seed !== undefined ? { seed: o.seed } : {}),
    ...(o.path !== undefined ? { path: o.path } : {}),
  };
}

export function outcome(target: string, details: fc.RunDetails<unknown>, clock: CaseClock): Outcome {
  return {
    target,
    cases: details.numRuns + details.numShrinks,
    failed: details.failed,
    seed: details.seed,
    report: details.failed
      ? `${fc.defaultReportMessage(details) ?? 'failed'}\nError: ${(details.errorInstance as Error | undefined)?.message ?? String(details.errorInstance)}`
      : '',
    slowestMs: clock.slowestMs,
  };
}

/** Throws unless `e` is a LazysnapError of one of `codes`: a TypeError or RangeError is a bug. */
export function expectTyped(e: unknown, codes: string[], what: string): void {
  if (e instanceof LazysnapError && codes.includes(e.code)) return;
  const err = e as Error;
  throw new Error(
    `${what} threw ${err?.name ?? typeof e}: ${err?.message ?? String(e)} (expected a LazysnapError ${codes.join('/')})`,
    { cause: e },
  );
}

/** Makes a Buffer print as readable text in fast-check's counterexamples. */
export function shown(b: Buffer): Buffer {
  Object.defineProperty(b, fc.toStringMethod, {
    value: () => `Buffer(${JSON.stringify(b.toString('latin1').slice(0, 2000))})`,
  });
  return b;
}
