/**
 * Security, end to end with real parts: the socket's modes and directory checks, peers of another
 * uid (a real fc-client run as nobody through setpriv), signed manifests refused or served by a
 * real `serve`, encrypted chunks restored byte for byte through the Firecracker-exact client, and
 * a real CLI snapshot + serve + restore whose every log line is searched for the key.
 *
 * Each case is a row of the Security table in docs/RELIABILITY.md.
 */
import { spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { REDACT_PATHS } from '../../core/logger.js';
import type { RestoreServer } from '../../runtime/restore-server.js';
import { createSnapshot } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { hashChunk } from '../../store/chunk.js';
import { keyCheckOf } from '../../store/chunk-crypto.js';
import { FileStore } from '../../store/file-store.js';
import { staticKeyProvider } from '../../store/key-provider.js';
import { parseManifest, serializeManifest } from '../../store/manifest.js';
import { loadIndex, readVmstate } from '../../store/reader.js';
import { cli } from '../helpers/cli.js';
import { runClient, startClient } from '../helpers/fc-client.js';
import { repoRoot } from '../helpers/fixtures.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { countingStore, reassemble } from '../helpers/reassemble.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;
const NOBODY = 65534;
const hasSetpriv = spawnSync('setpriv', ['--version']).status === 0;
const peerSkip = !hasUffd
  ? 'needs userfaultfd'
  : !hasSetpriv
    ? 'needs setpriv (util-linux) to run a peer as another uid'
    : process.geteuid?.() !== 0
      ? 'needs root to run a peer as another uid'
      : '';
const peerSuite = (name: string) => (peerSkip ? `${name} [SKIPPED: ${peerSkip}]` : name);

const KEY = Buffer.from('5ec2e7c0ffee0ddba11c0de5eed5a1e5abad1deacafef00dfeedface0b57ac1e', 'hex');
const WRONG = Buffer.alloc(32, 0x42);
const keys = staticKeyProvider({ default: KEY, k2: KEY });

/** A logger that keeps its JSON lines, with the root logger's redaction. */
function memoryLog(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n'))
        if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return {
    logger: pino({ level: 'trace', redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, stream),
    lines,
  };
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !cond();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every file under dir, recursively, as [relative path, bytes]. */
function files(dir: string): [string, Buffer][] {
  return readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => statSync(path.join(dir, f)).isFile())
    .map((f) => [f, readFileSync(path.join(dir, f))]);
}

describe('socket directory checks', () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let server: RestoreServer | undefined;
  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    await snapshotTo(store, makeImage(tmp.dir, 1 * MiB, CS).path, 'vm', CS);
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  it('creates the socket 0600 in a directory created 0700, and removes the socket on close', async () => {
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      socketPath: path.join(tmp.dir, 'a', 'b', 'uffd.sock'),
    });
    expect(statSync(server.socketPath).mode & 0o7777).toBe(0o600);
    expect(statSync(path.join(tmp.dir, 'a', 'b')).mode & 0o7777).toBe(0o700);
    expect(statSync(path.join(tmp.dir, 'a')).mode & 0o7777).toBe(0o700);
    await server.close(0);
    expect(existsSync(server.socketPath)).toBe(false);
    server = undefined;
  });

  /** Starts serve with its socket in `dir` and expects the insecure-path refusal. */
  async function expectRefused(dir: string, reason: RegExp): Promise<void> {
    const log = memoryLog();
    const sock = path.join(dir, 'uffd.sock');
    await expect(
      serve(tmp.dir, { stores: [store], id: 'vm', socketPath: sock, logger: log.logger }),
    ).rejects.toMatchObject({ code: 'LAZYSNAP_INSECURE_PATH', message: expect.stringMatching(reason) });
    expect(existsSync(sock)).toBe(false);
    const errors = log.lines.filter((l) => (l.level as number) >= 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({
      code: 'LAZYSNAP_INSECURE_PATH',
      msg: expect.stringMatching(/^refusing to serve: refusing to use /),
    });
  }

  it.each([
    ['writable by its group', 0o770, /writable by its group \(mode 0770\)/],
    ['writable by others', 0o777, /writable by group and others \(mode 0777\)/],
    ['writable by others even with the sticky bit', 0o1777, /mode 01777/],
  ])(
    'refuses a socket directory %s: LAZYSNAP_INSECURE_PATH, one error line, no socket',
    async (_name, mode, reason) => {
      const dir = path.join(tmp.dir, 'run');
      mkdirSync(dir);
      chmodSync(dir, mode);
      await expectRefused(dir, reason);
    },
  );

  it('refuses a socket directory under a directory others can write without the sticky bit', async () => {
    const parent = path.join(tmp.dir, 'open');
    mkdirSync(parent);
    chmodSync(parent, 0o777);
    mkdirSync(path.join(parent, 'run'), { mode: 0o700 });
    await expectRefused(
      path.join(parent, 'run'),
      /a directory above the socket is writable by group and others without the sticky bit/,
    );
    // Nor does serve create its directory there.
    await expectRefused(path.join(parent, 'new'), /above the socket is writable/);
  });

  it.skipIf(process.geteuid?.() !== 0)(
    'refuses a socket directory owned by another user (needs root to chown)',
    async () => {
      const dir = path.join(tmp.dir, 'theirs');
      mkdirSync(dir, { mode: 0o700 });
      chownSync(dir, NOBODY, NOBODY);
      await expectRefused(dir, /owned by uid 65534, not by this process's uid 0 or root/);
    },
  );

  it('accepts an existing directory only its owner can write (0755 stays 0755), under the sticky /tmp', async () => {
    const dir = path.join(tmp.dir, 'shared');
    mkdirSync(dir);
    chmodSync(dir, 0o755);
    server = await serve(tmp.dir, { stores: [store], id: 'vm', socketPath: path.join(dir, 'uffd.sock') });
    expect(statSync(server.socketPath).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o7777).toBe(0o755);
  });

  it('leaves a file that is not a socket where the socket should go', async () => {
    const sock = path.join(tmp.dir, 'run', 'uffd.sock');
    mkdirSync(path.dirname(sock), { mode: 0o700 });
    writeFileSync(sock, 'precious');
    await expect(serve(tmp.dir, { stores: [store], id: 'vm', socketPath: sock })).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
    });
    expect(readFileSync(sock, 'utf8')).toBe('precious');
  });

  it('serve --help documents --allow-uid, --socket-group and --verify-key; bad values are usage errors (exit 2)', async () => {
    const help = await cli(['serve', '--help']);
    for (const flag of [
      '--allow-uid UID',
      '--socket-group GID',
      '--verify-key FILE',
      'LAZYSNAP_CHUNK_KEY',
      'SO_PEERCRED',
      '0600',
    ])
      expect(help.out).toContain(flag);
    const base = ['serve', '--store', store, '--id', 'vm', '--socket', path.join(tmp.dir, 'run', 's.sock')];
    for (const extra of [
      ['--allow-uid', '-1'],
      ['--allow-uid', 'root'],
      ['--socket-group', 'staff'],
      ['--verify-key', path.join(tmp.dir, 'none.pem')],
    ]) {
      const r = await cli([...base, ...extra]);
      expect({ extra, code: r.code }).toEqual({ extra, code: 2 });
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
    expect((await cli(['inspect', '--help'])).out).toContain('--verify-key FILE');
    expect((await cli(['snapshot', '--help'])).out).toMatch(
      /--sign-key FILE[\s\S]*--encrypt MODE[\s\S]*--key-id ID/,
    );
  });
});

