/**
 * What `serve` tells an operator about faults it rode out: one warn line per fetch that needed
 * more than one try (naming every failed attempt), one per disk cache entry that failed
 * verification, and one when disk cache writes start failing. A fault that a restore could not
 * ride out is the session's to log (fail closed). These are the lines docs/RELIABILITY.md counts.
 */
import type { Logger } from '../core/logger.js';
import type { DiskCacheProblem } from './disk-cache.js';
import type { FetchEvent } from './fetcher.js';

/** How often a streak of failing cache writes (a full or read-only disk) is logged again. */
export const WRITE_FAILURE_LOG_INTERVAL_MS = 60_000;

/**
 * A fetch that reached its chunk after failed attempts (a 5xx, a timeout, a truncated body, bytes
 * that failed verification, a refused connection). Origins that merely lacked the chunk are the
 * ordinary fall-through of an ordered store list and are not logged. Failed fetches are not
 * logged here: the session that waited for the chunk logs how it failed closed.
 */
export function logRecoveredFetch(log: Logger, e: FetchEvent): void {
  if (e.tier === 'failed' || e.errors.length <= e.misses) return;
  const n = e.errors.length;
  log.warn(
    { hash: e.hash, tier: e.tier, priority: e.priority, ms: Math.round(e.ms), errors: e.errors },
    `chunk fetched from ${e.tier} after ${n} failed attempt${n === 1 ? '' : 's'}`,
  );
}

/**
 * Disk cache problems. A corrupt entry is logged each time (it was deleted; a foreign write or a
 * failing disk). Write failures come in streaks (every put fails while the disk is full), so the
 * first is logged and then at most one line per interval, with the count in between.
 */
export function cacheProblemLogger(
  log: Logger,
  intervalMs = WRITE_FAILURE_LOG_INTERVAL_MS,
): (p: DiskCacheProblem) => void {
  let lastLogged = -Infinity;
  let unlogged = 0;
  return (p) => {
    if (p.kind === 'corrupt') {
      log.warn(
        { hash: p.hash, path: p.path },
        'disk cache entry failed verification: deleted, the chunk is fetched from the origins',
      );
      return;
    }
    const now = performance.now();
    if (now - lastLogged < intervalMs) {
      unlogged++;
      return;
    }
    const err = p.error as NodeJS.ErrnoException;
    log.warn(
      { err: { code: err.code, message: err.message }, failedSinceLastLine: unlogged },
      `disk cache writes are failing (${err.code ?? err.message}): restores go on from the origins; next line in ${Math.round(intervalMs / 1000)} s at most if this persists`,
    );
    lastLogged = now;
    unlogged = 0;
  };
}
