import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import type { DemoReport } from '../../cli/demo/run.js';
import { workingSet } from '../../cli/demo/run.js';
import { FileStore } from '../../store/file-store.js';
import { chunkHash } from '../../store/manifest.js';
import { loadIndex } from '../../store/reader.js';
import { repoRoot } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/images.js';

import { hasUffd, uffdSuite } from '../helpers/skip.js';
import { cli as run } from '../helpers/cli.js';

const MiB = 1024 * 1024;
const NOBODY = ['--reuid', '65534', '--regid', '65534', '--clear-groups'];
/**
 * Why the demo cannot be run as uid 65534 here ('' when it can). The checkout may sit under a
 * private directory (a CI workspace), so the test shows it to that user through a bind mount in a
 * private mount namespace: root, setpriv and unshare are needed, nothing on the host changes.
 */
const unprivilegedSkip = (() => {
  if (process.getuid?.() !== 0) return 'needs root (to become uid 65534)';
  for (const tool of ['setpriv', 'unshare'])
    if (spawnSync(tool, ['--version']).status !== 0) return `needs ${tool} (util-linux)`;
  // The bind mount shows the checkout's own mode: a checkout that is itself private (cloned straight
  // into a mktemp -d directory) cannot be entered by uid 65534 however it is mounted.
  if ((statSync(repoRoot).mode & 0o005) !== 0o005)
    return `the checkout ${repoRoot} is not readable by others (mode ${(statSync(repoRoot).mode & 0o777).toString(8)})`;
  return '';
})();

describe('lazysnap CLI', () => {
  it('prints help (exit 0), and usage with no command (exit 2)', async () => {
    expect(await run(['--help'])).toMatchObject({
      code: 0,
      out: expect.stringContaining('usage: lazysnap <command>'),
    });
    expect((await run([])).code).toBe(2);
    expect(await run(['demo', '--help'])).toMatchObject({
      code: 0,
      out: expect.stringContaining('--working-set F'),
    });
    expect(await run(['snapshot', '--help'])).toMatchObject({
      code: 0,
      out: expect.stringContaining('--maps LIST'),
    });
    expect(await run(['--version'])).toMatchObject({
      code: 0,
      out: expect.stringMatching(/^\d+\.\d+\.\d+\n$/),
    });
  });

  it('rejects bad usage with one clear line and exit 2', async () => {
    for (const [argv, msg] of [
      [['nope'], /unknown command "nope"/],
      [['demo', '--size', 'lots'], /--size must be a size such as 4096, 512KiB or 1GiB, received "lots"/],
      [['demo', '--chunk-size', '3000'], /--chunk-size must be a power of two >= 4KiB, received "3000"/],
      [['demo', '--size', '100KiB'], /--size must be a non-zero multiple of 64KiB/],
      [['demo', '--working-set', '2'], /--working-set must be a fraction in \(0, 1\], received "2"/],
      [['demo', '--bogus'], /Unknown option '--bogus'/],
    ] as const) {
      const r = await run([...argv]);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(msg);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});

/** The real command line, as a user runs it: exit code and stderr. */
function spawnCli(
  argv: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'cli/bin.ts', ...argv],
      { cwd: repoRoot, timeout: 30_000, env: { ...process.env, ...env } },
      (e, _out, err) => resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, err }),
    );
  });
}