describe.skipIf(peerSkip !== '')(peerSuite('peers of another uid (SO_PEERCRED allowlist)'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let server: RestoreServer | undefined;
  beforeEach(async () => {
    tmp = tempDir();
    chmodSync(tmp.dir, 0o711); // nobody may traverse to the image and the socket's directory
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 8 * MiB, CS, { zeroEvery: 5 });
    await snapshotTo(store, img.path, 'vm', CS);
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  it('a peer of another uid cannot connect to the default socket (0600 in 0700)', async () => {
    server = await serve(tmp.dir, { stores: [store], id: 'vm' });
    const probe = `require('net').connect(${JSON.stringify(server.socketPath)}).on('connect', () => { console.log('connected'); process.exit(0) }).on('error', (e) => { console.log(e.code); process.exit(0) })`;
    const r = spawnSync(
      'setpriv',
      ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', process.execPath, '-e', probe],
      { encoding: 'utf8' },
    );
    expect(r.stdout.trim()).toBe('EACCES');
    expect(server.stats().pendingHandshakes).toBe(0);
  });

  it('serves an allowed peer of another uid through --socket-group, and refuses a peer outside the allowlist with one warning line', async () => {
    const log = memoryLog();
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      allowUids: [NOBODY],
      socketGroup: NOBODY,
      logger: log.logger,
    });
    const st = statSync(server.socketPath);
    expect({ mode: st.mode & 0o7777, gid: st.gid }).toEqual({ mode: 0o660, gid: NOBODY });
    const dir = statSync(path.dirname(server.socketPath));
    expect({ mode: dir.mode & 0o7777, gid: dir.gid }).toEqual({ mode: 0o710, gid: NOBODY });
    // Root (uid 0) is not in the list: its connection is closed unread.
    const refused = startClient(['--socket', server.socketPath, '--image', img.path, '--wait']);
    await until(
      () =>
        log.lines.some(
          (l) =>
            l.msg === `connection refused: peer uid 0 (pid ${refused.child.pid}) is not in the allowlist`,
        ),
      'the refusal line',
    );
    refused.child.kill('SIGKILL');
    await refused.result;
    // The allowed peer of another uid restores every byte, after the refusal.
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2'], {
      asUid: NOBODY,
    });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 2048 });
    const [s] = await summaries(server, 1);
    expect(s).toMatchObject({ outcome: 'ended', failedChunks: [] });
    const refusals = log.lines.filter((l) => String(l.msg).startsWith('connection refused'));
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ level: 40, uid: 0, allowUids: [NOBODY] });
    expect((await server.metrics.peersRefused.get()).values[0]!.value).toBe(1);
    expect(server.summaries).toHaveLength(1);
  });

  it('refuses a peer of another uid outside the allowlist, and keeps serving the allowed ones', async () => {
    const log = memoryLog();
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      allowUids: [0],
      socketGroup: NOBODY,
      logger: log.logger,
    });
    const refused = startClient(['--socket', server.socketPath, '--image', img.path, '--wait'], {
      asUid: NOBODY,
    });
    await until(
      () =>
        log.lines.some(
          (l) => l.uid === NOBODY && String(l.msg).startsWith('connection refused: peer uid 65534'),
        ),
      'the refusal line',
    );
    refused.child.kill('SIGKILL');
    await refused.result;
    expect(server.sessions.size).toBe(0);
    const results = await Promise.all(
      [0, 1].map(() => runClient(['--socket', server!.socketPath, '--image', img.path, '--threads', '2'])),
    );
    for (const r of results) expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
    await summaries(server, 2);
    expect((await server.metrics.peersRefused.get()).values[0]!.value).toBe(1);
  });
});

