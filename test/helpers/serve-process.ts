/**
 * `lazysnap serve` as a real child process (the CLI through tsx, as an operator runs it), with its
 * pino JSON log parsed line by line, so fault suites can signal it, restart it, count its open fds
 * and RSS from /proc, and assert on exactly the log lines a fault produced. Every process still
 * running when the test process exits is SIGKILLed, so a failed test leaves no serve behind.
 *
 * serve is a supervisor and its worker process(es) (runtime/supervisor/): `pid` is the supervisor's,
 * `workerPid()` the serving worker's, and the fd and memory figures cover all of them (what the
 * operator's serve costs), unless a pid is named.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';

import { repoRoot } from './fixtures.js';

/** One pino line as serve writes it (level: 30 info, 40 warn, 50 error). */
export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export interface ServeProcess {
  child: ChildProcess;
  pid: number;
  socket: string;
  /** Every JSON log line so far, in order. */
  logs: LogLine[];
  /** Everything on stderr that is not a JSON line (the CLI's own one-line messages). */
  text(): string;
  /** Lines at warn or above: what an operator is alerted by. */
  problems(): LogLine[];
  /** Resolves with the first line (already seen or to come) that matches. */
  waitForLog(match: (l: LogLine) => boolean, timeoutMs?: number, what?: string): Promise<LogLine>;
  /** The supervisor and its live worker processes. */
  pids(): number[];
  /** The worker serving now, from the supervisor's log (undefined with --no-supervisor). */
  workerPid(): number | undefined;
  /** Open fds of the serve processes (/proc/<pid>/fd). */
  fdCount(): number;
  /** Open fds by kind, over the serve processes. */
  fdKinds(): FdKinds;
  /** Resident set size in bytes, over the serve processes (/proc/<pid>/status VmRSS). */
  rssBytes(): number;
  /**
   * The peak resident set size so far, over the live serve processes (VmHWM of each): catches a spike
   * between samples.
   */
  peakRssBytes(): number;
  /**
   * Resets every serve process's VmHWM to its current RSS (/proc/<pid>/clear_refs, 5): a peak read
   * later then covers only what ran since, not start-up (each process's own module-loading peak).
   */
  resetPeakRss(): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` (default SIGTERM) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export const WARN = 40;
/** How long stop() waits before a SIGKILL (more than the shutdown grace the suites use). */
const STOP_BOUND_MS = 20_000;

/**
 * Starts `lazysnap serve --socket socket ...args` and resolves once it logged `serving` (the
 * socket is listening). `env` is added to the environment (LAZYSNAP_LOG_LEVEL defaults to info).
 * `dist`: run the compiled CLI (`node dist/cli/bin.js`, as installed), not the sources through tsx;
 * the caller makes sure dist/ is current (benchmarks: bench/lib/serve-cli.ts).
 */
export async function startServe(
  socket: string,
  args: string[],
  opts: {
    env?: Record<string, string>;
    startTimeoutMs?: number;
    dist?: boolean;
    /** Another checkout to run serve from (a benchmark's baseline build). @default this one */
    root?: string;
  } = {},
): Promise<ServeProcess> {
  const entry = opts.dist ? ['dist/cli/bin.js'] : ['--import', 'tsx', 'cli/bin.ts'];
  const child = spawn(process.execPath, [...entry, 'serve', '--socket', socket, ...args], {
    cwd: opts.root ?? repoRoot,
    env: { ...process.env, LAZYSNAP_LOG_LEVEL: 'info', ...opts.env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  live.add(child);
  const logs: LogLine[] = [];
  let text = '';
  let buf = '';
  const waiters = new Set<{ match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let parsed: LogLine | undefined;
      if (line.startsWith('{')) {
        try {
          parsed = JSON.parse(line) as LogLine;
        } catch {
          // a torn line (the process was killed mid-write) is kept as text
        }
      }
      if (!parsed) {
        text += `${line}\n`;
        continue;
      }
      logs.push(parsed);
      for (const w of waiters) {
        if (!w.match(parsed)) continue;
        waiters.delete(w);
        w.resolve(parsed);
      }
    }
  });
  const exited = once(child, 'exit').then(([code, signal]) => {
    live.delete(child);
    return { code: code as number | null, signal: signal as NodeJS.Signals | null };
  });
  const waitForLog = (
    match: (l: LogLine) => boolean,
    timeoutMs = 20_000,
    what = 'a log line',
  ): Promise<LogLine> => {
    const seen = logs.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise<LogLine>((resolve, reject) => {
      const w = { match, resolve: (l: LogLine) => (clearTimeout(t), resolve(l)) };
      const t = setTimeout(() => {
        waiters.delete(w);
        reject(
          new Error(
            `serve logged no ${what} within ${timeoutMs} ms; log:\n${logs.map((l) => JSON.stringify(l)).join('\n')}\n${text}`,
          ),
        );
      }, timeoutMs);
      waiters.add(w);
    });
  };
  const pid = child.pid!;
  const proc: ServeProcess = {
    child,
    pid,
    socket,
    logs,
    text: () => text,
    problems: () => logs.filter((l) => l.level >= WARN),
    waitForLog,
    pids: () => [pid, ...childPids(pid)],
    workerPid: () => {
      for (let i = logs.length - 1; i >= 0; i--) {
        const l = logs[i]!;
        if (l.component === 'runtime.supervisor' && WORKER_LINES.has(l.msg)) return l.worker as number;
      }
      return undefined;
    },
    fdCount: () => proc.pids().reduce((n, p) => n + countFds(p), 0),
    fdKinds: () => sumKinds(proc.pids().map((p) => fdKinds(p))),
    rssBytes: () => proc.pids().reduce((n, p) => n + statusKb(p, 'VmRSS') * 1024, 0),
    peakRssBytes: () => proc.pids().reduce((n, p) => n + statusKb(p, 'VmHWM') * 1024, 0),
    resetPeakRss: () => {
      for (const p of proc.pids()) {
        try {
          writeFileSync(`/proc/${p}/clear_refs`, '5');
        } catch {
          // gone since listed, or not ours to reset: the peak then includes start-up
        }
      }
    },
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      // A serve that does not finish a SIGTERM in time is a failure of its own: end it regardless.
      const t = setTimeout(() => child.kill('SIGKILL'), STOP_BOUND_MS);
      return exited.finally(() => clearTimeout(t));
    },
  };
  const started = waitForLog((l) => l.msg === 'serving', opts.startTimeoutMs ?? 30_000, "'serving'");
  const early = exited.then((e) => {
    throw new Error(`serve exited (${e.code ?? e.signal}) before serving: ${text.trim()}`);
  });
  await Promise.race([started, early]).catch(async (e: unknown) => {
    child.kill('SIGKILL');
    await exited;
    throw e;
  });
  return proc;
}

/** The supervisor's lines that name the worker serving from then on. */
const WORKER_LINES = new Set([
  'serving',
  'worker restarted',
  'standby promoted',
  'took over',
  'serving again after a failed handover',
]);

/** A process's children (/proc/<pid>/task/<pid>/children); none once it is gone. */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

function countFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0; // exited while we looked
  }
}

function statusKb(pid: number, field: string): number {
  try {
    return Number(
      new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0,
    );
  } catch {
    return 0;
  }
}

function sumKinds(all: FdKinds[]): FdKinds {
  const n: FdKinds = { uffd: 0, pidfd: 0, memfd: 0, unix: 0, tcp: 0, file: 0, other: 0 };
  for (const k of all) for (const key of Object.keys(n) as (keyof FdKinds)[]) n[key] += k[key];
  return n;
}

/** Polls `f` until it returns true or `timeoutMs` passes (counters and fds settle asynchronously). */
export async function until(f: () => boolean, timeoutMs = 10_000, stepMs = 20): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (f()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** Rejects if `p` has not settled within `ms`: a hang detector, not a speed assertion. */
export function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const expiry = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what}: still running after ${ms} ms (hung?)`)), ms);
  });
  return Promise.race([p, expiry]).finally(() => clearTimeout(t));
}

