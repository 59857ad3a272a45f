/**
 * native/include/lazysnap_client.h: any process hands its memory to `lazysnap serve` with
 * Firecracker's handshake. The example program restores a buffer lazily and checks every page.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

import { buildC, repoRoot } from '../helpers/fixtures.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const run = promisify(execFile);

describe.skipIf(!hasUffd)(uffdSuite('lazysnap_client.h'), () => {
  it('restores a buffer through serve: every page right, zero pages without a fetch', async () => {
    const bin = buildC(
      'examples/restore-buffer.c',
      'restore-buffer',
      [`-I${path.join(repoRoot, 'native', 'include')}`],
      ['native/include/lazysnap_client.h'],
    );
    const tmp = tempDir();
    const img = makeImage(tmp.dir, 8 * 1024 * 1024, 256 * 1024, { zeroEvery: 2 });
    await snapshotTo(path.join(tmp.dir, 'store'), img.path, 'buf', 256 * 1024);
    const server = await serve(tmp.dir, { stores: [path.join(tmp.dir, 'store')], id: 'buf' });
    try {
      const { stdout } = await run(bin, [server.socketPath, img.path]);
      expect(JSON.parse(stdout)).toEqual({ pages: 2048, mismatches: 0 });
      const [s] = await summaries(server, 1);
      expect(s!.fetchedChunks).toBe(16); // the 16 non-zero chunks; the 16 zero ones were never fetched
      expect(s!.zeroFaults).toBeGreaterThanOrEqual(1);
      // A socket nobody serves: a clear errno, nothing left behind.
      const e = await run(bin, [path.join(tmp.dir, 'nobody.sock'), img.path]).catch(
        (x: { code: number; stderr: string }) => x,
      );
      expect(e).toMatchObject({
        code: 1,
        stderr: expect.stringContaining('lazysnap_restore: No such file or directory'),
      });
    } finally {
      await server.close(0);
      tmp.cleanup();
    }
  });
});
