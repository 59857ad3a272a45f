/**
 * `npm ci` (what CI runs) refuses a lockfile that lacks an entry for any optional dependency, even
 * one for another platform. The registry mirror on this project's machines carries only linux-x64
 * builds, so `npm install` here drops the other platforms' entries of packages such as
 * @napi-rs/blake-hash and leaves a lockfile that `npm ci` rejects. Keep them in (os/cpu marked, so
 * npm skips them); this test fails the moment an install strips them again.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { repoRoot } from '../helpers/fixtures.js';

describe('package-lock.json', () => {
  it('has an entry for every optional dependency of every locked package', () => {
    const lock = JSON.parse(readFileSync(path.join(repoRoot, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { optionalDependencies?: Record<string, string> }>;
    };
    const missing: string[] = [];
    for (const [key, pkg] of Object.entries(lock.packages)) {
      for (const dep of Object.keys(pkg.optionalDependencies ?? {})) {
        const nested = `${key}/node_modules/${dep}`;
        if (!lock.packages[nested] && !lock.packages[`node_modules/${dep}`])
          missing.push(`${dep} (of ${key || 'the root'})`);
      }
    }
    expect(missing).toEqual([]);
  });
});
