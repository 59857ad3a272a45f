/**
 * makeDirs: mkdir -p that fails where Node's recursive mkdir spins forever (a directory under /proc), and
 * otherwise answers as it does (the first directory created, or undefined when it existed).
 */
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { makeDirs, makeDirsSync } from '../../core/make-dirs.js';
import { tempDir } from '../helpers/images.js';

let tmp: ReturnType<typeof tempDir> | undefined;
afterEach(() => tmp?.cleanup());

describe.each([
  ['makeDirs', (d: string, m?: number) => makeDirs(d, m)],
  ['makeDirsSync', (d: string, m?: number) => Promise.resolve().then(() => makeDirsSync(d, m))],
] as const)('%s', (_, make) => {
  it('creates every missing level with the mode and returns the first one made', async () => {
    tmp = tempDir();
    const leaf = path.join(tmp.dir, 'a', 'b', 'c');
    expect(await make(leaf, 0o700)).toBe(path.join(tmp.dir, 'a'));
    expect(statSync(leaf).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(tmp.dir, 'a')).mode & 0o777).toBe(0o700);
    expect(await make(leaf, 0o700)).toBeUndefined();
  });

  it('refuses a file in the way', async () => {
    tmp = tempDir();
    const file = path.join(tmp.dir, 'f');
    writeFileSync(file, '');
    await expect(make(file)).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(make(path.join(file, 'sub'))).rejects.toMatchObject({ code: 'ENOTDIR' });
  });

  it('fails, rather than hangs, where the filesystem will not create a directory (procfs)', async () => {
    await expect(make('/proc/lazysnap-no-such/dir', 0o700)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(make('/proc/lazysnap-no-such', 0o700)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('creates a directory under one that exists', async () => {
    tmp = tempDir();
    mkdirSync(path.join(tmp.dir, 'x'));
    expect(await make(path.join(tmp.dir, 'x', 'y'))).toBe(path.join(tmp.dir, 'x', 'y'));
  });
});
