/**
 * A store in a local directory. Writes go to a temp file in the target directory and are renamed
 * into place, so readers never see a partial object and an interrupted snapshot leaves only temp
 * files (which list() ignores, and gc removes once they are older than its grace period). Manifests are also fsynced, file and directory,
 * because a manifest is the commit point of a snapshot: it must not survive a crash that its
 * chunks do not. Chunks are not fsynced one by one (that would cost more than the snapshot);
 * the manifest's fsync follows theirs being written, and the kernel orders neither, so a crash
 * can lose chunks of a snapshot whose manifest did not reach the disk either.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readdir, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { makeDirs } from '../core/make-dirs.js';
import { IntegrityError, InvalidArgumentError, NotFoundError, StoreError } from '../core/errors.js';
import type { ObjectInfo, ReadOptions, WriteOptions } from './backend.js';
import { StoreBase, tooLong } from './store-base.js';
import { assertKey } from './keys.js';

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

  localPath(key: string): string {
    assertKey(key);
    return this.#path(key);
  }

  #wrap(key: string, e: unknown): never {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(this.url, key, e);
    if ((e as Error).name === 'AbortError') throw e;
    throw new StoreError(this.url, key, (e as Error).message, { cause: e, retryable: false });
  }

  protected async doGet(
    key: string,
    { maxBytes = Infinity, signal, onAnswer }: ReadOptions,
  ): Promise<Buffer> {
    try {
      const fh = await open(this.#path(key), constants.O_RDONLY);
      onAnswer?.();
      try {
        // The size of the open file, not of the path: a rename in between cannot swap it.
        const { size } = await fh.stat();
        if (size > maxBytes) throw tooLong(key, maxBytes, size, true);
        // Exactly `size` bytes, never more: a file someone grows in place (store writes rename
        // whole files into place, so only a foreign writer) cannot make this read past maxBytes.
        const buf = Buffer.allocUnsafe(size);
        let n = 0;
        while (n < size) {
          signal?.throwIfAborted();
          const { bytesRead } = await fh.read(buf, n, size - n, n);
          if (bytesRead === 0) break; // shrunk since fstat
          n += bytesRead;
        }
        signal?.throwIfAborted();
        return buf.subarray(0, n);
      } finally {
        await fh.close();
      }
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (e instanceof IntegrityError) throw e;
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
        await makeDirs(dir);
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

  protected doList(prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    return this.#walk(prefix, false, signal);
  }

  /**
   * The temp files writes left behind, keys and all, for gc: a writer that crashed or was killed
   * leaves one. A write in progress has one too, younger than any grace period gc gives.
   */
  listTemp(signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    signal?.throwIfAborted();
    return this.#walk('', true, signal);
  }

  /** Removes a temp file that listTemp() found; one already gone is not an error. */
  async deleteTemp(key: string): Promise<void> {
    assertKey(key);
    if (!FileStore.isTemp(key.slice(key.lastIndexOf('/') + 1)))
      throw new InvalidArgumentError('key', 'the key of a temp file (from listTemp)', key);
    await this.doDelete(key);
  }

  /** The objects (or, with `temp`, the temp files) whose keys start with prefix. */
  async *#walk(prefix: string, temp: boolean, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
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
        } else if (ent.isFile() && key.startsWith(prefix) && FileStore.isTemp(ent.name) === temp) {
          const st = await stat(path.join(this.root, ...key.split('/')));
          yield { key, size: st.size, mtimeMs: st.mtimeMs };
        }
      }
    }
  }

  /** Whether a file name is a write's temp file rather than an object. */
  static isTemp(name: string): boolean {
    return name.includes(TEMP_MARK);
  }
}
