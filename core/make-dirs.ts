/**
 * `mkdir -p` that cannot hang. Node's own recursive mkdir (fs.mkdir and mkdirSync with `recursive`)
 * loops forever when a filesystem answers ENOENT for a directory it will not create: a `--trace-dir`,
 * `--cache-dir` or `--socket` under /proc or /sys hung serve at start instead of failing. Here each
 * level is created once, parents first, and a second ENOENT is the answer.
 *
 * Both return what Node's recursive mkdir returns: the first directory created, or undefined when the
 * directory existed already. An existing file in the way is an EEXIST (or ENOTDIR) error.
 */
import { mkdirSync, statSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';

const code = (e: unknown) => (e as NodeJS.ErrnoException).code;

export async function makeDirs(dir: string, mode = 0o777): Promise<string | undefined> {
  const target = path.resolve(dir);
  try {
    await mkdir(target, { mode });
    return target;
  } catch (e) {
    if (code(e) === 'EEXIST' && (await stat(target)).isDirectory()) return undefined;
    if (code(e) !== 'ENOENT' || path.dirname(target) === target) throw e;
  }
  const first = await makeDirs(path.dirname(target), mode);
  try {
    await mkdir(target, { mode });
  } catch (e) {
    // Another process may have made it meanwhile; anything else (a second ENOENT included) is final.
    if (code(e) !== 'EEXIST' || !(await stat(target)).isDirectory()) throw e;
  }
  return first ?? target;
}

export function makeDirsSync(dir: string, mode = 0o777): string | undefined {
  const target = path.resolve(dir);
  try {
    mkdirSync(target, { mode });
    return target;
  } catch (e) {
    if (code(e) === 'EEXIST' && statSync(target).isDirectory()) return undefined;
    if (code(e) !== 'ENOENT' || path.dirname(target) === target) throw e;
  }
  const first = makeDirsSync(path.dirname(target), mode);
  try {
    mkdirSync(target, { mode });
  } catch (e) {
    if (code(e) !== 'EEXIST' || !statSync(target).isDirectory()) throw e;
  }
  return first ?? target;
}
