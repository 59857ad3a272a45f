/**
 * The short version of the soak (bench/soak.ts, `npm run soak`): 32 concurrent Firecracker-exact
 * restores through ONE `lazysnap serve` process for a few seconds, each verifying every page, with
 * a memory budget smaller than the image (chunks are evicted and fetched again under load) and a
 * disk cache. Asserted: zero mismatched pages, every restore clean, every session summarized, no
 * warn/error line, and serve's fds back to their baseline. Memory and timing are the soak's to
 * report, never asserted here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { makeImage, tempDir } from '../helpers/images.js';
import { runSoak } from '../helpers/soak.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const MiB = 1024 * 1024;

describe.skipIf(!hasUffd)(uffdSuite('load: 32 concurrent restores through one serve'), () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('lazysnap-load-');
  });
  afterAll(() => tmp.cleanup());

  it('32 clients restoring back to back for 3 s: no mismatched page, fds back to baseline', async () => {
    const image = makeImage(tmp.dir, 4 * MiB, 256 * 1024, { zeroEvery: 4 });
    const r = await runSoak({
      dir: tmp.dir,
      image: image.path,
      chunkSize: 256 * 1024,
      durationMs: 3000,
      concurrency: 32,
      memoryBudget: 2 * MiB,
      cacheBudget: 2 * MiB,
    });
    expect(r.failedRestores).toEqual([]);
    expect(r.restores).toBeGreaterThanOrEqual(32);
    expect(r.mismatchedPages).toBe(0);
    expect(r.pagesVerified).toBe(r.restores * 1024);
    expect(r.sessionSummaries).toBe(r.restores);
    expect(r.problems).toEqual([]);
    expect(r.fds.settledMs).not.toBeNull();
    expect(r.fds.after).toEqual(r.fds.before); // a directory store: no origin connections at all
    expect(r.serveExit).toEqual({ code: 0, signal: null });
  });
});
