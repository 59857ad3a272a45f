/**
 * The bugs `npm run fuzz` found, each pinned by its minimal counterexample so a regression fails
 * here with a name rather than only under a lucky seed.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { main } from '../../cli/main.js';
import { HandshakeError, InvalidArgumentError, ManifestError } from '../../core/errors.js';
import type { RestoreServer } from '../../runtime/restore-server.js';
import { parseHandshake } from '../../runtime/handshake.js';
import { resolveServeOptions } from '../../runtime/serve-options.js';
import { FORMAT, encodeChunks, parseManifest } from '../../store/manifest.js';
import { runClient } from '../helpers/fc-client.js';
import { rawHandshakePath } from '../helpers/fixtures.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { serve, snapshotTo } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const snap = { totalSize: 1 << 20, pageSize: 4096 as const };
const payload = (r: Record<string, unknown>) =>
  Buffer.from(JSON.stringify([{ base_host_virt_addr: 0, size: 4096, offset: 0, ...r }]));

describe('handshake payloads whose values break String()', () => {
  it.each([
    ['page_size_kib', { page_size_kib: [{ toString: '' }] }],
    ['page_size', { page_size: { toString: 1 } }],
    ['page_size against page_size_kib', { page_size: { toString: 1 }, page_size_kib: 4096 }],
  ])('%s: a HandshakeError, not a TypeError', (_, fields) => {
    expect(() => parseHandshake(payload(fields), 1, snap)).toThrow(HandshakeError);
  });
});

describe('manifests whose values break templates and RegExp.test', () => {
  const base = () => ({
    format: FORMAT,
    id: 'vm',
    createdAt: '1970-01-01T00:00:00.000Z',
    source: { kind: 'raw' },
    pageSize: 4096,
    chunkSize: 4096,
    totalSize: 4096,
    regions: [{ offset: 0, size: 4096 }],
    parent: null,
    vmstate: null,
    chunks: encodeChunks(Buffer.alloc(32), new Uint8Array(1), []),
  });
  it.each([
    ['pageSize', { pageSize: { toString: true } }],
    ['chunkSize', { chunkSize: { toString: true } }],
    ['regions[0].size', { regions: [{ offset: 0, size: { toString: 1 } }] }],
    ['vmstate', { vmstate: { key: 'vmstate/x', size: 1, hash: { toString: '' } } }],
    ['createdAt', { createdAt: { toString: 1 } }],
    ['source', { source: null }],
    ['source', { source: { kind: 'raw', detail: { toString: 1 } } }],
  ])('%s: a ManifestError naming the field', (field, over) => {
    const text = JSON.stringify({ ...base(), ...over });
    expect(() => parseManifest(text)).toThrow(ManifestError);
    expect(() => parseManifest(text)).toThrow(expect.objectContaining({ field }));
  });
  it('the base document itself parses', () => {
    expect(parseManifest(JSON.stringify(base())).count).toBe(1);
  });
});

describe('CLI arguments', () => {
  async function run(argv: string[]) {
    let err = '';
    const code = await main(argv, { out: () => {}, err: (s) => (err += s) }, AbortSignal.abort());
    return { code, err };
  }
  it('`lazysnap toString` is an unknown command, not "entry.load is not a function"', async () => {
    for (const name of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      expect(await run([name])).toEqual({
        code: 2,
        err: `lazysnap: unknown command "${name}" (run lazysnap --help)\n`,
      });
    }
  });
  it('`demo --size=4096TiB` is refused before allocating, not "Invalid array length"', async () => {
    const r = await run(['demo', '--size=4096TiB', '--working-set', '0.1', '--json']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^lazysnap: --size must be at most this machine's memory/);
    const chunks = await run(['demo', '--size=1GiB', '--chunk-size=4KiB']);
    expect(chunks.code).toBe(1); // 2^18 chunks are fine: it gets as far as the aborted signal
    expect((await run(['demo', '--size=20GiB', '--chunk-size=4KiB'])).err).toMatch(
      /at most 4194304 chunks|at most this machine's memory/,
    );
  });
});

describe('serve durations past the timer limit', () => {
  it('`serve --fail-timeout 25d` is refused: Node would fire the timer after 1 ms and fail every fetch', async () => {
    const opts = { stores: ['/nonexistent'], id: 'vm', socketPath: '/tmp/x.sock' };
    for (const name of [
      'failTimeoutMs',
      'attemptTimeoutMs',
      'handshakeTimeoutMs',
      'shutdownGraceMs',
      'recordIdleMs',
    ]) {
      expect(() => resolveServeOptions({ ...opts, [name]: 25 * 86_400_000 })).toThrow(InvalidArgumentError);
      expect(resolveServeOptions({ ...opts, [name]: 2 ** 31 - 1 })).toMatchObject({ [name]: 2 ** 31 - 1 });
    }
    let err = '';
    const code = await main(
      ['serve', '--store', '/nonexistent', '--id', 'vm', '--socket', '/tmp/x.sock', '--fail-timeout', '25d'],
      { out: () => {}, err: (s) => (err += s) },
    );
    expect({ code, err }).toEqual({
      code: 2,
      err: expect.stringMatching(
        /^lazysnap: --fail-timeout must be a duration from 1ms to 2147483647ms \(about 24\.8 days\), received "25d"\n$/,
      ),
    });
  });
});

describe('resources of a command that fails', () => {
  const openFds = () => readdirSync('/proc/self/fd').length;
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.cleanup());

  it('snapshot with an unreadable --vmstate leaves no file open (the source and store were left open)', async () => {
    writeFileSync(path.join(tmp.dir, 'image.bin'), Buffer.alloc(65536, 7));
    const argv = [
      'snapshot',
      '--mem-file',
      path.join(tmp.dir, 'image.bin'),
      '--store',
      path.join(tmp.dir, 'store'),
      '--id',
      'vm',
      '--vmstate',
      tmp.dir,
    ];
    await main(argv, { out: () => {}, err: () => {} }); // warm-up: first use opens fds for good
    const before = openFds();
    let err = '';
    expect(await main(argv, { out: () => {}, err: (s) => (err += s) })).toBe(1);
    expect(err).toMatch(/^lazysnap: cannot read vmstate file .*EISDIR/);
    expect(openFds()).toBe(before);
  });

  it('serve whose metrics cannot listen closes its socket again (--metrics-host 256.0.0.1 leaked it)', async () => {
    const CS = 64 * 1024;
    const img = makeImage(tmp.dir, 256 * 1024, CS);
    await snapshotTo(path.join(tmp.dir, 'store'), img.path, 'vm', CS);
    const socket = path.join(tmp.dir, 'run', 's.sock');
    const argv = [
      'serve',
      '--store',
      path.join(tmp.dir, 'store'),
      '--id',
      'vm',
      '--socket',
      socket,
      '--metrics-port',
      '0',
      '--metrics-host',
      '256.0.0.1',
    ];
    await main(argv, { out: () => {}, err: () => {} }, AbortSignal.timeout(5000)); // warm-up, as above
    const before = openFds();
    let err = '';
    expect(await main(argv, { out: () => {}, err: (s) => (err += s) }, AbortSignal.timeout(5000))).toBe(1);
    expect(err).toMatch(/^lazysnap: .*256\.0\.0\.1/);
    expect(openFds()).toBe(before);
    expect(existsSync(socket)).toBe(false);
  });
});

describe.skipIf(!hasUffd)(uffdSuite('serve: only a userfaultfd is accepted as the uffd'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: RestoreServer | undefined;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  it('rejects /dev/null and a pipe of forged uffd messages (FORK events naming fds 0-63), and keeps serving', async () => {
    const CS = 256 * 1024;
    const img = makeImage(tmp.dir, 4 << 20, CS);
    const store = path.join(tmp.dir, 'store');
    await snapshotTo(store, img.path, 'vm', CS);
    server = await serve(tmp.dir, { stores: [store], id: 'vm' });
    const child = spawn(rawHandshakePath(), [server.socketPath, '10000'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const valid = payload({ page_size: 4096, page_size_kib: 4096 }).toString('hex');
    // Before the fix the server took both as the uffd: /dev/null kept its fault thread spinning, and
    // the forged FORK events made it close its own fds 0-63 (the serve process died).
    for (const kinds of ['d', 'p', 'r', 's', 'u']) {
      child.stdin.write(`${kinds} ${valid}\n`);
      expect((await lines.next()).value).toBe('closed');
    }
    child.stdin.end();
    expect(server.summaries).toHaveLength(1); // only the real uffd ('u') became a session
    const r = await runClient(['--socket', server.socketPath, '--image', img.path]);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 1024 });
  });
});
