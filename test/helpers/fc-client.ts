/** Drives test/fixtures/fc-client (the Firecracker-exact handshake client) as a child process. */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

import { fcClientPath } from './fixtures.js';

export interface ClientReport {
  ok: boolean;
  mode?: 'host' | 'kvm';
  pid: number;
  units: number;
  pagesVerified: number;
  mismatches: number;
  firstMismatch: number | null;
  elapsedNs: number;
  faultNs: {
    count: number;
    p50: number;
    p99: number;
    mean: number;
    max: number;
    /** The slowest samples (at most 64), slowest first. */
    slowest: number[];
  } | null;
  /**
   * Just before the handshake's sendmsg to the completion of the first read of restored memory;
   * null with --kvm, --wait or --mlock-range (the workload does not start right after the handshake).
   */
  firstTouchNs?: number | null;
  /** --touch cluster: chunks in the working set, and how many of them --cluster-drift swapped in. */
  cluster?: { chunks: number; drifted: number } | null;
  /** --split: mprotect calls made and their duration (with `during`, concurrent with the touchers). */
  split?: { mode: 'before' | 'during'; every: number; calls: number; ns: number } | null;
  mlock?: { offset: number; length: number; ns: number } | null;
  balloon: { zeroPages: number; nonZeroPages: number; outsideOk: boolean } | null;
}

export interface ClientResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  report: ClientReport | null;
  stderr: string;
}

export interface RunningClient {
  child: ChildProcess;
  /** With --wait: resolves with the client's pid once its handshake is sent. */
  ready: Promise<number>;
  /** With --wait: lets the workload start. */
  go(): void;
  /** With --linger: lets the client exit. */
  release(): void;
  /** Resolves with the report as soon as the client prints it (with --linger, before it exits). */
  reported: Promise<ClientReport>;
  result: Promise<ClientResult>;
}

/** Clients still running; killed when the test process exits, so a failed test leaves none behind. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export interface ClientOptions {
  /** CPUs to pin the client to (taskset -c). */
  taskset?: string;
  /**
   * Run as this uid (and gid) through setpriv, as a peer of another user. It keeps CAP_SYS_PTRACE
   * (ambient), which userfaultfd needs where vm.unprivileged_userfaultfd = 0 and /dev/userfaultfd
   * is root's; it gains nothing else.
   */
  asUid?: number;
}

export function startClient(args: string[], opts: ClientOptions = {}): RunningClient {
  const bin = fcClientPath();
  let cmd = bin;
  let argv = args;
  if (opts.taskset) [cmd, argv] = ['taskset', ['-c', opts.taskset, cmd, ...argv]];
  if (opts.asUid !== undefined) {
    const id = String(opts.asUid);
    [cmd, argv] = [
      'setpriv',
      [
        '--reuid',
        id,
        '--regid',
        id,
        '--clear-groups',
        '--inh-caps',
        '+sys_ptrace',
        '--ambient-caps',
        '+sys_ptrace',
        cmd,
        ...argv,
      ],
    ];
  }
  const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(child);
  child.once('exit', () => live.delete(child));
  let out = '';
  let err = '';
  let readyResolve: (pid: number) => void = () => {};
  const ready = new Promise<number>((res) => (readyResolve = res));
  let reportResolve: (r: ClientReport) => void = () => {};
  const reported = new Promise<ClientReport>((res) => (reportResolve = res));
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    out += d;
    const m = /^ready (\d+)$/m.exec(out);
    if (m) readyResolve(Number(m[1]));
    const r = /^\{.*\}$/m.exec(out);
    if (r) reportResolve(JSON.parse(r[0]) as ClientReport);
  });
  child.stderr.on('data', (d: string) => (err += d));
  child.stdin.on('error', () => {}); // the client may exit (SIGBUS) before reading stdin
  const result = (async () => {
    // 'close', not 'exit': exit can fire before stdout has been read to its end.
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
    const line = out.split('\n').find((l) => l.startsWith('{'));
    return { code, signal, report: line ? (JSON.parse(line) as ClientReport) : null, stderr: err };
  })();
  return {
    child,
    ready,
    go: () => child.stdin.write('go\n'),
    release: () => child.stdin.end(),
    reported,
    result,
  };
}

/** Runs a client to completion (no --wait/--linger). */
export async function runClient(args: string[], opts: ClientOptions = {}): Promise<ClientResult> {
  const c = startClient(args, opts);
  c.release();
  return c.result;
}
