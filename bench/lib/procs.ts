/**
 * Runs one benchmark round: a handler process (the C reference or lazysnap's) and the
 * Firecracker-exact fc-client, each under its own `taskset`, with a timeout on every step. Whatever
 * happens, both processes are SIGKILLed before the round's promise settles, and every child still
 * alive when the driver exits is killed too, so no handler is ever left behind holding a uffd.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';

import { startClient, type ClientReport, type RunningClient } from '../../test/helpers/fc-client.js';
import { buildC, repoRoot } from '../../test/helpers/fixtures.js';

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    for (const c of live) c.kill('SIGKILL');
    process.exit(130);
  });
}

export type HandlerKind = 'reference' | 'lazysnap';

export interface HandlerSpec {
  kind: HandlerKind;
  image: string;
  socket: string;
  chunkSize: number;
  /** lazysnap only. @default 'resident' */
  mode?: 'resident' | 'install';
}

export function handlerArgv(h: HandlerSpec): string[] {
  const common = ['--socket', h.socket, '--image', h.image, '--chunk-size', String(h.chunkSize)];
  if (h.kind === 'reference')
    return [buildC('bench/ref/ref-handler.c', 'ref-handler', [], ['bench/ref/ref-uffd.h']), ...common];
  const script = path.join(repoRoot, 'bench', 'lib', 'lazysnap-handler.ts');
  return [process.execPath, '--import', 'tsx', script, ...common, '--mode', h.mode ?? 'resident'];
}

export interface RoundOptions {
  handler: HandlerSpec;
  clientArgs: string[];
  /** taskset -c lists */
  handlerCpus: string;
  clientCpus: string;
  timeoutMs: number;
}

export interface RoundResult {
  client: ClientReport;
  /** The handler's final stats JSON line. */
  handler: Record<string, unknown>;
}

/** Rejects when p has not settled within ms: every benchmark step is bounded. */
export function timeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const expiry = new Promise<never>((_, rej) => {
    t = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, expiry]).finally(() => clearTimeout(t));
}

/**
 * The report of a started client that must finish cleanly (exit 0, report ok) within ms; the client is
 * SIGKILLed on the way out whatever happened (a no-op once it has exited).
 */
export async function clientReport(c: RunningClient, ms: number): Promise<ClientReport> {
  try {
    const r = await timeout(c.result, ms, 'fc-client');
    assert.ok(
      r.report?.ok && r.code === 0,
      `fc-client failed (code ${r.code}, signal ${r.signal}): ${r.stderr}`,
    );
    return r.report;
  } finally {
    c.child.kill('SIGKILL');
  }
}

export interface Handler {
  child: ChildProcess;
  /** Resolves with the first stdout line matching re. */
  line(re: RegExp): Promise<string>;
  exit: Promise<{ code: number | null; stderr: string; lines: string[] }>;
}

/**
 * Starts a handler that prints `listening` once its socket accepts, then one JSON line of counters
 * when its client is gone (the C references and lazysnap-handler.ts); under taskset when `cpus` is
 * given. It is SIGKILLed if the driver exits first.
 */
export function startHandler(argv: string[], cpus?: string): Handler {
  const [cmd, ...args] = cpus === undefined ? argv : ['taskset', '-c', cpus, ...argv];
  const child = spawn(cmd!, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const lines: string[] = [];
  const waiters: { re: RegExp; res: (l: string) => void }[] = [];
  let buf = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(l);
      for (const w of waiters.filter((x) => x.re.test(l))) w.res(l);
    }
  });
  child.stderr.on('data', (d: string) => (stderr += d));
  const exit = once(child, 'exit').then(([code]) => {
    live.delete(child);
    return { code: code as number | null, stderr, lines };
  });
  const line = (re: RegExp) =>
    new Promise<string>((res, rej) => {
      const seen = lines.find((l) => re.test(l));
      if (seen !== undefined) return res(seen);
      waiters.push({ re, res });
      void exit.then((e) =>
        rej(new Error(`handler exited (${e.code}) before printing ${re}: ${e.stderr.trim()}`)),
      );
    });
  return { child, line, exit };
}

/**
 * One handler + one client. With --mode install the client is started with --wait and released only
 * after the handler reports its install stream done, so the stream is timed without competing faults
 * and the client then verifies every byte it installed.
 */
export async function runRound(o: RoundOptions): Promise<RoundResult> {
  const install = o.handler.mode === 'install';
  const h = startHandler(handlerArgv(o.handler), o.handlerCpus);
  let client: ReturnType<typeof startClient> | undefined;
  try {
    await timeout(h.line(/^listening$/), o.timeoutMs, `${o.handler.kind} handler start`);
    client = startClient(['--socket', o.handler.socket, ...o.clientArgs, ...(install ? ['--wait'] : [])], {
      taskset: o.clientCpus,
    });
    live.add(client.child);
    if (install) {
      await timeout(client.ready, o.timeoutMs, 'client handshake');
      await timeout(h.line(/"event":"install-done"/), o.timeoutMs, 'install stream');
      client.go();
    }
    client.release();
    const r = await timeout(client.result, o.timeoutMs, 'client run');
    live.delete(client.child);
    if (r.code !== 0 || !r.report?.ok) {
      throw new Error(
        `client failed (code ${r.code}, signal ${r.signal}): ${r.stderr.trim()} ${JSON.stringify(r.report)}`,
      );
    }
    const e = await timeout(h.exit, o.timeoutMs, `${o.handler.kind} handler exit`);
    const last = e.lines.filter((l) => l.startsWith('{') && !l.includes('"event"')).pop();
    if (e.code !== 0 || last === undefined)
      throw new Error(`${o.handler.kind} handler exited ${e.code}: ${e.stderr.trim()}`);
    return { client: r.report, handler: JSON.parse(last) as Record<string, unknown> };
  } finally {
    for (const c of [h.child, client?.child]) {
      if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      if (c) live.delete(c);
    }
  }
}
