/**
 * The worker process of a supervised `lazysnap serve` (runtime/supervisor/supervisor.ts): everything that
 * handles untrusted bytes (handshakes, manifests, origin bodies, decoding) and the fault threads, so that
 * a crash here loses no VM: the supervisor holds every descriptor and hands the sessions to the next
 * worker, which adopts them.
 *
 * fd 3 is the link to the supervisor; fd 4 a shared page where the loader threads write the chunk each is
 * decoding, which the supervisor reads when this process dies: a chunk that is being decoded at every
 * crash is one that crashes the decoder, and is failed closed instead of loaded again.
 *
 * A standby worker opens the snapshot and warms up like any other, then waits (no metrics port, no
 * sessions) until the supervisor promotes it: that is what makes a restart after a crash take
 * milliseconds rather than a process start.
 */
import { createPublicKey } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

import { settleHeap } from '../../core/heap.js';
import { componentLogger } from '../../core/logger.js';
import { startTracing, type Tracing } from '../../core/otel.js';
import { addon } from '../../native/addon.js';
import type { RestoreSession } from '../restore-session.js';
import { resolveServeOptions, type ResolvedServeOptions } from '../serve-options.js';
import { startServing, type Started } from '../serve-start.js';
import {
  ACTIVITY_SLOTS,
  Link,
  MAX_CHUNK_LIST,
  decodeChunkList,
  encodeChunkList,
  type FromWorker,
  type ToWorker,
} from './link.js';
import { confineWorker } from './sandbox.js';
import { warmTable } from './warm-table.js';

const LINK_FD = 3;
const ACTIVITY_FD = 4;

const log = componentLogger('runtime.worker');
let started: Started | undefined;
let options: ResolvedServeOptions | undefined;
let metricsServer: { port: number; close: () => Promise<void> } | undefined;
/** OpenTelemetry, when the environment asks for it (the supervisor checked the settings already). */
let tracing: Tracing | undefined;
const crashes = new Map<number, number>();
const ids = new Map<RestoreSession, number>();
let lastReject = '';

const link: Link<ToWorker, FromWorker> = new Link(
  LINK_FD,
  (msg, fds) => void handle(msg, fds),
  (reason) => {
    // The supervisor is gone: nobody will hand sessions over any more. Stop serving quietly: the
    // descriptors this process held close with it, the peers' own copies stay.
    log.warn({ reason }, 'the supervisor link closed: worker exiting');
    process.exit(1);
  },
);

/**
 * Under memory pressure the kernel should pick this process before the supervisor: losing a worker
 * costs a restart (the supervisor hands every session to the next), losing the supervisor costs every
 * session's service until a service manager restarts it. Raising one's own oom_score_adj needs no
 * privilege; the step keeps it below ordinary processes when the supervisor's is (systemd's -900).
 */
const OOM_SCORE_STEP = 500;
function yieldToOomKiller(): void {
  try {
    const own = Number(readFileSync('/proc/self/oom_score_adj', 'utf8'));
    writeFileSync('/proc/self/oom_score_adj', String(Math.min(1000, own + OOM_SCORE_STEP)));
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'could not raise the worker oom_score_adj');
  }
}

function fields(): Record<string, unknown> {
  return { ...started!.fields(), metricsPort: metricsServer?.port };
}

/** Counters carried over from the workers before this one, so that a scraper sees them continue. */
function carry(restarts: number, unservedMs: number, suspects: Record<string, number>): void {
  const m = started!.host.metrics;
  m.workerRestarts.inc(restarts);
  m.unservedSeconds.inc(unservedMs / 1000);
  crashes.clear();
  for (const [c, n] of Object.entries(suspects)) crashes.set(Number(c), n);
}

