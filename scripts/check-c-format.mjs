#!/usr/bin/env node
// Fails when a tracked C file differs from what clang-format (the repository's .clang-format) makes
// of it. Prints the files and the command that fixes them.
import { execFileSync, spawnSync } from 'node:child_process';

const files = execFileSync('git', ['ls-files', '*.c', '*.h'], { encoding: 'utf8' })
  .split('\n')
  .filter(Boolean);
const probe = spawnSync('clang-format', ['--version'], { encoding: 'utf8' });
if (probe.error) {
  console.error('check-c-format: clang-format is not installed (Debian: apt-get install clang-format)');
  process.exit(1);
}
const bad = files.filter((f) => {
  const r = spawnSync('clang-format', ['--dry-run', '--Werror', f], { encoding: 'utf8' });
  return r.status !== 0;
});
if (bad.length > 0) {
  console.error(`check-c-format: ${bad.length} file(s) need clang-format:\n  ${bad.join('\n  ')}`);
  console.error('fix with: clang-format -i ' + bad.join(' '));
  process.exit(1);
}
console.log(`check-c-format: ${files.length} C files formatted`);
