/**
 * Lanes reconstructed from intervals: the kernel does not say which peer thread took a fault (Firecracker
 * does not ask for UFFD_FEATURE_THREAD_ID, so the fault message carries no tid), and the trace does not
 * say which connection a fetch went over. What is known is that a thread waits on one fault at a time and
 * an HTTP/1.1 connection carries one request at a time (no pipelining), so the fewest lanes that explain
 * the intervals is what interval partitioning gives: take the intervals by start, each into the first lane
 * that is free by then. Greedy in start order is optimal: a lane is only opened when every open lane is
 * busy at that instant, so the lane count equals the most intervals overlapping at one instant.
 */

export interface Interval {
  start: number;
  end: number;
}

export interface Partition {
  /** How many lanes the intervals need. */
  lanes: number;
  /** The lane of each interval, in the order given. */
  laneOf: number[];
}

/**
 * Assigns each interval a lane (0-based) so that no two in a lane overlap. Intervals are half-open: a
 * thread whose wait ended at t may fault again at t. An interval whose end is before its start (clock
 * noise) counts as empty. The lowest free lane is taken so that the picture fills from the top.
 */
export function partitionIntervals(intervals: readonly Interval[]): Partition {
  const order = intervals
    .map((iv, i) => ({ i, start: iv.start, end: Math.max(iv.start, iv.end) }))
    .sort((a, b) => a.start - b.start || a.end - b.end || a.i - b.i);
  const laneOf = new Array<number>(intervals.length);
  // Where each lane becomes free. A linear scan for the first free lane: lanes are few (threads of one
  // VM, connections of one origin), and even 5000 intervals in 128 lanes is well under a millisecond.
  const freeAt: number[] = [];
  for (const iv of order) {
    let lane = freeAt.findIndex((t) => t <= iv.start);
    if (lane < 0) lane = freeAt.push(0) - 1;
    freeAt[lane] = iv.end;
    laneOf[iv.i] = lane;
  }
  return { lanes: freeAt.length, laneOf };
}
