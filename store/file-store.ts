/**
 * A store in a local directory. Writes go to a temp file in the target directory and are renamed
 * into place, so readers never see a partial object and an interrupted snapshot leaves only temp
 * files (which list() ignores and gc removes). Manifests are also fsynced, file and directory,
 * because a manifest is the commit point of a snapshot: it must not survive a crash that its
 * chunks do not. Chunks are not fsynced one by one (that would cost more than the snapshot);
 * the manifest's fsync follows theirs being written, and the kernel orders neither, so a crash
 * can lose chunks of a snapshot whose manifest did not reach the disk either.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { NotFoundError, StoreError } from '../core/errors.js';
import type { ObjectInfo, ReadOptions, WriteOptions } from './backend.js';
import { StoreBase } from './store-base.js';

const TEMP_MARK = '.tmp-';

export class FileStore extends StoreBase {
  readonly url: string;
  readonly writable = true;
  readonly root: string;
  /** Directories known to exist: chunks fan out over 256 of them, one mkdir each is enough. */
  readonly #dirs = new Set<string>();

  constructor(root: string) {
    super();
    this.root = path.resolve(root);
    this.url = pathToFileURL(this.root).href;
  }

  #path(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  #wrap(key: string, e: unknown): never {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(this.url, key, e);
    if ((e as Error).name === 'AbortError') throw e;
    throw new StoreError(this.url, key, (e as Error).message, { cause: e, retryable: false });
  }

  protected async doGet(key: string, { signal }: ReadOptions): Promise<Buffer> {
    try {
      return await readFile(this.#path(key), { signal });
    } catch (e) {
      this.#wrap(key, e);
    }
  }

  protected async doPut(key: string, body: Buffer, { signal }: WriteOptions): Promise<void> {
    const dest = this.#path(key);
    const tmp = `${dest}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`;
    const durable = key.startsWith('manifests/');
    try {
      const dir = path.dirname(dest);
      if (!this.#dirs.has(dir)) {
        await mkdir(dir, { recursive: true });
        this.#dirs.add(dir);
      }
      const fh = await open(tmp, 'w', 0o644);
      try {
        await fh.writeFile(body, { signal });
        if (durable) await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, dest);
      if (durable) {
        const dir = await open(path.dirname(dest), constants.O_RDONLY | constants.O_DIRECTORY);
        try {
          await dir.sync();
        } finally {
          await dir.close();
        }
      }
    } catch (e) {
      await unlink(tmp).catch(() => {});
      this.#wrap(key, e);
    }
  }

  protected async doHas(key: string): Promise<boolean> {
    try {
      return (await stat(this.#path(key))).isFile();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      this.#wrap(key, e);
    }
  }

  protected async doDelete(key: string): Promise<void> {
    try {
      await unlink(this.#path(key));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.#wrap(key, e);
    }
  }

  protected async *doList(prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    // Walk from the deepest directory the prefix names, then filter by the full prefix.
    const dirPart = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const stack = [dirPart];
    while (stack.length) {
      signal?.throwIfAborted();
      const rel = stack.pop()!;
      let entries;
      try {
        entries = await readdir(path.join(this.root, ...rel.split('/').filter(Boolean)), {
          withFileTypes: true,
        });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        this.#wrap(rel || '.', e);
      }
      for (const ent of entries) {
        const key = rel ? `${rel}/${ent.name}` : ent.name;
        if (ent.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) stack.push(key);
        } else if (ent.isFile() && key.startsWith(prefix) && !ent.name.includes(TEMP_MARK)) {
          const st = await stat(path.join(this.root, ...key.split('/')));
          yield { key, size: st.size, mtimeMs: st.mtimeMs };
        }
      }
    }
  }

  /** Temp files left by interrupted writes (for gc). */
  static isTemp(name: string): boolean {
    return name.includes(TEMP_MARK);
  }
}
