/**
 * attach()'s side of its runtime worker (sdk/attach-worker.ts): requests with replies, waiting for
 * one of the worker's announcements, and noticing when the worker is gone. The worker is referenced
 * only while a reply is awaited, so an attachment that is never detached does not keep the process
 * alive.
 */
import type { Worker } from 'node:worker_threads';

import { isErrorCode, LazysnapError } from '../core/errors.js';
import type { AttachMessage, AttachRequest } from './attach-worker.js';

export class WorkerLink {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #seq = 0;
  #listeners = new Set<(m: AttachMessage) => void>();
  #gone: Error | undefined;
  onGone: (e: Error) => void = () => {};

  constructor(worker: Worker) {
    this.#worker = worker;
    worker.on('message', (m: AttachMessage) => {
      if (m.type === 'reply') {
        const p = this.#pending.get(m.seq);
        this.#pending.delete(m.seq);
        if (m.error) p?.reject(fromWorker(m.error));
        else p?.resolve(m.value);
      }
      for (const l of this.#listeners) l(m);
    });
    // 'error' is followed by 'exit': the first tells, the second finds it told.
    const gone = (e: Error) => {
      if (this.#gone) return;
      this.#gone = e;
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
      for (const l of this.#listeners) l({ type: 'failed', error: { message: e.message } });
      this.onGone(e);
    };
    worker.on('error', gone);
    worker.on('exit', (code) =>
      gone(new LazysnapError('LAZYSNAP_SESSION_CLOSED', `the attach runtime's worker exited (code ${code})`)),
    );
  }

  request<T>(op: AttachRequest['op']): Promise<T> {
    if (this.#gone) return Promise.reject(this.#gone);
    const seq = ++this.#seq;
    // Referenced only while a reply is awaited: an attachment never detached must not keep the
    // process alive, but a pending reply must.
    this.#worker.ref();
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(seq, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ op, seq } satisfies AttachRequest);
    }).finally(() => {
      if (this.#pending.size === 0) this.#worker.unref();
    });
  }

  unref(): void {
    if (this.#pending.size === 0) this.#worker.unref();
  }

  /** The first message of one of `types` (or a failure), honouring the abort signal. */
  waitFor<K extends AttachMessage['type']>(
    types: K[],
    signal?: AbortSignal,
  ): Promise<Extract<AttachMessage, { type: K }>> {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.#listeners.delete(l);
        signal?.removeEventListener('abort', onAbort);
      };
      const l = (m: AttachMessage) => {
        if (m.type === 'failed') {
          done();
          reject(fromWorker(m.error));
        } else if ((types as string[]).includes(m.type)) {
          done();
          resolve(m as Extract<AttachMessage, { type: K }>);
        }
      };
      const onAbort = () => (done(), reject(signal!.reason as Error));
      if (this.#gone) return reject(this.#gone);
      this.#listeners.add(l);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  async terminate(): Promise<void> {
    this.onGone = () => {};
    await this.#worker.terminate();
  }
}

/**
 * An error the worker reported, rebuilt on this thread: one of lazysnap's codes is a LazysnapError
 * again; any other code (a kernel error's 'EFAULT') stays a Node-style `code` on a plain Error; an
 * error that had no code reads as the session having closed under the caller.
 */
function fromWorker(e: { message: string; code?: string }): Error {
  if (e.code === undefined) return new LazysnapError('LAZYSNAP_SESSION_CLOSED', e.message);
  if (isErrorCode(e.code)) return new LazysnapError(e.code, e.message);
  return Object.assign(new Error(e.message), { code: e.code });
}
