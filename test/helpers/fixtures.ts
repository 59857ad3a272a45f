/**
 * Builds the C fixtures (the Firecracker-exact client and friends) with gcc, once per source change,
 * into test/fixtures/bin/ (git-ignored). Tests and benchmarks share it.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Compiles `src` (relative to the repo root) to an executable and returns its path; rebuilt when
 * the source or any of `deps` (e.g. headers it includes) is newer than the binary.
 */
export function buildC(
  src: string,
  name = path.basename(src, '.c'),
  extra: string[] = [],
  deps: string[] = [],
): string {
  const source = path.join(repoRoot, src);
  const newest = Math.max(...[src, ...deps].map((f) => statSync(path.join(repoRoot, f)).mtimeMs));
  const outDir = path.join(repoRoot, 'test', 'fixtures', 'bin');
  const out = path.join(outDir, name);
  mkdirSync(outDir, { recursive: true });
  if (!existsSync(out) || statSync(out).mtimeMs < newest) {
    execFileSync(
      'gcc',
      ['-O2', '-Wall', '-Wextra', '-Werror', '-pthread', '-o', `${out}.tmp`, source, ...extra],
      {
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    execFileSync('mv', ['-f', `${out}.tmp`, out]);
  }
  return out;
}

export function fcClientPath(): string {
  return buildC('test/fixtures/fc-client.c');
}

/** The line-oriented raw handshake sender (arbitrary payloads and fds, many cases per process). */
export function rawHandshakePath(): string {
  return buildC('test/fixtures/raw-handshake.c');
}

/** The scriptable peer of the reliability suites (VMA splits, balloon, SIGBUS per page). */
export function uffdPeerPath(): string {
  return buildC('test/fixtures/uffd-peer.c');
}
