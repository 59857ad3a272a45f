/**
 * The lines serve logs for faults it rode out (runtime/fault-log.ts): one per recovered fetch
 * (not for plain misses of an ordered store list), one per corrupt cache entry, and a streak of
 * failing cache writes logged once per interval with the count in between.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';

import { cacheProblemLogger, logRecoveredFetch } from '../../runtime/fault-log.js';
import type { FetchEvent } from '../../runtime/fetcher.js';

function capture(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write: (chunk: Buffer, _e, cb) => (
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>),
      cb()
    ),
  });
  return { log: pino({ level: 'info' }, sink), lines };
}
const flush = () => new Promise((r) => setImmediate(r));
const event = (e: Partial<FetchEvent>): FetchEvent => ({
  hash: 'ab'.repeat(32),
  chunk: 0,
  tier: 'origin0',
  bytes: 1,
  ms: 1,
  priority: 'demand',
  errors: [],
  misses: 0,
  timing: {
    queuedAt: 0,
    startedAt: 0,
    endedAt: 1,
    attempts: 1,
    hedge: 'none',
    hedges: 0,
    loader: { waitMs: 0, readMs: 0, decodeMs: 0, verifyMs: 0 },
  },
  ...e,
});

describe('fault log', () => {
  it('logs a fetch that recovered from failed attempts once, and neither clean fetches, plain misses nor failures', async () => {
    const { log, lines } = capture();
    logRecoveredFetch(log, event({}));
    logRecoveredFetch(log, event({ tier: 'origin1', errors: ['a: not found'], misses: 1 }));
    logRecoveredFetch(log, event({ tier: 'failed', errors: ['a: HTTP 503', 'a: HTTP 503'] }));
    logRecoveredFetch(log, event({ tier: 'origin0', errors: ['a: HTTP 503', 'a: HTTP 503'] }));
    await flush();
    expect(lines).toMatchObject([
      {
        level: 40,
        msg: 'chunk fetched from origin0 after 2 failed attempts',
        errors: ['a: HTTP 503', 'a: HTTP 503'],
      },
    ]);
  });

  it('logs every corrupt cache entry, and a streak of failing writes once per interval with the count between', async () => {
    const { log, lines } = capture();
    const onProblem = cacheProblemLogger(log, 60_000);
    const enospc = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    for (let i = 0; i < 5; i++) onProblem({ kind: 'write-failed', hash: 'ab'.repeat(32), error: enospc });
    onProblem({ kind: 'corrupt', hash: 'cd'.repeat(32), path: '/c/cd/x' });
    onProblem({ kind: 'corrupt', hash: 'ef'.repeat(32), path: '/c/ef/y' });
    await flush();
    expect(lines.map((l) => l.msg)).toEqual([
      expect.stringMatching(/^disk cache writes are failing \(ENOSPC\)/),
      'disk cache entry failed verification: deleted, the chunk is fetched from the origins',
      'disk cache entry failed verification: deleted, the chunk is fetched from the origins',
    ]);
    const next = cacheProblemLogger(log, 0); // an interval of 0: every failure is a new line
    next({ kind: 'write-failed', hash: 'ab'.repeat(32), error: enospc });
    next({ kind: 'write-failed', hash: 'ab'.repeat(32), error: enospc });
    await flush();
    expect(lines.slice(3).map((l) => l.failedSinceLastLine)).toEqual([0, 0]);
  });
});