export type FdKinds = Record<'uffd' | 'pidfd' | 'memfd' | 'unix' | 'tcp' | 'file' | 'other', number>;

/**
 * The fds a process holds, by kind: userfaultfds and pidfds (one each per live session), memfds (a
 * session's state, a worker's activity page), Unix sockets (the listener, one per connection, a
 * supervisor's links), TCP sockets (origin connections), files, other. All zero once it is gone.
 */
export function fdKinds(pid: number): FdKinds {
  const n: FdKinds = { uffd: 0, pidfd: 0, memfd: 0, unix: 0, tcp: 0, file: 0, other: 0 };
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return n;
  }
  const unix = new Set(
    readFileSync(`/proc/${pid}/net/unix`, 'utf8')
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/)[6])
      .filter(Boolean),
  );
  for (const fd of fds) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed while we looked
    }
    const sock = /^socket:\[(\d+)\]$/.exec(target);
    if (target === 'anon_inode:[userfaultfd]') n.uffd++;
    else if (target === 'anon_inode:[pidfd]') n.pidfd++;
    else if (target.startsWith('/memfd:')) n.memfd++;
    else if (sock) n[unix.has(sock[1]) ? 'unix' : 'tcp']++;
    else if (target.startsWith('/')) n.file++;
    else n.other++;
  }
  return n;
}
