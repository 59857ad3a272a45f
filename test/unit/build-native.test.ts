/**
 * `npm ci` builds the addon against the headers of the Node that runs it, never downloading any.
 * This builds a copy of native/ with a Node that lives under an nvm-style prefix (a copy of this
 * Node binary in <tmp>/.nvm/versions/node/vX/bin with headers beside it) and checks that the build
 * used that prefix.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { repoRoot } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/images.js';

const headers = path.resolve(path.dirname(process.execPath), '..', 'include', 'node');

describe('native build', () => {
  it('derives --nodedir from process.execPath (nvm-style prefix), without network', () => {
    const tmp = tempDir();
    try {
      const prefix = path.join(tmp.dir, '.nvm', 'versions', 'node', process.version);
      mkdirSync(path.join(prefix, 'bin'), { recursive: true });
      mkdirSync(path.join(prefix, 'include'), { recursive: true });
      copyFileSync(process.execPath, path.join(prefix, 'bin', 'node'));
      symlinkSync(headers, path.join(prefix, 'include', 'node'));
      // A private project copy: the script, node-gyp from our node_modules, and the C sources.
      const proj = path.join(tmp.dir, 'proj');
      cpSync(path.join(repoRoot, 'scripts'), path.join(proj, 'scripts'), { recursive: true });
      cpSync(path.join(repoRoot, 'native', 'src'), path.join(proj, 'native', 'src'), { recursive: true });
      copyFileSync(path.join(repoRoot, 'native', 'binding.gyp'), path.join(proj, 'native', 'binding.gyp'));
      symlinkSync(path.join(repoRoot, 'node_modules'), path.join(proj, 'node_modules'));
      const r = spawnSync(path.join(prefix, 'bin', 'node'), ['scripts/build-native.mjs'], {
        cwd: proj,
        encoding: 'utf8',
        // No npm config may point elsewhere, and any download attempt must fail fast.
        env: {
          PATH: process.env.PATH,
          HOME: tmp.dir,
          npm_config_nodedir: '',
          https_proxy: 'http://127.0.0.1:9',
        },
      });
      expect(r.status, r.stderr).toBe(0);
      const config = readFileSync(path.join(proj, 'native', 'build', 'config.gypi'), 'utf8');
      expect(config).toContain(`"nodedir": "${prefix}"`);
      const built = spawnSync(
        path.join(prefix, 'bin', 'node'),
        [
          '-e',
          `const a = require(${JSON.stringify(path.join(proj, 'native', 'build', 'Release', 'lazysnap.node'))}); console.log(typeof a.uffdCreate)`,
        ],
        { encoding: 'utf8' },
      );
      expect(built.stdout.trim()).toBe('function');
    } finally {
      tmp.cleanup();
    }
  }, 180_000);

  it('fails with a clear message when the headers are missing', () => {
    const r = spawnSync(process.execPath, ['scripts/build-native.mjs'], {
      cwd: repoRoot,
      encoding: 'utf8',
      env: { ...process.env, LAZYSNAP_NODEDIR: '/nonexistent-prefix' },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Node headers not found at \/nonexistent-prefix\/include\/node\/node_api\.h/);
  });
});