async function handle(msg: ToWorker, fds: number[]): Promise<void> {
  switch (msg.t) {
    case 'start': {
      const { verifyKeyPem, metricsPort, ...rest } = msg.options;
      options = resolveServeOptions({
        ...rest,
        ...(verifyKeyPem ? { verifyKey: createPublicKey(verifyKeyPem) } : {}),
        logger: log,
      });
      try {
        tracing = await startTracing(process.env, { serviceName: 'lazysnap', log });
        started = await startServing(
          // A standby binds the metrics port only when promoted (the active worker holds it).
          msg.standby ? options : { ...options, ...(metricsPort !== undefined ? { metricsPort } : {}) },
          log.child({ snapshotId: options.id }),
          undefined,
          {
            activity: { fd: ACTIVITY_FD, slots: ACTIVITY_SLOTS },
            suspects: {
              crashes,
              limit: msg.suspectLimit,
              onCleared: (chunk) => link.send({ t: 'cleared', chunk }),
            },
          },
        );
      } catch (e) {
        const { code, url } = e as { code?: string; url?: unknown };
        link.send({
          t: 'failed',
          message: (e as Error).message,
          ...(code !== undefined ? { code } : {}),
          ...(typeof url === 'string' ? { url } : {}),
        });
        process.exit(1);
      }
      if (!msg.standby) metricsServer = started.metricsServer;
      options = { ...options, ...(metricsPort !== undefined ? { metricsPort } : {}) };
      carry(msg.restarts, msg.unservedMs, msg.suspects);
      started.host.on('rejected', ({ reason }) => (lastReject = reason));
      started.host.on('sessionEnd', (summary) => {
        for (const [s, id] of ids)
          if (s.restoreId === summary.restoreId) {
            ids.delete(s);
            link.send({ t: 'ended', id, outcome: summary.outcome });
          }
      });
      // From here on this process only serves: it never needs to gain privileges again.
      addon().setNoNewPrivs();
      const confined = confineWorker();
      if ('skipped' in confined)
        log.warn({ reason: confined.skipped }, 'the worker runs without its seccomp filter');
      yieldToOomKiller();
      // Last: whatever start-up allocated is collected now, not by a collection the first restore's
      // allocations would start (core/heap.ts).
      const heapSettleMs = settleHeap();
      link.send({
        t: 'ready',
        fields: {
          ...fields(),
          heapSettleMs: heapSettleMs === undefined ? null : Math.round(heapSettleMs * 10) / 10,
        },
      });
      return;
    }
    case 'promote': {
      carry(msg.restarts, msg.unservedMs, msg.suspects);
      if (options?.metricsPort !== undefined && !metricsServer) {
        try {
          metricsServer = await started!.parts.ctx.metrics.listen(options.metricsPort, options.metricsHost);
        } catch (e) {
          // Serving matters more than being scraped: say so, and serve.
          log.error({ err: (e as Error).message, port: options.metricsPort }, 'metrics not served');
        }
      }
      link.send({ t: 'promoted', fields: fields() });
      return;
    }
    case 'conn': {
      const [conn, pidfd, stateFd, ...handshakeFds] = fds;
      const peer = { fd: conn!, pidfd: pidfd!, pid: msg.pid };
      lastReject = 'the handshake was refused';
      const s = started!.host.open(
        peer,
        { data: Buffer.from(msg.data, 'base64'), fds: handshakeFds, fdsTruncated: msg.fdsTruncated },
        stateFd,
      );
      if (s) {
        ids.set(s, msg.id);
        link.send({ t: 'session', id: msg.id, restoreId: s.restoreId });
      } else link.send({ t: 'rejected', id: msg.id, reason: lastReject });
      return;
    }
    case 'adopt': {
      const [conn, pidfd, uffd, stateFd] = fds;
      const s = started!.host.adopt({ fd: conn!, pidfd: pidfd!, pid: msg.pid }, uffd!, stateFd!);
      if (s) {
        ids.set(s, msg.id);
        link.send({ t: 'session', id: msg.id, restoreId: s.restoreId });
      } else link.send({ t: 'ended', id: msg.id, outcome: 'killed' });
      return;
    }
    case 'count':
      started?.host.metrics[msg.what].inc();
      return;
    case 'resident': {
      const chunks = started ? started.parts.ctx.memory.resident(MAX_CHUNK_LIST) : [];
      link.send({ t: 'resident', chunks: encodeChunkList(chunks) });
      return;
    }
    case 'warm': {
      const w = started
        ? await warmTable(started.parts.ctx, decodeChunkList(msg.chunks), msg.timeoutMs)
        : { asked: 0, fetched: 0, ms: 0 };
      link.send({ t: 'warmed', ...w });
      return;
    }
    case 'release': {
      started?.host.release();
      // Spans of the sessions this worker ended go out; the handed-over ones are the successor's now.
      await tracing?.forceFlush();
      link.send({ t: 'released' });
      process.exit(0); // at once: the successor is waiting, and the stores need no goodbye
      return;
    }
    case 'drain': {
      if (started) {
        await started.host.drain(msg.graceMs);
        started.host.abandon(msg.graceMs);
        await started.parts.profileSaves.idle();
        await metricsServer?.close();
        await started.parts.close();
      }
      await tracing?.shutdown();
      link.send({ t: 'drained' });
      process.exit(0);
    }
  }
}