describe.skipIf(!hasUffd)(uffdSuite('signed manifests'), () => {
  const signer = generateKeyPairSync('ed25519');
  const stranger = generateKeyPairSync('ed25519');
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let server: RestoreServer | undefined;
  let pubPem: string;
  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 8 * MiB, CS, { zeroEvery: 4 });
    pubPem = path.join(tmp.dir, 'pub.pem');
    writeFileSync(pubPem, signer.publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(
      path.join(tmp.dir, 'priv.pem'),
      signer.privateKey.export({ type: 'pkcs8', format: 'pem' }),
      { mode: 0o600 },
    );
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  it('snapshot --sign-key writes the signature just before the manifest; serve --verify-key restores every byte', async () => {
    const counted = countingStore(new FileStore(store));
    const src = await openMemoryFile(img.path);
    const s = await createSnapshot({
      source: src,
      store: counted,
      id: 'sdk',
      chunkSize: CS,
      signKey: signer.privateKey,
      vmstate: Buffer.from('vmstate'),
    });
    await src.close();
    expect(counted.puts.slice(-3)).toEqual(['vmstate/sdk', 'manifests/sdk.json.sig', 'manifests/sdk.json']);
    expect(s.signedBy).toMatch(/^ed25519:/);
    const r0 = await cli([
      'snapshot',
      '--mem-file',
      img.path,
      '--store',
      store,
      '--id',
      'vm',
      '--chunk-size',
      '256KiB',
      '--sign-key',
      path.join(tmp.dir, 'priv.pem'),
      '--progress',
      'quiet',
    ]);
    expect(r0).toMatchObject({ code: 0, out: expect.stringContaining(`signed      ${s.signedBy}`) });
    server = await serve(tmp.dir, { stores: [store], id: 'vm', verifyKey: readFileSync(pubPem) });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
    const info = await cli(['inspect', '--store', store, '--id', 'vm', '--verify-key', pubPem]);
    expect(info).toMatchObject({
      code: 0,
      out: expect.stringContaining(`signature   verified (${s.signedBy})`),
    });
    expect((await cli(['inspect', '--store', store, '--id', 'vm'])).out).toContain(
      'signature   present, not verified',
    );
  });

  it.each([
    ['unsigned', 'missing', 'unsigned'],
    ['signed by another key', 'mismatch', 'stranger'],
    ['altered after signing (one byte)', 'mismatch', 'tamper'],
    ['with a malformed signature object', 'malformed', 'garble'],
  ] as const)(
    'serve refuses a manifest %s: LAZYSNAP_BAD_SIGNATURE (%s), one error line, no socket',
    async (_name, reason, mode) => {
      const key =
        mode === 'stranger' ? stranger.privateKey : mode === 'unsigned' ? undefined : signer.privateKey;
      await snapshotTo(store, img.path, 'vm', CS, key ? { signKey: key } : {});
      const m = path.join(store, 'manifests', 'vm.json');
      if (mode === 'tamper') {
        const b = readFileSync(m);
        b[b.indexOf('"createdAt"') + 20]! ^= 0x01; // a digit of the timestamp: still a valid manifest
        writeFileSync(m, b);
        expect(() => parseManifest(b, 'vm')).not.toThrow();
      }
      if (mode === 'garble')
        writeFileSync(`${m}.sig`, '{"format":"lazysnap-signature/1","alg":"ed25519","signature":"c2hvcnQ="}');
      const log = memoryLog();
      const sock = path.join(tmp.dir, 'run', 'uffd.sock');
      await expect(
        serve(tmp.dir, { stores: [store], id: 'vm', verifyKey: signer.publicKey, logger: log.logger }),
      ).rejects.toMatchObject({ code: 'LAZYSNAP_BAD_SIGNATURE', reason });
      expect(existsSync(sock)).toBe(false);
      const errors = log.lines.filter((l) => (l.level as number) >= 50);
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatchObject({
        code: 'LAZYSNAP_BAD_SIGNATURE',
        msg: expect.stringMatching(/^refusing to serve: manifest "vm" refused: /),
      });
      // The CLI: one line on stderr, exit 1; inspect refuses the same way.
      for (const cmd of [['serve', '--socket', sock], ['inspect']]) {
        const r = await cli([...cmd, '--store', store, '--id', 'vm', '--verify-key', pubPem]);
        expect({ cmd: cmd[0], code: r.code }).toEqual({ cmd: cmd[0], code: 1 });
        expect(r.err).toMatch(/^lazysnap: manifest "vm" refused: /);
        expect(r.err.trim().split('\n')).toHaveLength(1);
      }
    },
  );

  it('with several stores, passes over a wrongly signed manifest for a well-signed one; none well signed is refused', async () => {
    await snapshotTo(store, img.path, 'vm', CS, { signKey: signer.privateKey });
    const forged = path.join(tmp.dir, 'forged');
    cpSync(store, forged, { recursive: true });
    const m = path.join(forged, 'manifests', 'vm.json');
    const doc = JSON.parse(readFileSync(m, 'utf8')) as { source: { detail?: string } };
    doc.source.detail = 'forged';
    writeFileSync(m, JSON.stringify(doc));
    server = await serve(tmp.dir, { stores: [forged, store], id: 'vm', verifyKey: signer.publicKey });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path]);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
    await server.close(0);
    server = undefined;
    await expect(
      serve(tmp.dir, { stores: [forged, forged], id: 'vm', verifyKey: signer.publicKey }),
    ).rejects.toMatchObject({ code: 'LAZYSNAP_BAD_SIGNATURE', reason: 'mismatch' });
  });
});

