/**
 * Stall accounting: how long a fault that crossed into JS kept its thread waiting, and where that time
 * went. The fault thread stamps when it read the fault and when the install's copy woke the peer
 * (CLOCK_MONOTONIC, native/src/session_events.c); the fetch that delivered the chunk says when it was
 * queued, started and ended, and what its loader threads spent reading, decoding and verifying
 * (runtime/fetcher.ts FetchTiming). Laid end to end those are the chunk's history; the fault's wait is the
 * part of it after the fault was read, so each phase counts only from then. Whatever no phase covers (the
 * hop from the fault thread to JS before the fetch was queued) is queueing. A fault whose chunk failed
 * closed waited for fetches that never delivered: all of it is fetch time of the tier `failed`. The parts
 * add up to the wait exactly.
 */
import type { StallSplit } from './trace-format.js';
import type { FetchTiming } from './fetcher.js';

/** CLOCK_MONOTONIC ms (the fault thread's stamps, process.hrtime()) minus performance.now(): constant. */
const MONOTONIC_TO_PERF = Number(process.hrtime.bigint()) / 1e6 - performance.now();

/** A fault thread time stamp (CLOCK_MONOTONIC ms) on the performance.now() clock. */
export function fromMonotonic(ms: number): number {
  return ms - MONOTONIC_TO_PERF;
}

export function emptySplit(): StallSplit {
  return { queueMs: 0, fetchMs: {}, decodeMs: 0, verifyMs: 0, installMs: 0 };
}

/**
 * The split of one wait, from `needAt` (the fault read) to `doneAt` (installed or poisoned), both on the
 * performance.now() clock. `timing` is the fetch the chunk came from (absent: it was resident already,
 * and the wait was the hop to JS and the install); `tier` names the fetch part.
 */
export function splitWait(needAt: number, doneAt: number, tier: string, timing?: FetchTiming): StallSplit {
  const s = emptySplit();
  if (doneAt <= needAt) return s;
  const add = (from: number, to: number, into: (ms: number) => void) => {
    const ms = Math.min(to, doneAt) - Math.max(from, needAt);
    if (ms > 0) into(ms);
  };
  const fetch = (ms: number) => (s.fetchMs[tier] = (s.fetchMs[tier] ?? 0) + ms);
  let covered = 0;
  const track = (into: (ms: number) => void) => (ms: number) => ((covered += ms), into(ms));
  if (timing) {
    const { waitMs, readMs, decodeMs, verifyMs } = timing.loader;
    add(
      timing.queuedAt,
      timing.startedAt,
      track((ms) => (s.queueMs += ms)),
    );
    // The loader's share comes last in the fetch (the transfer, then the thread that loads it).
    let t = Math.max(timing.startedAt, timing.endedAt - waitMs - readMs - decodeMs - verifyMs);
    add(timing.startedAt, t, track(fetch));
    add(
      t,
      (t += waitMs),
      track((ms) => (s.queueMs += ms)),
    );
    add(t, (t += readMs), track(fetch));
    add(
      t,
      (t += decodeMs),
      track((ms) => (s.decodeMs += ms)),
    );
    add(
      t,
      (t += verifyMs),
      track((ms) => (s.verifyMs += ms)),
    );
    add(
      Math.max(t, timing.endedAt),
      doneAt,
      track((ms) => (s.installMs += ms)),
    );
  } else if (tier === 'failed') {
    // Failed closed: the whole wait was for fetches that never delivered (up to the fail timeout).
    add(needAt, doneAt, track(fetch));
  } else {
    add(
      needAt,
      doneAt,
      track((ms) => (s.installMs += ms)),
    );
  }
  // Before the fetch was queued (the fault's way to JS), or gaps the clocks leave: waiting all the same.
  const rest = doneAt - needAt - covered;
  if (rest > 0) s.queueMs += rest;
  return s;
}

/** Adds `b` into `a`. */
export function addSplit(a: StallSplit, b: StallSplit): void {
  a.queueMs += b.queueMs;
  a.decodeMs += b.decodeMs;
  a.verifyMs += b.verifyMs;
  a.installMs += b.installMs;
  for (const [k, v] of Object.entries(b.fetchMs)) a.fetchMs[k] = (a.fetchMs[k] ?? 0) + v;
}
