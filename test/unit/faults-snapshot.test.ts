/**
 * The snapshot side under a real interruption: `lazysnap snapshot` SIGKILLed mid-upload (to s3rver,
 * the S3 protocol, and to a directory store), then run again. The retry uploads only the chunks
 * that are missing, and no manifest ever exists while a chunk it names is missing: the manifest is
 * written last (snapshotter/snapshot.ts), and the store is checked at the moment of the kill.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { StoreBackend } from '../../store/backend.js';
import { FileStore } from '../../store/file-store.js';
import { manifestKey } from '../../store/keys.js';
import { S3Store } from '../../store/s3-store.js';
import { repoRoot } from '../helpers/fixtures.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { reassemble } from '../helpers/reassemble.js';
import { S3RVER_CREDENTIALS, S3RVER_ENV, startS3rver, type S3rverHandle } from '../helpers/s3rver.js';
import { bounded, until } from '../helpers/serve-process.js';

const MiB = 1024 * 1024;
const CS = 256 * 1024;
/** 64 MiB of random bytes: 256 distinct chunks, none zero, so the upload lasts long enough to interrupt. */
const SIZE = 64 * MiB;
const CHUNKS = SIZE / CS;
const ENV = S3RVER_ENV;

/** `lazysnap snapshot` as a child process; `extra` may override the defaults (the last of a repeated option wins). */
function snapshotCli(
  image: string,
  store: string,
  extra: string[] = [],
): {
  child: ChildProcess;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }>;
} {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'cli/bin.ts',
      'snapshot',
      '--mem-file',
      image,
      '--store',
      store,
      '--id',
      'big',
      '--chunk-size',
      '256KiB',
      '--concurrency',
      '2',
      '--progress',
      'quiet',
      '--json',
      ...extra,
    ],
    {
      cwd: repoRoot,
      env: { ...process.env, ...ENV },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = once(child, 'close').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
    out,
    err,
  }));
  return { child, done };
}

async function count(store: StoreBackend, prefix: string): Promise<number> {
  let n = 0;
  for await (const _ of store.list(prefix)) n++;
  return n;
}

describe('faults: snapshot upload interrupted', () => {
  let tmp: ReturnType<typeof tempDir>;
  let image: ReturnType<typeof makeImage>;
  beforeAll(() => {
    tmp = tempDir('lazysnap-faults-snap-');
    image = makeImage(tmp.dir, SIZE, CS);
  });
  afterAll(() => tmp.cleanup());

  describe('to s3rver', () => {
    let s3: S3rverHandle;
    beforeAll(async () => {
      s3 = await startS3rver();
    });
    afterAll(() => s3.stop());

    it('SIGKILL mid-upload: no manifest; the rerun PUTs only the missing chunks, the manifest last, and the snapshot reads back whole', async () => {
      const url = `s3://${s3.bucket}/kill`;
      const store = new S3Store({
        bucket: s3.bucket,
        prefix: 'kill',
        endpoint: s3.endpoint,
        credentials: S3RVER_CREDENTIALS,
        region: 'us-east-1',
      });
      const puts = (prefix: string) =>
        s3.requests.filter((r) => r.method === 'PUT' && r.path.includes(`/kill/${prefix}`));
      const first = snapshotCli(image.path, url, ['--s3-endpoint', s3.endpoint]);
      // Kill it once a fifth of the chunks have been sent: well inside the upload.
      expect(await until(() => puts('chunks/').length >= CHUNKS / 5, 60_000, 2)).toBe(true);
      first.child.kill('SIGKILL');
      expect((await bounded(first.done, 10_000, 'killed snapshot')).signal).toBe('SIGKILL');
      expect(puts('manifests/')).toEqual([]);
      expect(await store.has(manifestKey('big'))).toBe(false);
      const present = await count(store, 'chunks/');
      expect(present).toBeGreaterThan(0);
      expect(present).toBeLessThan(CHUNKS);

      s3.reset();
      const second = await bounded(
        snapshotCli(image.path, url, ['--s3-endpoint', s3.endpoint]).done,
        60_000,
        'rerun',
      );
      expect({ code: second.code, err: second.err }).toEqual({ code: 0, err: '' });
      expect(JSON.parse(second.out)).toMatchObject({
        uploadedChunks: CHUNKS - present,
        uniqueChunks: CHUNKS,
      });
      expect(puts('chunks/')).toHaveLength(CHUNKS - present);
      // The manifest's PUT arrives after every chunk's PUT has been answered (the snapshotter waits for them).
      const order = s3.requests.filter((r) => r.method === 'PUT').map((r) => r.path);
      expect(order.filter((p) => p.includes('/manifests/'))).toHaveLength(1);
      expect(order.at(-1)).toContain('/kill/manifests/big.json');
      expect((await reassemble(store, 'big')).equals(image.bytes)).toBe(true);
      await store.close();
    });
  });

  it('to a directory store, SIGKILL mid-upload: no manifest; the rerun writes only the missing chunks and reads back whole', async () => {
    const dir = path.join(tmp.dir, 'dirstore');
    const chunkFiles = () =>
      existsSync(path.join(dir, 'chunks'))
        ? readdirSync(path.join(dir, 'chunks'), { recursive: true })
            .map(String)
            .filter((f) => f.endsWith('.zstd'))
        : [];
    const first = snapshotCli(image.path, dir, ['--concurrency', '1']); // a directory is fast: one chunk at a time leaves time to interrupt
    expect(await until(() => chunkFiles().length >= CHUNKS / 5, 60_000, 2)).toBe(true);
    first.child.kill('SIGKILL');
    expect((await bounded(first.done, 10_000, 'killed snapshot')).signal).toBe('SIGKILL');
    expect(existsSync(path.join(dir, 'manifests', 'big.json'))).toBe(false);
    const present = chunkFiles().length;
    expect(present).toBeLessThan(CHUNKS);
    const second = await bounded(snapshotCli(image.path, dir).done, 60_000, 'rerun');
    expect({ code: second.code, err: second.err }).toEqual({ code: 0, err: '' });
    expect(JSON.parse(second.out)).toMatchObject({ uploadedChunks: CHUNKS - present });
    expect((await reassemble(new FileStore(dir), 'big')).equals(image.bytes)).toBe(true);
  });
});
