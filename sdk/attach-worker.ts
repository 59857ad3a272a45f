/**
 * The runtime half of attach(): a RestoreServer in a worker thread, so that the thread which
 * attached the memory can fault on it while this thread's event loop (and its native fault thread)
 * serves the faults. It talks to attach() over the worker's message port; see sdk/attach.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';

import { createRootLogger } from '../core/logger.js';
import { RestoreServer, type ServeOptions } from '../runtime/restore-server.js';

export interface AttachWorkerData {
  serve: ServeOptions & { logger?: never };
  logLevel: string;
}

export type AttachRequest = { op: 'stats' | 'populate' | 'close'; seq: number };

export type AttachMessage =
  | { type: 'ready'; totalSize: number; pageSize: number }
  | { type: 'session'; restoreId: string; pid: number }
  | { type: 'rejected'; reason: string }
  | { type: 'reply'; seq: number; value?: unknown; error?: { message: string; code?: string } }
  | { type: 'failed'; error: { message: string; code?: string } };

const port = parentPort!;
const data = workerData as AttachWorkerData;
const post = (m: AttachMessage): void => port.postMessage(m);
const errorOf = (e: unknown) => ({
  message: (e as Error).message,
  ...((e as { code?: string }).code ? { code: (e as { code: string }).code } : {}),
});

// Synchronous: when a chunk fails closed the poisoned page raises SIGBUS in this very process, which
// would take an asynchronously buffered line (the one saying why) down with it.
const log = createRootLogger({ level: data.logLevel, sync: true }).child({ component: 'sdk.attach' });

async function main(): Promise<void> {
  let server: RestoreServer;
  try {
    server = await RestoreServer.start({ ...data.serve, logger: log });
  } catch (e) {
    // Reported, then the worker ends on its own once the port closes: process.exit() here could
    // end it before the message is delivered, and attach() would see only "exited (code 1)".
    post({ type: 'failed', error: errorOf(e) });
    port.close();
    return;
  }

  server.on('session', (s) => post({ type: 'session', ...s }));
  server.on('rejected', (r) => post({ type: 'rejected', reason: r.reason }));

  port.on('message', (m: AttachRequest) => {
    const session = [...server.sessions][0];
    const reply = (p: Promise<unknown>) =>
      p.then(
        (value) => post({ type: 'reply', seq: m.seq, value }),
        (e: unknown) => post({ type: 'reply', seq: m.seq, error: errorOf(e) }),
      );
    if (m.op === 'stats')
      void reply(
        session ? Promise.resolve(session.liveStats()) : Promise.reject(new Error('no live session')),
      );
    else if (m.op === 'populate')
      void reply(session ? session.populate() : Promise.reject(new Error('no live session')));
    else if (m.op === 'close') {
      // attach() has unregistered the memory: no fault can reach this session any more, so it ends
      // here rather than through close(), which fails closed (SIGKILL) the sessions it has to cut off,
      // and the peer here is the attaching process itself.
      for (const s of [...server.sessions]) s.end('ended');
      void reply(server.close(0).then(() => server.summaries.at(-1)));
    }
  });

  post({ type: 'ready', totalSize: server.snapshot.totalSize, pageSize: server.snapshot.pageSize });
}

void main();
