/**
 * The SDK's entry point (`import ... from 'lazysnap'`): what it exports, a snapshot → serve → restore
 * round trip through it alone, and that every long call honours its AbortSignal.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import * as sdk from '../../sdk/index.js';
import { runClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const MiB = 1024 * 1024;

describe('the SDK entry point', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => void (tmp = tempDir()));
  afterEach(() => tmp.cleanup());

  it('exports the documented calls and error classes', () => {
    for (const name of ['snapshot', 'openStore', 'loadIndex', 'collectGarbage', 'attach', 'createRootLogger'])
      expect(typeof sdk[name as keyof typeof sdk], name).toBe('function');
    for (const name of [
      'RestoreServer',
      'RestoreHost',
      'FirecrackerClient',
      'LazysnapError',
      'InvalidArgumentError',
      'FetchError',
      'FirecrackerError',
    ])
      expect(typeof sdk[name as keyof typeof sdk], name).toBe('function');
  });

  it('snapshot() honours an aborted signal and publishes no manifest', async () => {
    const img = makeImage(tmp.dir, 8 * MiB, 256 * 1024);
    const store = path.join(tmp.dir, 'store');
    const ac = new AbortController();
    const run = sdk.snapshot({
      store,
      id: 'x',
      source: { memoryFile: img.path },
      chunkSize: 256 * 1024,
      concurrency: 1,
      signal: ac.signal,
      onProgress: (p) => p.chunksDone >= 2 && ac.abort(new Error('stop')),
    });
    await expect(run).rejects.toThrow('stop');
    expect(existsSync(path.join(store, 'manifests', 'x.json'))).toBe(false);
    await expect(
      sdk.snapshot({
        store,
        id: 'x',
        source: { memoryFile: img.path },
        signal: AbortSignal.abort(new Error('before')),
      }),
    ).rejects.toThrow('before');
    await expect(sdk.snapshot({ store, id: 'x', source: {} as never })).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
    });
  });

  it.skipIf(!hasUffd)(
    uffdSuite(
      'round trip through the entry point alone: snapshot, RestoreServer, a Firecracker-exact client',
    ),
    async () => {
      const img = makeImage(tmp.dir, 8 * MiB, 256 * 1024, { zeroEvery: 3 });
      const store = `file://${path.join(tmp.dir, 'store')}`;
      const summary = await sdk.snapshot({
        store,
        id: 'rt',
        source: { memoryFile: img.path },
        chunkSize: 256 * 1024,
      });
      expect(summary).toMatchObject({ chunks: 32, zeroChunks: img.zeroChunks.length });
      await expect(
        sdk.RestoreServer.start(
          { stores: [store], id: 'rt', socketPath: path.join(tmp.dir, 'a.sock') },
          AbortSignal.abort(new Error('aborted start')),
        ),
      ).rejects.toThrow('aborted start');
      const server = await sdk.RestoreServer.start({
        stores: [store],
        id: 'rt',
        socketPath: path.join(tmp.dir, 'run', 'rt.sock'),
      });
      try {
        expect(server.snapshot).toMatchObject({ id: 'rt', totalSize: 8 * MiB, chunks: 32, pageSize: 4096 });
        const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
        expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: 2048 });
      } finally {
        await server.close(0);
      }
    },
  );
});
