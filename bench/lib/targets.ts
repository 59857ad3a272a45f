/**
 * The targets of the scenarios whose wording bench/README.md repeats outside their tables: the
 * benchmark checks them and scripts/bench-report.ts states them from here, so the two cannot drift
 * apart, and the report flags results that were measured against other targets (an old results
 * file still rendered after a target changed).
 */
export const TARGETS = {
  /** P3 (cold-start.bench.ts): replay of a different run's profile is ≥ lazy× faster than fault-only on
   * the clustered workload, ≥ eager× faster than eager download, ≤ floor× the emulation's floor. */
  'cold-start': { lazy: 5, eager: 10, floor: 1.5 },
  /** Tail (tail.bench.ts): with hedging, p99 fault wait ≤ overMedian× the median fetch and
   * ≤ overUnhedged× the p99 with --no-hedge. */
  tail: { overMedian: 2, overUnhedged: 0.5 },
} as const;
