/**
 * Snapshots through real store peers: s3rver (the S3 HTTP protocol) and nginx serving a directory
 * store as the HTTP tier. Bytes are reassembled from the store and compared with the image.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createSnapshot } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { FileStore } from '../../store/file-store.js';
import { openStore } from '../../store/open.js';
import { S3Store } from '../../store/s3-store.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { nginxSkipReason, startNginx, type NginxServer } from '../helpers/nginx.js';
import { reassemble } from '../helpers/reassemble.js';
import { S3RVER_CREDENTIALS, startS3rver, useS3rverEnv, type S3rverHandle } from '../helpers/s3rver.js';
import { cli } from '../helpers/cli.js';

const CS = 256 * 1024;

describe('snapshots in S3 (s3rver)', () => {
  let s3: S3rverHandle;
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(async () => {
    s3 = await startS3rver();
    tmp = tempDir();
  });
  afterAll(async () => {
    await s3.stop();
    tmp.cleanup();
  });

  it('round-trips, and a second snapshot PUTs only its changed chunks and its manifest', async () => {
    const store = new S3Store({
      bucket: s3.bucket,
      prefix: 'rt',
      endpoint: s3.endpoint,
      credentials: S3RVER_CREDENTIALS,
      region: 'us-east-1',
    });
    const img = makeImage(tmp.dir, 4 * 1024 * 1024, CS, { zeroEvery: 4 });
    let src = await openMemoryFile(img.path);
    const first = await createSnapshot({ source: src, store, id: 'one', chunkSize: CS });
    await src.close();
    expect((await reassemble(store, 'one')).equals(img.bytes)).toBe(true);
    const puts = () => s3.requests.filter((r) => r.method === 'PUT').map((r) => r.path);
    expect(puts().filter((p) => p.includes('/chunks/'))).toHaveLength(first.uniqueChunks);
    // Change two chunks (one byte each) and snapshot again.
    const next = Buffer.from(img.bytes);
    next.writeUInt8(next.readUInt8(1 * CS + 5) ^ 0xff, 1 * CS + 5);
    next.writeUInt8(next.readUInt8(14 * CS) ^ 0xff, 14 * CS);
    const nextPath = path.join(tmp.dir, 'next.img');
    (await import('node:fs')).writeFileSync(nextPath, next);
    s3.reset();
    src = await openMemoryFile(nextPath);
    await createSnapshot({ source: src, store, id: 'two', chunkSize: CS });
    await src.close();
    expect(puts().filter((p) => p.includes('/chunks/'))).toHaveLength(2);
    expect(puts().filter((p) => p.includes('/manifests/two.json'))).toHaveLength(1);
    expect((await reassemble(store, 'two')).equals(next)).toBe(true);
    await store.close();
  });

  it('works from the CLI with an s3:// URL, --s3-endpoint and credentials from the environment', async () => {
    const img = makeImage(tmp.dir, 1024 * 1024, CS, { name: 'cli.img' });
    const restoreEnv = useS3rverEnv();
    try {
      const url = `s3://${s3.bucket}/cli/prefix`;
      const r = await cli([
        'snapshot',
        '--mem-file',
        img.path,
        '--store',
        url,
        '--s3-endpoint',
        s3.endpoint,
        '--id',
        'c1',
        '--chunk-size',
        '256KiB',
        '--json',
      ]);
      expect(r.err).toBe('');
      expect(JSON.parse(r.out)).toMatchObject({ id: 'c1', chunks: 4, uploadedChunks: 4 });
      const i = await cli(['inspect', '--store', url, '--s3-endpoint', s3.endpoint, '--id', 'c1']);
      expect(i.out).toMatch(/4 total, 0 zero, 4 unique/);
      const store = await openStore(url, { s3Endpoint: s3.endpoint });
      expect((await reassemble(store, 'c1')).equals(img.bytes)).toBe(true);
      await store.close();
    } finally {
      restoreEnv();
    }
  });
});

describe.skipIf(!!nginxSkipReason)(
  `snapshots read over HTTP from nginx${nginxSkipReason ? ` [SKIPPED: ${nginxSkipReason}]` : ''}`,
  () => {
    let nginx: NginxServer;
    let tmp: ReturnType<typeof tempDir>;
    beforeAll(async () => {
      tmp = tempDir();
      nginx = await startNginx(path.join(tmp.dir, 'store'));
    });
    afterAll(async () => {
      await nginx.stop();
      tmp.cleanup();
    });

    it('reassembles a snapshot written to a directory store and served by nginx, and inspects it by URL', async () => {
      const img = makeImage(tmp.dir, 4 * 1024 * 1024, CS, { zeroChunks: [0, 7] });
      const src = await openMemoryFile(img.path);
      await createSnapshot({
        source: src,
        store: new FileStore(path.join(tmp.dir, 'store')),
        id: 'web',
        chunkSize: CS,
        codec: 'zstd',
      });
      await src.close();
      const http = await openStore(nginx.url);
      expect(http.writable).toBe(false);
      expect((await reassemble(http, 'web')).equals(img.bytes)).toBe(true);
      await http.close();
      const r = await cli(['inspect', '--store', nginx.url, '--id', 'web', '--json']);
      expect(JSON.parse(r.out)).toMatchObject({ id: 'web', chunks: { total: 16, zero: 2, unique: 14 } });
      const w = await cli(['snapshot', '--mem-file', img.path, '--store', nginx.url, '--id', 'nope']);
      expect(w.code).toBe(2);
      expect(w.err).toMatch(/is a read-only store/);
    });
  },
);
