/** Where working-set profiles are read from and saved to: the serve process's stores. */
import { NotFoundError, ProfileError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { StoreBackend } from '../store/backend.js';
import { profileKey } from '../store/keys.js';
import { mergeProfile, parseProfile, serializeProfile, type Profile, type ProfileShape } from './profile.js';

/**
 * The working-set profile from the first store that has one; undefined when none does. A profile
 * that does not fit the snapshot is reported through `warn` and ignored: replay is an optimization.
 */
export async function loadProfile(
  stores: StoreBackend[],
  shape: ProfileShape,
  warn: (msg: string) => void,
  signal?: AbortSignal,
): Promise<Profile | undefined> {
  for (const s of stores) {
    try {
      return parseProfile(await s.get(profileKey(shape.id), { ...(signal ? { signal } : {}) }), shape);
    } catch (e) {
      if (e instanceof ProfileError) warn(`${s.url}: ${e.message}`);
      else if (!(e instanceof NotFoundError))
        warn(`${s.url}: cannot read the profile: ${(e as Error).message}`);
    }
  }
  return undefined;
}

/**
 * Saves recordings one at a time (read the stored profile, merge, write) to the first writable
 * store, so recordings of this process never overwrite each other. Two processes recording at the
 * same moment can still lose one recording (last write wins): a profile is an optimization.
 */
export function profileSaver(stores: StoreBackend[], shape: ProfileShape, log: Logger) {
  const target = stores.find((s) => s.writable);
  let chain = Promise.resolve();
  return {
    save: (first: Map<number, number>): void => {
      if (!target) {
        log.warn('no writable store to save the working-set profile to (HTTP origins are read-only)');
        return;
      }
      chain = chain
        .then(async () => {
          let base;
          try {
            base = parseProfile(await target.get(profileKey(shape.id)), shape);
          } catch (e) {
            if (!(e instanceof NotFoundError))
              log.warn({ err: (e as Error).message }, 'replacing an unreadable profile');
          }
          const merged = mergeProfile(base, first, shape);
          await target.put(profileKey(shape.id), serializeProfile(merged));
          log.info(
            { chunks: merged.chunks.length, recordings: merged.recordings, recorded: first.size },
            'working-set profile saved',
          );
        })
        .catch((e: unknown) =>
          log.warn({ err: (e as Error).message }, 'saving the working-set profile failed'),
        );
    },
    idle: () => chain,
  };
}
