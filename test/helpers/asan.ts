/**
 * The addon's sources built with AddressSanitizer, for memory-safety tests of the native layer. Built
 * into test/fixtures/bin (git-ignored), never into the package; loaded by a child Node started with
 * libasan preloaded (ASan must be the first library in the process).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

import { repoRoot } from './fixtures.js';

/** libasan's path, or undefined when the toolchain has none. */
export function libasan(): string | undefined {
  try {
    const p = execFileSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
    return path.isAbsolute(p) && existsSync(p) ? p : undefined;
  } catch {
    return undefined;
  }
}

export function buildAsanAddon(): string {
  const src = path.join(repoRoot, 'native', 'src');
  const files = readdirSync(src)
    .filter((f) => f.endsWith('.c'))
    .map((f) => path.join(src, f));
  const out = path.join(repoRoot, 'test', 'fixtures', 'bin', 'lazysnap_asan.node');
  const newest = Math.max(...readdirSync(src).map((f) => statSync(path.join(src, f)).mtimeMs));
  if (existsSync(out) && statSync(out).mtimeMs >= newest) return out;
  const nodeInclude = path.join(path.dirname(process.execPath), '..', 'include', 'node');
  execFileSync(
    'gcc',
    [
      '-shared',
      '-fPIC',
      '-std=gnu11',
      '-O1',
      '-g',
      '-fsanitize=address',
      '-fno-omit-frame-pointer',
      '-Wall',
      '-Wextra',
      '-Wno-unused-parameter',
      '-DNAPI_VERSION=8',
      '-D_GNU_SOURCE',
      '-pthread',
      `-I${nodeInclude}`,
      '-o',
      out,
      ...files,
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  return out;
}
