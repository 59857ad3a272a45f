/**
 * A private nginx HTTP cache tier (docs/DESIGN.md) in front of a store directory, for the HTTP store
 * tests and benchmarks. Two nginx processes, both in the foreground as one process each
 * (`daemon off; master_process off`), with pids, logs, temp and cache directories in one fresh temp
 * prefix, so they never touch the packaged service:
 * - the cache tier, from infra/modules/cache-tier/nginx.conf.tftpl, the very file Terraform renders
 *   for the cache hosts: clients talk to it;
 * - behind it, the origin, from test/fixtures/nginx-origin.conf: the directory served statically,
 *   standing in for the bucket.
 * stop() waits for both to exit. startStaticNginx() starts the origin alone, for benchmarks that
 * emulate S3 in front of it; startCacheTier() the tier alone, in front of another origin.
 *
 * Where nginx is absent, `nginxSkipReason` says so and suites skip with it in their name.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { repoRoot } from './fixtures.js';
import { findExecutable, freePort } from './system.js';

/** One running nginx: its URL (no trailing slash), its access log, and stop(). */
export interface NginxInstance {
  url: string;
  port: number;
  accessLog: string;
  /** SIGTERM (or `signal`, e.g. SIGKILL to take the origin down mid-request), wait, remove the prefix. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** The cache tier in front of a static origin (startNginx). */
export interface NginxServer extends NginxInstance {
  /** The cache tier: http://127.0.0.1:<port>; the root serves `root`, /cache/ serves it too. */
  url: string;
  /**
   * The cache tier's access log: `$connection $connection_requests $status $method $uri
   * "$http_range" $bytes $upstream_cache_status` (HIT, MISS..., or "-" when nothing was proxied).
   */
  accessLog: string;
  /** The origin's access log (`$connection $status $method $uri "$http_range" $bytes`): what the cache did not answer. */
  originAccessLog: string;
}

/** The cache tier's configuration: shared with infra/modules/cache-tier (one source of truth). */
export const CACHE_TIER_TEMPLATE = path.join(repoRoot, 'infra', 'modules', 'cache-tier', 'nginx.conf.tftpl');
const ORIGIN_TEMPLATE = path.join(repoRoot, 'test', 'fixtures', 'nginx-origin.conf');
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

/**
 * Renders a template the way Terraform's templatefile() does, for the subset the nginx files use:
 * `${name}` (spaces allowed inside) becomes vars[name], `$${` and `%%{` are the escapes for a
 * literal `${` and `%{`. Anything else templatefile() would evaluate (expressions, `%{...}`
 * directives, strip markers) is refused, so this can never silently render differently;
 * test/unit/infra.test.ts compares it with Terraform's own output.
 */
export function renderTemplate(text: string, vars: Record<string, string>): string {
  return text.replace(/\$\$\{|%%\{|%\{|\$\{([^}]*)\}|\$\{/g, (m, inner: string | undefined) => {
    if (m === '$${') return '${';
    if (m === '%%{') return '%{';
    const name = inner?.trim() ?? '';
    if (m === '%{' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      throw new Error(
        `template construct ${JSON.stringify(m)} is not supported: only \${name} placeholders and the $\${ and %%{ escapes`,
      );
    const v = vars[name];
    if (v === undefined) throw new Error(`template placeholder \${${name}} has no value`);
    return v;
  });
}

export const nginxPath = findExecutable('nginx', ['/usr/sbin', '/usr/local/sbin', '/sbin']);
export const nginxSkipReason = nginxPath
  ? ''
  : 'nginx is not installed (not on PATH nor in /usr/sbin); apt-get install nginx-light';
if (!nginxPath) console.warn(`[lazysnap tests] skipping nginx suites: ${nginxSkipReason}`);

interface Running {
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts the cache tier in front of `origin` (host:port of any HTTP origin, e.g. the cache tier's
 * signing S3 origin), on a free 127.0.0.1 port. Its access log has the format of NginxServer's.
 */
export async function startCacheTier(origin: string): Promise<NginxInstance> {
  if (!nginxPath) throw new Error(nginxSkipReason);
  const prefix = mkdtempSync(path.join(tmpdir(), 'lazysnap-nginx-'));
  try {
    return await launchCacheTier(nginxPath, prefix, origin, () =>
      rmSync(prefix, { recursive: true, force: true }),
    );
  } catch (e) {
    rmSync(prefix, { recursive: true, force: true });
    throw e;
  }
}

/** Starts the cache tier in front of a static origin serving `root`, on free 127.0.0.1 ports. */
/**
 * Starts the cache tier in front of a static origin serving `root`, on free 127.0.0.1 ports, or
 * with the tier on `port` (an origin restarted where its clients expect it).
 */
export async function startNginx(root: string, opts: { port?: number } = {}): Promise<NginxServer> {
  if (!nginxPath) throw new Error(nginxSkipReason);
  const absRoot = checkedRoot(root);
  // One prefix for both (the origin in origin/), so removing it removes everything.
  const prefix = mkdtempSync(path.join(tmpdir(), 'lazysnap-nginx-'));
  const originPrefix = path.join(prefix, 'origin');
  mkdirSync(originPrefix);
  let origin: (Running & { port: number }) | undefined;
  const cleanup = async (signal?: NodeJS.Signals) => {
    await origin?.stop(signal);
    rmSync(prefix, { recursive: true, force: true });
  };
  try {
    origin = await launchOrigin(nginxPath, originPrefix, absRoot);
    // stop() ends the cache first, so it never sees its origin vanish under a request in flight.
    const tier = await launchCacheTier(nginxPath, prefix, `127.0.0.1:${origin.port}`, cleanup, opts.port);
    return { ...tier, originAccessLog: path.join(originPrefix, 'access.log') };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/**
 * The static origin alone, with no cache tier in front: for benchmarks that put their own S3
 * emulation (a delay proxy) in front of the bucket's stand-in. Its access log has the origin's
 * format (`$connection $status $method $uri "$http_range" $bytes`).
 */
export async function startStaticNginx(root: string): Promise<NginxInstance> {
  if (!nginxPath) throw new Error(nginxSkipReason);
  const absRoot = checkedRoot(root);
  const prefix = mkdtempSync(path.join(tmpdir(), 'lazysnap-nginx-'));
  try {
    const origin = await launchOrigin(nginxPath, prefix, absRoot);
    return {
      url: `http://127.0.0.1:${origin.port}`,
      port: origin.port,
      accessLog: path.join(prefix, 'access.log'),
      stop: async (signal?: NodeJS.Signals) => {
        await origin.stop(signal);
        rmSync(prefix, { recursive: true, force: true });
      },
    };
  } catch (e) {
    rmSync(prefix, { recursive: true, force: true });
    throw e;
  }
}

/** The absolute root; it goes into the configs unquoted, so refuse what nginx would parse as syntax or variables. */
function checkedRoot(root: string): string {
  const absRoot = path.resolve(root);
  if (!/^[A-Za-z0-9/._+-]+$/.test(absRoot))
    throw new Error(`nginx root ${JSON.stringify(absRoot)} has characters the config template cannot carry`);
  return absRoot;
}

/** The static origin (test/fixtures/nginx-origin.conf) serving `root`, its files in `prefix`. */
function launchOrigin(bin: string, prefix: string, root: string): Promise<Running & { port: number }> {
  return startWithRetries(bin, prefix, undefined, (port) =>
    renderTemplate(readFileSync(ORIGIN_TEMPLATE, 'utf8'), { prefix, root, port: String(port) }),
  );
}

/** The cache tier from the shared template, its files in `prefix`; stop() ends it, then runs `after`. */
async function launchCacheTier(
  bin: string,
  prefix: string,
  origin: string,
  after: (signal?: NodeJS.Signals) => void | Promise<void>,
  fixedPort?: number,
): Promise<NginxInstance> {
  const tier = await startWithRetries(bin, prefix, fixedPort, (port) =>
    renderTemplate(readFileSync(CACHE_TIER_TEMPLATE, 'utf8'), {
      // Ignored unless nginx starts as root, but it must name an existing account then.
      user: process.getuid?.() === 0 ? 'root' : 'nobody',
      worker_processes: '1',
      run_dir: prefix,
      log_dir: prefix,
      cache_dir: prefix,
      listen: `127.0.0.1:${port}`,
      origin,
      cache_max_size: '1g',
      keys_zone_size: '4m',
    }),
  );
  return {
    url: `http://127.0.0.1:${tier.port}`,
    port: tier.port,
    accessLog: path.join(prefix, 'access.log'),
    stop: async (signal?: NodeJS.Signals) => {
      await tier.stop(signal);
      await after(signal);
    },
  };
}

/**
 * One nginx from `render(port)`, retried on a fresh port if another process takes the port first;
 * on `fixedPort` when given (no retry: the caller needs that port).
 */
async function startWithRetries(
  bin: string,
  prefix: string,
  fixedPort: number | undefined,
  render: (port: number) => string,
): Promise<Running & { port: number }> {
  if (fixedPort !== undefined)
    return { port: fixedPort, ...(await startOnce(bin, prefix, render(fixedPort), fixedPort)) };
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    try {
      return { port, ...(await startOnce(bin, prefix, render(port), port)) };
    } catch (e) {
      lastError = e as Error;
      if (!/Address already in use/.test(lastError.message)) throw lastError;
    }
  }
  throw lastError!;
}

async function startOnce(bin: string, prefix: string, config: string, port: number): Promise<Running> {
  const conf = path.join(prefix, 'nginx.conf');
  const errorLog = path.join(prefix, 'error.log');
  const pidFile = path.join(prefix, 'nginx.pid');
  rmSync(pidFile, { force: true });
  writeFileSync(conf, config);

  const child = spawn(
    bin,
    ['-p', `${prefix}/`, '-c', conf, '-e', errorLog, '-g', 'daemon off; master_process off;'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
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
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  // The pid file is written after the listening socket is bound, so a connect that succeeds then
  // reaches this nginx, not a process that won the race for the port.
  while (!(running && existsSync(pidFile) && (await canConnect(port)))) {
    if (!running || Date.now() > deadline) {
      const log = existsSync(errorLog) ? readFileSync(errorLog, 'utf8') : '';
      await stop();
      throw new Error(
        `nginx did not start on 127.0.0.1:${port}${running ? ` within ${START_TIMEOUT_MS} ms` : ''}: ${(stderr + log).trim() || 'no output'}`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { stop };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => (s.destroy(), resolve(false)));
  });
}