describe('lazysnap CLI errors name the flag the user typed', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => void (tmp = tempDir()));
  afterEach(() => tmp.cleanup());

  it('for values the API validates (serve --fail-closed, --socket, --profile-store, --fail-timeout; snapshot --chunk-size, --parent)', async () => {
    const serve = ['serve', '--store', tmp.dir, '--id', 'vm'];
    const sock = path.join(tmp.dir, 's.sock');
    const mem = path.join(tmp.dir, 'mem.bin');
    writeFileSync(mem, Buffer.alloc(65536));
    const snap = ['snapshot', '--mem-file', mem, '--store', path.join(tmp.dir, 'store'), '--id', 'x'];
    for (const [argv, msg, apiName] of [
      [
        [...serve, '--socket', sock, '--fail-closed', 'bogus'],
        /^lazysnap: --fail-closed must be one of auto, poison, kill, received "bogus"$/,
        'failClosed',
      ],
      [
        [...serve, '--socket', path.join(tmp.dir, 'x'.repeat(120))],
        /^lazysnap: --socket must be at most 107 bytes/,
        'socketPath',
      ],
      [
        [...serve, '--socket', sock, '--profile-store', 'http://127.0.0.1:9/p'],
        /^lazysnap: --profile-store must be a writable store/,
        'profileStore',
      ],
      [
        [...serve, '--socket', sock, '--fail-timeout', '30d'],
        /^lazysnap: --fail-timeout must be a duration from 1ms to 2147483647ms \(about 24.8 days\), received "30d"$/,
        'failTimeoutMs',
      ],
      [
        [...serve, '--socket', sock, '--prefetch', 'always'],
        /^lazysnap: --prefetch must be one of auto, off, record, replay, received "always"$/,
        'prefetch',
      ],
      [[...snap, '--chunk-size', '3000'], /^lazysnap: --chunk-size must be a power of two/, 'chunkSize'],
      [[...snap, '--parent', '../p'], /^lazysnap: --parent must be a snapshot id/, 'parent'],
      [
        [...snap, '--progress', 'bar'],
        /^lazysnap: --progress must be one of auto, tty, json, quiet, received "bar"$/,
        'progress',
      ],
    ] as const) {
      const r = await spawnCli([...argv]);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err.trimEnd()).toMatch(msg);
      // Never the API's name for it ("lazysnap: failClosed must be ...").
      expect(r.err).not.toContain(`: ${apiName} `);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });

  it('serve refuses, at start and naming what is wrong, a --trace-dir it cannot write (even under /proc, where mkdir -p spins) and OTEL_* settings it cannot act on', async () => {
    const serve = ['serve', '--store', tmp.dir, '--id', 'vm', '--socket', path.join(tmp.dir, 's.sock')];
    const dir = await spawnCli([...serve, '--trace-dir', '/proc/lazysnap-no-such/traces']);
    expect(dir.code).toBe(2);
    expect(dir.err.trimEnd()).toMatch(
      /^lazysnap: --trace-dir must be a directory this user can write, received ".*ENOENT/,
    );
    const grpc = await spawnCli(serve, {
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    });
    expect(grpc.code).toBe(2);
    expect(grpc.err).toMatch(/OTEL_EXPORTER_OTLP_PROTOCOL/);
    expect(grpc.err.trim().split('\n')).toHaveLength(1);
  });

  it('names the flag a bad store URL came with (--store, --profile-store), in every command that takes one', async () => {
    for (const [argv, flag] of [
      [['inspect', '--store', 'ftp://host/x', '--id', 'vm'], 'store'],
      [['gc', '--store=ftp://host/x'], 'store'],
      [
        [
          'serve',
          '--store',
          tmp.dir,
          '--id',
          'vm',
          '--socket',
          path.join(tmp.dir, 's.sock'),
          '--profile-store',
          'ftp://h/p',
        ],
        'profile-store',
      ],
    ] as const) {
      const r = await spawnCli([...argv]);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err.trimEnd()).toMatch(new RegExp(`^lazysnap: --${flag}: invalid store URL "ftp://`));
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });

  it('snapshot --pid refuses --regions and --page-size, naming both, instead of ignoring them', async () => {
    const base = ['snapshot', '--pid', '1', '--store', path.join(tmp.dir, 'store'), '--id', 'x'];
    const both = await spawnCli([...base, '--regions', '1MiB,1MiB', '--page-size', '2MiB']);
    expect(both.code).toBe(2);
    expect(both.err).toMatch(
      /^lazysnap: --regions and --page-size describe a memory file, not a process: drop them with --pid/,
    );
    expect(both.err.trim().split('\n')).toHaveLength(1);
    const one = await spawnCli([...base, '--page-size', '4KiB']);
    expect(one.code).toBe(2);
    expect(one.err).toMatch(
      /^lazysnap: --page-size describes a memory file, not a process: drop it with --pid/,
    );
  });
});

