/**
 * Drives test/fixtures/fd-store.c: systemd's notify socket and descriptor store, as a Type=notify
 * service with FileDescriptorStoreMax= sees them, for tests of `serve --fd-store` without a systemd.
 * The instances it starts write their logs to its stderr, parsed here like serve-process.ts does.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

import { buildC, repoRoot } from './fixtures.js';
import type { LogLine } from './serve-process.js';

export interface FdStore {
  ready: Promise<void>;
  /** Every notification so far (newlines as |), in order. */
  notices: string[];
  /** Log lines of the instances it started. */
  logs: LogLine[];
  /** Starts the next instance with the stored descriptors (LISTEN_FDS...); resolves with its pid. */
  start(argv: string[]): Promise<number>;
  /** The names of the stored descriptors, as of the last list() that completed (refreshed each call). */
  list(): string[];
  waitForLog(match: (l: LogLine) => boolean, timeoutMs: number): Promise<LogLine>;
  close(): void;
}

export function startFdStore(socketPath: string): FdStore {
  const child = spawn(buildC('test/fixtures/fd-store.c'), [socketPath], {
    cwd: repoRoot,
    env: { ...process.env, LAZYSNAP_LOG_LEVEL: 'info' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const notices: string[] = [];
  const logs: LogLine[] = [];
  let stored: string[] = [];
  let listing: string[] | undefined;
  let onStarted: ((pid: number) => void) | undefined;
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (line === 'ready') readyResolve();
    else if (line.startsWith('notify ')) notices.push(line.split(' ').slice(3).join(' '));
    else if (line.startsWith('started ')) onStarted?.(Number(line.slice(8)));
    else if (line.startsWith('stored ')) (listing ??= []).push(line.slice(7));
    else if (line === 'end') {
      stored = listing ?? [];
      listing = undefined;
    }
  });
  createInterface({ input: child.stderr }).on('line', (line) => {
    if (!line.startsWith('{')) return;
    try {
      logs.push(JSON.parse(line) as LogLine);
    } catch {
      // a torn line from a killed instance
    }
  });
  return {
    ready,
    notices,
    logs,
    start(argv) {
      return new Promise<number>((resolve) => {
        onStarted = resolve;
        child.stdin.write(`start ${argv.join(' ')}\n`);
      });
    },
    list() {
      child.stdin.write('list\n');
      return stored;
    },
    async waitForLog(match, timeoutMs) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const l = logs.find(match);
        if (l) return l;
        if (Date.now() > end)
          throw new Error(
            `no such log line within ${timeoutMs} ms:\n${logs.map((x) => JSON.stringify(x)).join('\n')}`,
          );
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    close() {
      child.stdin.end();
      child.kill('SIGKILL');
    },
  };
}
