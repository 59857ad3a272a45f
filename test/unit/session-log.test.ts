/**
 * The `restore session summary` line as an operator's JSON reader sees it: every key once (a JSON
 * parser keeps only the last of a repeated key, so a second `pid` silently hid the first).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { restore, smallSnapshot, type Snapshot } from '../helpers/fault-case.js';
import { repoRoot } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/images.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

describe.skipIf(!hasUffd)(uffdSuite('serve session log'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let snap: Snapshot;
  beforeAll(async () => {
    tmp = tempDir('lazysnap-session-log-');
    snap = await smallSnapshot(tmp.dir);
  });
  afterAll(() => tmp.cleanup());

  it('the summary line names restoreId, the serve pid and the peer pid once each', async () => {
    const socket = path.join(tmp.dir, 'run', 'fc.sock');
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'cli/bin.ts', 'serve', '--socket', socket, '--store', snap.store, '--id', snap.id],
      {
        cwd: repoRoot,
        env: { ...process.env, LAZYSNAP_LOG_LEVEL: 'info' },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = once(child, 'exit');
    try {
      for (let t = 0; !err.includes('lazysnap: serving') && t < 300; t++)
        await new Promise((r) => setTimeout(r, 100));
      expect((await restore(socket, snap)).code).toBe(0);
      for (let t = 0; !err.includes('"restore session summary"') && t < 100; t++)
        await new Promise((r) => setTimeout(r, 100));
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
    const line = err.split('\n').find((l) => l.includes('"msg":"restore session summary"'));
    expect(line, err).toBeDefined();
    const count = (key: string) => line!.split(`"${key}":`).length - 1;
    expect({ restoreId: count('restoreId'), pid: count('pid'), peerPid: count('peerPid') }).toEqual({
      restoreId: 1,
      pid: 1,
      peerPid: 1,
    });
    const parsed = JSON.parse(line!) as { pid: number; peerPid: number; restoreId: string; outcome: string };
    expect(parsed.peerPid).not.toBe(parsed.pid);
    expect(parsed.restoreId).toMatch(/^vm-\d+-\d+$/);
    expect(parsed.outcome).toBe('ended');
  }, 60_000);
});
