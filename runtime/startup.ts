/** What `serve` works out once before listening: the snapshot's index, and the kernel's abilities. */
import { NotFoundError } from '../core/errors.js';
import { closeFd, constants, createUffd, uffdApi } from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import type { SnapshotIndex } from '../store/manifest.js';
import { loadIndex } from '../store/reader.js';

/** Whether this kernel supports UFFDIO_POISON (6.6+); probed once, false when uffd is unavailable. */
export function kernelCanPoison(): boolean {
  try {
    const fd = createUffd();
    try {
      return (uffdApi(fd, 0n).features & constants().UFFD_FEATURE_POISON) !== 0n;
    } finally {
      closeFd(fd);
    }
  } catch {
    return false;
  }
}

/** The manifest from the first store that has it (a corrupt one in a single store is an error). */
export async function loadFirst(stores: StoreBackend[], id: string, signal?: AbortSignal): Promise<SnapshotIndex> {
  const errors: string[] = [];
  for (const s of stores) {
    try {
      return await loadIndex(s, id, signal);
    } catch (e) {
      if (!(e instanceof NotFoundError) && stores.length === 1) throw e;
      errors.push(`${s.url}: ${(e as Error).message}`);
    }
  }
  throw new NotFoundError(stores.map((s) => s.url).join(', '), `manifests/${id}.json (${errors.join('; ')})`);
}
