/**
 * An origin that looks like S3 from a VM, for P3 and P5: nginx serving a directory store
 * (test/helpers/nginx.ts) behind the delay proxy, which runs as its own Node process
 * (delay-proxy-main.ts) so that its pacing never competes with the runtime for the driver's event
 * loop. stop() ends both and waits for them; a driver that exits without calling it still kills
 * the proxy (and nginx.ts kills nginx).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';

import { repoRoot } from '../../test/helpers/fixtures.js';
import { startStaticNginx } from '../../test/helpers/nginx.js';
import type { DelayProxyStats } from './delay-proxy.js';

export interface SlowOrigin {
  /** The proxy's base URL: give it to HttpStore or RestoreServer as the store. */
  url: string;
  /** Connections, requests and bytes the proxy has seen since it started. */
  stats(): Promise<DelayProxyStats>;
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 15_000;
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});
// Interrupted: exit through 'exit', so these handlers (and nginx's, fc-client's, the drivers') run.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

export interface SlowOriginOptions {
  firstByteMs: number;
  bytesPerSecond: number;
  /** A slow tail of responses (delay-proxy.ts): `fraction` of them wait `factor` × firstByteMs. */
  tail?: { fraction: number; factor: number; seed?: number };
}

export async function startSlowOrigin(root: string, o: SlowOriginOptions): Promise<SlowOrigin> {
  const nginx = await startStaticNginx(root);
  // nginx.ts kills nginx on exit but removes its temp prefix only in stop(): do that on exit too.
  const prefix = path.dirname(nginx.accessLog);
  const rmPrefix = () => rmSync(prefix, { recursive: true, force: true });
  process.once('exit', rmPrefix);
  const port = new URL(nginx.url).port;
  const script = path.join(repoRoot, 'bench', 'lib', 'delay-proxy-main.ts');
  const args = [
    '--import',
    'tsx',
    script,
    '--target-port',
    port,
    '--first-byte-ms',
    String(o.firstByteMs),
    '--bytes-per-second',
    String(o.bytesPerSecond),
    ...(o.tail ? ['--tail-fraction', String(o.tail.fraction), '--tail-factor', String(o.tail.factor)] : []),
    ...(o.tail?.seed !== undefined ? ['--tail-seed', String(o.tail.seed)] : []),
  ];
  const child = spawn(process.execPath, args, { cwd: repoRoot, stdio: ['pipe', 'pipe', 'inherit'] });
  live.add(child);
  const exited = once(child, 'exit').then(() => live.delete(child));
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => {
    const w = waiters.shift();
    if (w) w(l);
    else lines.push(l);
  });
  child.stdin.on('error', () => {});
  const nextLine = (ms: number, what: string): Promise<string> => {
    const queued = lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`delay proxy: no ${what} within ${ms} ms`)), ms);
      const w = (l: string) => (clearTimeout(t), resolve(l));
      waiters.push(w);
      void exited.then(() => (clearTimeout(t), reject(new Error(`delay proxy exited before its ${what}`))));
    });
  };
  const stop = async (): Promise<void> => {
    child.stdin.end(); // the proxy closes and exits on EOF
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    if (child.exitCode === null && child.signalCode === null) await exited;
    clearTimeout(t);
    await nginx.stop();
    process.off('exit', rmPrefix);
  };
  try {
    const { url } = JSON.parse(await nextLine(START_TIMEOUT_MS, 'listening line')) as { url: string };
    return {
      url,
      async stats() {
        child.stdin.write('stats\n');
        return JSON.parse(await nextLine(5000, 'stats line')) as DelayProxyStats;
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
