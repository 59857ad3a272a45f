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
  let fetch = 0;
  if (timing) {
    const { waitMs, readMs, decodeMs, verifyMs } = timing.loader;
    // The loader's share comes last in the fetch (the transfer, then the thread that loads it).
    let t = Math.max(timing.startedAt, timing.endedAt - waitMs - readMs - decodeMs - verifyMs);
    s.queueMs = clip(timing.queuedAt, timing.startedAt, needAt, doneAt);
    fetch = clip(timing.startedAt, t, needAt, doneAt);
    s.queueMs += clip(t, (t += waitMs), needAt, doneAt);
    fetch += clip(t, (t += readMs), needAt, doneAt);
    s.decodeMs = clip(t, (t += decodeMs), needAt, doneAt);
    s.verifyMs = clip(t, (t += verifyMs), needAt, doneAt);
    s.installMs = clip(Math.max(t, timing.endedAt), doneAt, needAt, doneAt);
  } else if (tier === 'failed') {
    // Failed closed: the whole wait was for fetches that never delivered (up to the fail timeout).
    fetch = doneAt - needAt;
  } else {
    s.installMs = doneAt - needAt;
  }
  if (fetch > 0) s.fetchMs[tier] = fetch;
  // Before the fetch was queued (the fault's way to JS), or gaps the clocks leave: waiting all the same.
  const rest = doneAt - needAt - (s.queueMs + fetch + s.decodeMs + s.verifyMs + s.installMs);
  if (rest > 0) s.queueMs += rest;
  return s;
}

/** How much of [from, to] lies inside [lo, hi]. */
function clip(from: number, to: number, lo: number, hi: number): number {
  const ms = Math.min(to, hi) - Math.max(from, lo);
  return ms > 0 ? ms : 0;
}

/** Adds `b` into `a`. */
export function addSplit(a: StallSplit, b: StallSplit): void {
  a.queueMs += b.queueMs;
  a.decodeMs += b.decodeMs;
  a.verifyMs += b.verifyMs;
  a.installMs += b.installMs;
  for (const k in b.fetchMs) a.fetchMs[k] = (a.fetchMs[k] ?? 0) + b.fetchMs[k]!;
}
