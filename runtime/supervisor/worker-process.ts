/**
 * One worker process of a supervisor (runtime/supervisor/worker-main.ts), seen from the supervisor:
 * started with the link on fd 3 and its activity page on fd 4 (a memfd of its own, where its loader
 * threads write the chunk each decodes), ready once it has opened the snapshot (or failed to), then a
 * stream of messages until it exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';

import { moduleCommand } from '../../core/worker.js';
import { addon } from '../../native/addon.js';
import { closeFd } from '../../native/index.js';
import { ACTIVITY_SLOTS, Link, type FromWorker, type ToWorker } from './link.js';

export interface WorkerProcessEvents {
  message: [msg: FromWorker, fds: number[]];
  /** The process is gone (exit code or signal); emitted once. */
  exit: [how: { code: number | null; signal: NodeJS.Signals | null }];
}

export class WorkerProcess extends EventEmitter<WorkerProcessEvents> {
  readonly child: ChildProcess;
  readonly link: Link<FromWorker, ToWorker>;
  readonly startedAt = performance.now();
  /** Set once the worker reported ready. */
  readyAt: number | undefined;
  /** The carried counters as this worker was last told them (what a promotion adds to). */
  carried: { restarts: number; unservedMs: number };
  readonly #activity: Int32Array;
  #inFlight: number[] = [];
  #exited = false;

  private constructor(
    child: ChildProcess,
    linkFd: number,
    activityFd: number,
    carried: { restarts: number; unservedMs: number },
  ) {
    super();
    this.child = child;
    this.carried = carried;
    this.#activity = new Int32Array(addon().mapShared(activityFd, ACTIVITY_SLOTS * 4));
    closeFd(activityFd); // the mapping keeps the page; the child has its own descriptor
    this.link = new Link<FromWorker, ToWorker>(
      linkFd,
      (msg, fds) => {
        if (msg.t === 'ready') this.readyAt = performance.now();
        this.emit('message', msg, fds);
      },
      // A link that breaks is a worker that is going or gone: make sure it is gone.
      () => this.kill(),
    );
    child.once('exit', (code, signal) => {
      this.#exited = true;
      for (const v of this.#activity) if (v > 0) this.#inFlight.push(v - 1);
      this.link.close();
      this.emit('exit', { code, signal });
    });
  }

  /** Starts a worker (told `carried` in its start message). */
  static spawn(env: NodeJS.ProcessEnv, carried: { restarts: number; unservedMs: number }): WorkerProcess {
    const activityFd = addon().memfdCreate('lazysnap-activity');
    const [mine, theirs] = addon().socketPair();
    const { command, args } = moduleCommand(new URL('./worker-main.js', import.meta.url));
    let child: ChildProcess;
    try {
      // Logs go where the supervisor's go; the link and the page become fds 3 and 4 (dup2 clears
      // their close-on-exec in the child only).
      child = spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit', theirs, activityFd], env });
    } catch (e) {
      closeFd(mine);
      closeFd(theirs);
      closeFd(activityFd);
      throw e;
    }
    closeFd(theirs);
    // A spawn that fails asynchronously (ENOENT, EAGAIN) emits 'error' and then 'exit'.
    child.on('error', () => {});
    return new WorkerProcess(child, mine, activityFd, carried);
  }

  /** Once it has exited: the chunks its loader threads were decoding when it did. */
  get inFlight(): readonly number[] {
    return this.#inFlight;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get exited(): boolean {
    return this.#exited;
  }

  send(msg: ToWorker, fds: number[] = []): boolean {
    return this.link.send(msg, fds);
  }

  /** SIGKILL: a worker is only ever stopped by asking it (release, drain) or by this. */
  kill(): void {
    if (!this.#exited) this.child.kill('SIGKILL');
  }

  /** Resolves once the process has exited. */
  gone(): Promise<void> {
    return this.#exited ? Promise.resolve() : new Promise((r) => this.once('exit', () => r()));
  }
}