describe.skipIf(!hasUffd)(uffdSuite('encrypted chunks'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let server: RestoreServer | undefined;
  beforeEach(() => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 8 * MiB, CS, { zeroEvery: 4 });
  });
  afterEach(async () => {
    await server?.close(0);
    server = undefined;
    tmp.cleanup();
  });

  /** 32-byte samples of every non-zero chunk's plaintext, and the chunks' plain BLAKE3s. */
  function plaintextFacts(): { samples: Buffer[]; plainHashes: Set<string> } {
    const samples: Buffer[] = [];
    const plainHashes = new Set<string>();
    for (let i = 0; i < img.bytes.length / CS; i++) {
      if (img.zeroChunks.includes(i)) continue;
      samples.push(img.bytes.subarray(i * CS + 4096, i * CS + 4096 + 32));
      plainHashes.add(hashChunk(img.bytes.subarray(i * CS, (i + 1) * CS)));
    }
    return { samples, plainHashes };
  }

  it.each(['zstd', 'none'] as const)(
    'stores no plaintext (%s): objects, object names and manifest reveal nothing without the key',
    async (codec) => {
      const { samples, plainHashes } = plaintextFacts();
      const secret = Buffer.from('VMSTATE-SECRET-'.repeat(64));
      // Control: without encryption the samples and names are there, so the checks below can fail.
      const plain = path.join(tmp.dir, 'plain');
      await snapshotTo(plain, img.path, 'vm', CS, { codec });
      const plainObjects = files(path.join(plain, 'chunks'));
      expect(samples.every((x) => plainObjects.some(([, b]) => b.includes(x)))).toBe(true);
      expect(plainObjects.some(([f]) => plainHashes.has(path.basename(f).split('.')[0]!))).toBe(true);

      await snapshotTo(store, img.path, 'vm', CS, { codec, encrypt: { keys }, vmstate: secret });
      const objects = files(path.join(store, 'chunks'));
      expect(objects.length).toBe(plainHashes.size);
      for (const [f, b] of objects) {
        expect(
          samples.some((x) => b.includes(x)),
          f,
        ).toBe(false);
        expect(plainHashes.has(path.basename(f).split('.')[0]!), f).toBe(false);
      }
      const manifestText = readFileSync(path.join(store, 'manifests', 'vm.json'), 'utf8');
      const ix = parseManifest(manifestText, 'vm');
      expect(ix.manifest.encryption).toMatchObject({
        alg: 'aes-256-gcm',
        mode: 'convergent',
        keyId: 'default',
        keyCheck: keyCheckOf(KEY),
      });
      for (let i = 0; i < ix.count; i++)
        expect(plainHashes.has(ix.hashes.toString('hex', i * 32, i * 32 + 32))).toBe(false);
      for (const form of [KEY.toString('hex'), KEY.toString('base64')])
        expect(manifestText).not.toContain(form);
      expect(readFileSync(path.join(store, 'vmstate', 'vm')).includes(Buffer.from('VMSTATE-SECRET'))).toBe(
        false,
      );
      // With the key, everything reads back verified.
      expect((await reassemble(new FileStore(store), 'vm', keys)).equals(img.bytes)).toBe(true);
      expect(
        (await readVmstate(
          new FileStore(store),
          await loadIndex(new FileStore(store), 'vm', undefined, { keys }),
        ))!.equals(secret),
      ).toBe(true);
    },
  );

  it('convergent mode keeps dedup (the same image again uploads no chunk); random mode shares nothing', async () => {
    const first = await snapshotTo(store, img.path, 'a', CS, { encrypt: { mode: 'convergent', keys } });
    expect(first.uploadedChunks).toBe(plaintextFacts().plainHashes.size);
    const again = await snapshotTo(store, img.path, 'b', CS, { encrypt: { mode: 'convergent', keys } });
    expect(again).toMatchObject({
      uploadedChunks: 0,
      uploadedBytes: 0,
      encryption: { mode: 'convergent', keyId: 'default' },
    });
    const otherKey = await snapshotTo(store, img.path, 'c', CS, {
      encrypt: { mode: 'convergent', keyId: 'other', keys: staticKeyProvider({ other: WRONG }) },
    });
    expect(otherKey.uploadedChunks).toBe(first.uploadedChunks); // another key is another dedup domain
    const r1 = await snapshotTo(store, img.path, 'r1', CS, { encrypt: { mode: 'random', keys } });
    const r2 = await snapshotTo(store, img.path, 'r2', CS, { encrypt: { mode: 'random', keys } });
    expect([r1.uploadedChunks, r2.uploadedChunks]).toEqual([first.uploadedChunks, first.uploadedChunks]);
    for (const id of ['a', 'b', 'r1', 'r2'])
      expect((await reassemble(new FileStore(store), id, keys)).equals(img.bytes), id).toBe(true);
  });

  it.each(['convergent', 'random'] as const)(
    'restores every byte through serve (%s), then again from the disk cache',
    async (mode) => {
      await snapshotTo(store, img.path, 'vm', CS, { encrypt: { mode, keys } });
      const cacheDir = path.join(tmp.dir, 'cache');
      server = await serve(tmp.dir, { stores: [store], id: 'vm', keys, cacheDir });
      const r = await runClient([
        '--socket',
        server.socketPath,
        '--image',
        img.path,
        '--threads',
        '4',
        '--regions',
        '6M,2M',
      ]);
      expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 2048 });
      const nonZero = 32 - img.zeroChunks.length;
      expect((await summaries(server, 1))[0]).toMatchObject({
        fetchedChunks: nonZero,
        hitsByTier: { origin0: nonZero },
        failedChunks: [],
      });
      await server.close(0);
      rmSync(path.join(store, 'chunks'), { recursive: true });
      server = await serve(tmp.dir, { stores: [store], id: 'vm', keys, cacheDir });
      const again = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
      expect(again.report).toMatchObject({ ok: true, mismatches: 0 });
      expect((await summaries(server, 1))[0]!.hitsByTier).toMatchObject({ disk: nonZero });
    },
  );

  it('refuses to serve without the key or with a wrong one, before the socket exists (one error line, CLI exit 1)', async () => {
    await snapshotTo(store, img.path, 'vm', CS, { encrypt: { keys } });
    const sock = path.join(tmp.dir, 'run', 'uffd.sock');
    for (const [k, code] of [
      [staticKeyProvider({}), 'LAZYSNAP_KEY_UNAVAILABLE'],
      [staticKeyProvider({ default: WRONG }), 'LAZYSNAP_WRONG_KEY'],
    ] as const) {
      const log = memoryLog();
      await expect(
        serve(tmp.dir, { stores: [store], id: 'vm', keys: k, logger: log.logger }),
      ).rejects.toMatchObject({ code });
      expect(existsSync(sock)).toBe(false);
      expect(log.lines.filter((l) => (l.level as number) >= 50)).toEqual([expect.objectContaining({ code })]);
    }
    const saved = process.env.LAZYSNAP_CHUNK_KEY;
    try {
      process.env.LAZYSNAP_CHUNK_KEY = WRONG.toString('hex');
      const r = await cli(['serve', '--store', store, '--id', 'vm', '--socket', sock]);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(
        /^lazysnap: the chunk key given for key id "default" is not the key snapshot "vm" was encrypted with\n$/,
      );
      const info = await cli(['inspect', '--store', store, '--id', 'vm']);
      expect(info.out).toContain('encryption  aes-256-gcm, convergent, key id default, key: does not match');
    } finally {
      if (saved === undefined) delete process.env.LAZYSNAP_CHUNK_KEY;
      else process.env.LAZYSNAP_CHUNK_KEY = saved;
    }
  });

  it('fails closed when no object authenticates (a wrong key past the key check): the peer is killed, no byte installed', async () => {
    await snapshotTo(store, img.path, 'vm', CS, { encrypt: { keys } });
    // Make the manifest vouch for the wrong key, as if the key check were not there.
    const m = path.join(store, 'manifests', 'vm.json');
    const ix = parseManifest(readFileSync(m), 'vm');
    writeFileSync(
      m,
      serializeManifest({
        ...ix.manifest,
        encryption: { ...ix.manifest.encryption!, keyCheck: keyCheckOf(WRONG) },
      }),
    );
    const log = memoryLog();
    server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      keys: staticKeyProvider({ default: WRONG }),
      failClosed: 'kill',
      failTimeoutMs: 3000,
      retries: 0,
      logger: log.logger,
    });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
    expect(r.signal).toBe('SIGKILL');
    expect(r.report).toBeNull();
    const [s] = await summaries(server, 1);
    expect(s).toMatchObject({ outcome: 'killed', fetchedChunks: 0, bytesFetched: 0 });
    expect(s!.failedChunks.length).toBeGreaterThanOrEqual(1);
    expect(log.lines.some((l) => JSON.stringify(l.errors ?? '').includes('unauthentic'))).toBe(true);
  });

  it('fetches from the next origin when an object fails authentication on the first', async () => {
    await snapshotTo(store, img.path, 'vm', CS, { encrypt: { mode: 'random', keys } });
    const bad = path.join(tmp.dir, 'bad');
    cpSync(store, bad, { recursive: true });
    const objects = files(path.join(bad, 'chunks'));
    for (const [f, b] of objects.slice(0, 3)) {
      b[b.length - 40]! ^= 0x80; // one bit of ciphertext
      writeFileSync(path.join(bad, 'chunks', f), b);
    }
    server = await serve(tmp.dir, { stores: [bad, store], id: 'vm', keys, retries: 0 });
    const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
    const [s] = await summaries(server, 1);
    expect(s!.hitsByTier.origin1).toBe(3);
    expect(s!.failedChunks).toEqual([]);
  });

  it('encrypts a diff like its parent (same key, mode and salt) and refuses a mismatched one', async () => {
    const CSd = 64 * KiB;
    const base = makeImage(tmp.dir, 1 * MiB, CSd, { name: 'base.img' });
    for (const mode of ['convergent', 'random'] as const) {
      const fs = new FileStore(path.join(tmp.dir, mode));
      const src = await openMemoryFile(base.path);
      await createSnapshot({ source: src, store: fs, id: 'base', chunkSize: CSd, encrypt: { mode, keys } });
      await src.close();
      const next = Buffer.from(base.bytes);
      const diffPath = path.join(tmp.dir, `${mode}.diff`);
      const page = Buffer.alloc(4096, 0x5a);
      page.copy(next, 3 * CSd);
      writeFileSync(diffPath, Buffer.alloc(0));
      const { openSync, writeSync, closeSync, truncateSync } = await import('node:fs');
      const fd = openSync(diffPath, 'w');
      writeSync(fd, page, 0, 4096, 3 * CSd);
      closeSync(fd);
      truncateSync(diffPath, base.bytes.length);
      const attempt = async (encrypt: Parameters<typeof createSnapshot>[0]['encrypt'], id: string) => {
        const d = await openMemoryFile(diffPath, { diff: true });
        try {
          return await createSnapshot({
            source: d,
            store: fs,
            id,
            chunkSize: CSd,
            parent: 'base',
            ...(encrypt ? { encrypt } : {}),
          });
        } finally {
          await d.close();
        }
      };
      await expect(attempt(undefined, 'x1')).rejects.toMatchObject({
        code: 'LAZYSNAP_INVALID_ARGUMENT',
        argument: 'parent',
      });
      await expect(
        attempt({ mode: mode === 'random' ? 'convergent' : 'random', keys }, 'x2'),
      ).rejects.toMatchObject({ argument: 'parent' });
      await expect(
        attempt({ mode, keys: staticKeyProvider({ default: WRONG }) }, 'x3'),
      ).rejects.toMatchObject({ code: 'LAZYSNAP_WRONG_KEY' });
      const s = await attempt({ mode, keys }, 'next');
      expect(s.inheritedChunks).toBe(15);
      expect((await reassemble(fs, 'next', keys)).equals(next), mode).toBe(true);
      const [pb, pn] = await Promise.all(['base', 'next'].map((id) => loadIndex(fs, id)));
      expect(pn!.manifest.encryption).toEqual(pb!.manifest.encryption);
    }
  });
});