describe.skipIf(!hasUffd)(uffdSuite('lazysnap demo'), () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => void (tmp = tempDir()));
  afterEach(() => tmp.cleanup());

  it('snapshots a live process into a local store and restores it lazily and eagerly into fresh processes, every chunk verified', async () => {
    const store = path.join(tmp.dir, '.lazysnap');
    const r = await run([
      'demo',
      '--size',
      '16MiB',
      '--chunk-size',
      '256KiB',
      '--working-set',
      '0.25',
      '--store',
      store,
      '--compare',
      '--json',
    ]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as DemoReport;
    const [lazy, eager] = report.runs;
    expect(report).toMatchObject({ chunks: 64, touched: 16, snapshot: { chunks: 64, totalSize: 16 * MiB } });
    // The source process is gone; its memory came back from the store, chunk for chunk.
    expect(() => process.kill(report.source.pid, 0)).toThrow();
    for (const run of [lazy!, eager!]) {
      expect(run.pid).not.toBe(report.source.pid);
      expect(run).toMatchObject({ mismatchedTouched: [], mismatchedAll: [] });
      expect(run.pagesRead).toBe(16 * 64);
    }
    // Which chunks are zero, from the manifest: lazy fetched exactly the working set's data chunks.
    const ix = await loadIndex(new FileStore(store), report.snapshot.id);
    expect(report.snapshot.id).toMatch(/^demo-\d{4}-\d\d-\d\dT/);
    const zero = new Set([...Array(64).keys()].filter((c) => chunkHash(ix, c) === null));
    expect(zero.size).toBe(report.snapshot.zeroChunks);
    expect(zero.size).toBeGreaterThan(0);
    const touch = workingSet(64, 0.25, 0x5eed);
    expect(lazy!.stats.fetchedChunks).toBe(touch.filter((c) => !zero.has(c)).length);
    // Zero chunks were mapped by the fault thread, never fetched (counted just after the wake: <=).
    expect(lazy!.stats.zeroFaults).toBeLessThanOrEqual(touch.filter((c) => zero.has(c)).length);
    expect(lazy!.stats.forwardedFaults).toBe(lazy!.stats.fetchedChunks);
    expect(eager!.stats.fetchedChunks).toBe(64 - zero.size);
    expect(lazy!.stats.bytesFetched).toBeLessThan(eager!.stats.bytesFetched);
    expect(lazy!.firstByteMs).toBeGreaterThan(0);

    // A second run is a new snapshot and uploads nothing: the data set's chunks are all there.
    const again = await run([
      'demo',
      '--size',
      '16MiB',
      '--chunk-size',
      '256KiB',
      '--store',
      store,
      '--json',
    ]);
    expect(again.code).toBe(0);
    expect((JSON.parse(again.out) as DemoReport).snapshot).toMatchObject({ uploadedChunks: 0, chunks: 64 });
  });

  it.skipIf(!!unprivilegedSkip)(
    `runs without root: user-mode-only userfaultfd${unprivilegedSkip ? ` [SKIPPED: ${unprivilegedSkip}]` : ''}`,
    async () => {
      chmodSync(tmp.dir, 0o777);
      const store = path.join(tmp.dir, 'store');
      const view = mkdtempSync(path.join(tmpdir(), 'lazysnap-view-'));
      chmodSync(view, 0o755);
      const tsx = path.join(view, path.relative(repoRoot, fileURLToPath(import.meta.resolve('tsx/esm'))));
      const script = 'mount --bind "$1" "$2" && shift 2 && exec setpriv "$@"';
      const r = spawnSync(
        'unshare',
        [
          '--mount',
          '--propagation',
          'private',
          'sh',
          '-c',
          script,
          'sh',
          repoRoot,
          view,
          ...NOBODY,
          process.execPath,
          '--import',
          tsx,
          path.join(view, 'cli', 'bin.ts'),
          'demo',
          '--size',
          '4MiB',
          '--chunk-size',
          '64KiB',
          '--store',
          store,
          '--json',
        ],
        {
          cwd: tmp.dir,
          encoding: 'utf8',
          env: { ...process.env, HOME: tmp.dir },
          timeout: 60_000,
        },
      );
      rmSync(view, { recursive: true, force: true });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const report = JSON.parse(r.stdout) as DemoReport;
      expect(report.runs[0]).toMatchObject({ userModeOnly: true, mismatchedTouched: [], mismatchedAll: [] });
      expect(report.runs[0]!.stats.fetchedChunks).toBeGreaterThan(0);
    },
  );
});
