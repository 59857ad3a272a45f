import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface TestImage {
  path: string;
  bytes: Buffer;
  /** Indices of the chunks (at the chunk size given) that are all zero. */
  zeroChunks: number[];
}

/**
 * A random image of `size` bytes in which every chunk whose index is in `zeroChunks` (or every
 * `zeroEvery`-th chunk) is all zero, written to `dir`.
 */
export function makeImage(
  dir: string,
  size: number,
  chunkSize: number,
  opts: { zeroChunks?: number[]; zeroEvery?: number; name?: string } = {},
): TestImage {
  const bytes = randomBytes(size);
  const n = Math.ceil(size / chunkSize);
  const zero = new Set(opts.zeroChunks ?? []);
  if (opts.zeroEvery) for (let i = 0; i < n; i += opts.zeroEvery) zero.add(i);
  for (const i of zero) bytes.fill(0, i * chunkSize, Math.min(size, (i + 1) * chunkSize));
  const p = path.join(dir, opts.name ?? 'image.bin');
  writeFileSync(p, bytes);
  return { path: p, bytes, zeroChunks: [...zero].sort((a, b) => a - b) };
}

/** A private temp dir (0700 by mkdtemp) and its cleanup. */
export function tempDir(prefix = 'lazysnap-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
