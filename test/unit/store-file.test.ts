import { readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { FileStore } from '../../store/file-store.js';
import { tempDir } from '../helpers/images.js';
import { storeContract } from '../helpers/store-contract.js';

storeContract('directory', async () => {
  const tmp = tempDir();
  const store = new FileStore(tmp.dir);
  return { store, seed: (k, b) => store.put(k, b), cleanup: async () => tmp.cleanup() };
});

describe('directory store specifics', () => {
  it('leaves no temp file behind and ignores foreign temp files when listing', async () => {
    const tmp = tempDir();
    try {
      const store = new FileStore(tmp.dir);
      await store.put('manifests/a.json', Buffer.from('{}'));
      expect(readdirSync(path.join(tmp.dir, 'manifests'))).toEqual(['a.json']);
      mkdirSync(path.join(tmp.dir, 'chunks', 'ab'), { recursive: true });
      writeFileSync(path.join(tmp.dir, 'chunks', 'ab', 'x.tmp-1-abcd'), 'partial');
      const keys = [];
      for await (const o of store.list('')) keys.push(o.key);
      expect(keys).toEqual(['manifests/a.json']);
      expect(store.url).toBe(`file://${tmp.dir}`);
    } finally {
      tmp.cleanup();
    }
  });
});
