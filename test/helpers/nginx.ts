/**
 * A private nginx (the HTTP cache tier of DESIGN.md) serving a store directory, for the HTTP store
 * tests and benchmarks. It runs in the foreground as one process (`daemon off; master_process
 * off`) from test/fixtures/nginx-static.conf, with its pid, logs and temp directories in a fresh
 * temp prefix, so it never touches the packaged service. stop() waits for it to exit.
 *
 * Where nginx is absent, `nginxSkipReason` says so and suites skip with it in their name.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { repoRoot } from './fixtures.js';

export interface NginxServer {
  /** http://127.0.0.1:<port> (no trailing slash); the root serves `root`, /cache/ serves it too. */
  url: string;
  port: number;
  /** The access log: `$connection $connection_requests $status $method $uri "$http_range" $bytes`. */
  accessLog: string;
  /** SIGTERM (or `signal`, e.g. SIGKILL to take the origin down mid-request), wait, remove the prefix. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const TEMPLATE = path.join(repoRoot, 'test', 'fixtures', 'nginx-static.conf');
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

function findNginx(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const dir of dirs) {
    const p = path.join(dir, 'nginx');
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export const nginxPath = findNginx();
export const nginxSkipReason = nginxPath ? '' : 'nginx is not installed (not on PATH nor in /usr/sbin); apt-get install nginx-light';
if (!nginxPath) console.warn(`[lazysnap tests] skipping nginx suites: ${nginxSkipReason}`);

/**
 * Starts nginx serving `root` on a free 127.0.0.1 port (retrying if another process takes the port
 * first), or on `port` (an origin restarted where its clients expect it).
 */
export async function startNginx(root: string, opts: { port?: number } = {}): Promise<NginxServer> {
  if (!nginxPath) throw new Error(nginxSkipReason);
  const absRoot = path.resolve(root);
  // The paths go into the config unquoted: refuse what nginx would parse as syntax or variables.
  if (!/^[A-Za-z0-9/._+-]+$/.test(absRoot)) throw new Error(`nginx root ${JSON.stringify(absRoot)} has characters the config template cannot carry`);
  let lastError: Error | undefined;
  if (opts.port !== undefined) return startOnce(nginxPath, absRoot, opts.port);
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await startOnce(nginxPath, absRoot, await freePort());
    } catch (e) {
      lastError = e as Error;
      if (!/Address already in use/.test(lastError.message)) throw lastError;
    }
  }
  throw lastError!;
}

async function startOnce(bin: string, root: string, port: number): Promise<NginxServer> {
  const prefix = mkdtempSync(path.join(tmpdir(), 'lazysnap-nginx-'));
  const conf = path.join(prefix, 'nginx.conf');
  const errorLog = path.join(prefix, 'error.log');
  writeFileSync(conf, readFileSync(TEMPLATE, 'utf8').replaceAll('{{PREFIX}}', prefix).replaceAll('{{ROOT}}', root).replaceAll('{{PORT}}', String(port)));

  const child = spawn(bin, ['-p', `${prefix}/`, '-c', conf, '-e', errorLog], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let running = true;
  void exited.then(() => (running = false));
  // If the test process exits without stop() (a crash, a timeout), do not leave nginx behind.
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);

  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    process.off('exit', onExit);
    if (running) {
      child.kill(signal); // SIGTERM: fast shutdown; single-process nginx handles it in its cycle
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    rmSync(prefix, { recursive: true, force: true });
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  // The pid file is written after the listening socket is bound, so a connect that succeeds then
  // reaches this nginx, not a process that won the race for the port.
  const pidFile = path.join(prefix, 'nginx.pid');
  while (!(running && existsSync(pidFile) && (await canConnect(port)))) {
    if (!running || Date.now() > deadline) {
      const log = existsSync(errorLog) ? readFileSync(errorLog, 'utf8') : '';
      await stop();
      throw new Error(`nginx did not start on 127.0.0.1:${port}${running ? ` within ${START_TIMEOUT_MS} ms` : ''}: ${(stderr + log).trim() || 'no output'}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { url: `http://127.0.0.1:${port}`, port, accessLog: path.join(prefix, 'access.log'), stop };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => (s.destroy(), resolve(false)));
  });
}
