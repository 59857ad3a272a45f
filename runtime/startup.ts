/** What `serve` works out once before listening: the snapshot's index, and the kernel's abilities. */
import { KeyUnavailableError, NotFoundError, SignatureError, WrongKeyError } from '../core/errors.js';
import { closeFd, constants, createUffd, uffdApi } from '../native/index.js';
import type { StoreBackend } from '../store/backend.js';
import type { SnapshotIndex } from '../store/manifest.js';
import { loadIndex, type LoadIndexOptions } from '../store/reader.js';

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

/**
 * The manifest from the first store that has a valid one (a corrupt one in a single store is an
 * error). With a verify key, a store whose manifest is unsigned or wrongly signed is passed over
 * like a corrupt one; when no store has a well-signed manifest the error is a SignatureError, so
 * the refusal keeps its code. A key that is missing or wrong is the same for every store: thrown
 * at once.
 */
export async function loadFirst(
  stores: StoreBackend[],
  id: string,
  signal?: AbortSignal,
  options: LoadIndexOptions = {},
): Promise<SnapshotIndex> {
  const errors: string[] = [];
  let refused: SignatureError | undefined;
  for (const s of stores) {
    try {
      return await loadIndex(s, id, signal, options);
    } catch (e) {
      if (e instanceof KeyUnavailableError || e instanceof WrongKeyError) throw e;
      if (!(e instanceof NotFoundError) && stores.length === 1) throw e;
      if (e instanceof SignatureError) refused ??= e;
      errors.push(`${s.url}: ${(e as Error).message}`);
    }
  }
  if (refused)
    throw new SignatureError(
      id,
      refused.reason,
      `no store has a manifest signed by ${refused.expectedKey} (${errors.join('; ')})`,
      refused,
    );
  throw new NotFoundError(stores.map((s) => s.url).join(', '), `manifests/${id}.json (${errors.join('; ')})`);
}