describe.skipIf(!hasUffd)(uffdSuite('keys never logged'), () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => (tmp = tempDir()));
  afterEach(() => tmp.cleanup());

  /** The key in every form a log could carry it: hex, base64, base64url, a Buffer's JSON bytes. */
  function forms(k: Buffer): string[] {
    return [
      k.toString('hex'),
      k.toString('hex').toUpperCase(),
      k.toString('base64'),
      k.toString('base64url'),
      k.toString('base64').slice(0, 40),
      [...k].join(','),
      k.toString('latin1'),
    ];
  }

  function lazysnap(
    args: string[],
    env: Record<string, string>,
  ): { child: ReturnType<typeof spawn>; output: () => string } {
    const child = spawn(process.execPath, ['--import', 'tsx', 'cli/bin.ts', ...args], {
      cwd: repoRoot,
      env: { ...process.env, LAZYSNAP_LOG_LEVEL: 'trace', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
    return { child, output: () => out };
  }

  async function finish(p: ReturnType<typeof lazysnap>): Promise<{ code: number | null; out: string }> {
    const [code] = (await once(p.child, 'close')) as [number | null];
    return { code, out: p.output() };
  }

  it('a real CLI snapshot, serve and restore at trace level, and their failures, never print the key in any form', async () => {
    const key = randomBytes(32);
    const env = { LAZYSNAP_CHUNK_KEY: key.toString('base64') };
    const img = makeImage(tmp.dir, 4 * MiB, CS, { zeroEvery: 3 });
    const store = path.join(tmp.dir, 'store');
    const outputs: string[] = [];
    const snap = await finish(
      lazysnap(
        [
          'snapshot',
          '--mem-file',
          img.path,
          '--store',
          store,
          '--id',
          'vm',
          '--chunk-size',
          '256KiB',
          '--encrypt',
          'convergent',
          '--key-id',
          'k1',
          '--vmstate',
          img.path,
          '--json',
          '--progress',
          'json',
        ],
        env,
      ),
    );
    expect(snap.code, snap.out).toBe(0);
    outputs.push(snap.out);
    const sock = path.join(tmp.dir, 'run', 'uffd.sock');
    const srv = lazysnap(
      ['serve', '--store', store, '--id', 'vm', '--socket', sock, '--shutdown-grace', '1s'],
      { ...env, LAZYSNAP_CHUNK_KEY_ID: 'k1' },
    );
    await until(() => srv.output().includes('serving vm on'), 'serve to listen', 30_000);
    const r = await runClient(['--socket', sock, '--image', img.path, '--threads', '2']);
    expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
    await until(() => srv.output().includes('restore session summary'), 'the session summary');
    srv.child.kill('SIGTERM');
    const served = await finish(srv);
    expect(served.code).toBe(0);
    // The log was captured (at trace: whatever the most verbose level prints is searched too).
    expect(served.out).toMatch(/"encryption":\{"mode":"convergent","keyId":"k1"\}.*"msg":"serving"/);
    expect(served.out).toContain('"msg":"restore session summary"');
    outputs.push(served.out);
    // Failure paths print errors that talk about the key: none quotes it.
    const fails = [
      ['serve', { LAZYSNAP_CHUNK_KEY: randomBytes(32).toString('hex') }], // wrong key
      ['serve', { LAZYSNAP_CHUNK_KEY: `${key.toString('hex')}00` }], // 33 bytes
      ['serve', { LAZYSNAP_CHUNK_KEY: key.toString('hex'), LAZYSNAP_CHUNK_KEY_ID: 'k2' }], // another id
      ['inspect', env],
    ] as const;
    for (const [cmd, e] of fails) {
      const args =
        cmd === 'serve'
          ? ['serve', '--store', store, '--id', 'vm', '--socket', sock]
          : ['inspect', '--store', store, '--id', 'vm', '--json'];
      const res = await finish(lazysnap(args, e));
      expect(res.code, res.out).toBe(cmd === 'serve' ? 1 : 0);
      outputs.push(res.out);
    }
    expect(outputs.join('')).toMatch(/LAZYSNAP_CHUNK_KEY must hold 32 bytes/);
    const all = outputs.join('\n');
    for (const f of forms(key))
      expect(all.includes(f), `the key appears as ${JSON.stringify(f.slice(0, 12))}…`).toBe(false);
  });
});
