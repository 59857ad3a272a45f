/**
 * A worker thread terminated while it holds live fault sessions (attach()'s runtime worker, a worker
 * running serve): Node finalizes each session's thread-safe function during environment teardown, and
 * with two sessions the first one's memory is freed before the session finalizers run. A finalizer that
 * released the function again read freed memory (issue 11); the fault thread could call into it too.
 * The loop runs under valgrind, which sees the invalid access even inside Node's own code, and under
 * AddressSanitizer with the addon instrumented, which sees any in ours.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { buildAsanAddon, libasan } from '../helpers/asan.js';
import { repoRoot } from '../helpers/fixtures.js';
import { hasUffd, uffdSuite } from '../helpers/skip.js';

const script = path.join(repoRoot, 'test', 'fixtures', 'worker-terminate.mjs');
const addon = path.join(repoRoot, 'native', 'build', 'Release', 'lazysnap.node');

function hasValgrind(): boolean {
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const valgrindReason = hasValgrind() ? '' : 'valgrind is not installed (Debian: apt-get install valgrind)';
const asan = libasan();
const asanReason = asan ? '' : 'gcc has no AddressSanitizer runtime (libasan)';

describe.skipIf(!hasUffd)(uffdSuite('native: session lifetime when a worker is terminated'), () => {
  it.skipIf(valgrindReason !== '')(
    `terminating workers with two live sessions each: no invalid access (valgrind)${valgrindReason ? ` [SKIPPED: ${valgrindReason}]` : ''}`,
    () => {
      const r = spawnSync('valgrind', ['--error-exitcode=9', '-q', process.execPath, script, addon, '4'], {
        encoding: 'utf8',
        timeout: 240_000,
        killSignal: 'SIGKILL', // a stuck valgrind does not act on SIGTERM: fail, never hang the suite
      });
      const errors = r.stderr
        .split('\n')
        .filter((l) => /Invalid (read|write)|uninitialised|Process terminating/.test(l));
      expect(errors, r.stderr.slice(0, 4000)).toEqual([]);
      expect(r.status, r.stderr.slice(0, 4000)).toBe(0);
      expect(r.stdout.trim()).toBe('ok 4');
    },
    300_000,
  );

  it.skipIf(asanReason !== '')(
    `terminating workers with two live sessions each, 30 times: no invalid access (AddressSanitizer)${asanReason ? ` [SKIPPED: ${asanReason}]` : ''}`,
    () => {
      const built = buildAsanAddon();
      const r = spawnSync(process.execPath, [script, built, '30'], {
        encoding: 'utf8',
        timeout: 120_000,
        killSignal: 'SIGKILL',
        env: {
          ...process.env,
          LD_PRELOAD: asan,
          ASAN_OPTIONS: 'detect_leaks=0:verify_asan_link_order=0:abort_on_error=0',
        },
      });
      expect(r.stderr).not.toMatch(/AddressSanitizer/);
      expect(r.status, r.stderr.slice(0, 4000)).toBe(0);
      expect(r.stdout.trim()).toBe('ok 30');
    },
    150_000,
  );
});
