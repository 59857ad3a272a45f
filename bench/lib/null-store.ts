/**
 * A store that keeps nothing: has() is always false and put() only counts. With codec 'none' it
 * leaves exactly the snapshotter's own work (read, zero-detect, hash, dedup) on the clock.
 */
import type { ObjectInfo, ReadOptions, WriteOptions } from '../../store/backend.js';
import { NotFoundError } from '../../core/errors.js';
import { StoreBase } from '../../store/store-base.js';

export class NullStore extends StoreBase {
  readonly url = 'null://';
  readonly writable = true;
  puts = 0;
  protected async doGet(key: string, _o: ReadOptions): Promise<Buffer> {
    throw new NotFoundError(this.url, key);
  }
  protected async doPut(_key: string, _body: Buffer, _o: WriteOptions): Promise<void> {
    this.puts++;
  }
  protected async doHas(): Promise<boolean> {
    return false;
  }
  protected async doDelete(): Promise<void> {}
  protected async *doList(): AsyncIterable<ObjectInfo> {}
}
