/**
 * Working-set profiles (profiles/<id>): the chunks a restore needed, in the order it first needed
 * them. Recording keeps each chunk's first-touch time since the session started; recordings merge
 * into one profile (the union, each chunk at the mean of its first-touch times, ordered by it), so
 * the profile converges on the typical order. Replay fetches the profile's chunks in that order
 * ahead of the faults (REAP, FaaSnap). Zero chunks never enter a profile: they cost no fetch.
 */
import { ProfileError } from '../core/errors.js';

export const PROFILE_FORMAT = 'lazysnap-profile/1';

export interface ProfileEntry {
  chunk: number;
  /** Mean first-touch time over the recordings that touched the chunk, ms since session start. */
  t: number;
  /** Recordings that touched it. */
  n: number;
}

export interface Profile {
  format: string;
  id: string;
  chunkSize: number;
  totalSize: number;
  recordings: number;
  updatedAt: string;
  /** Ordered by t. */
  chunks: ProfileEntry[];
}

export interface ProfileShape {
  id: string;
  chunkSize: number;
  totalSize: number;
  chunks: number;
}

/** Collects one session's first touches. */
export class Recorder {
  readonly #t0: number;
  readonly #first = new Map<number, number>();
  readonly #idleMs: number;
  readonly #save: (first: Map<number, number>) => void;
  #timer: NodeJS.Timeout | undefined;
  #saved = false;
  /** `save` gets the recording once: when no new chunk was touched for idleMs, or at finish(). */
  constructor(t0: number, idleMs: number, save: (first: Map<number, number>) => void) {
    this.#t0 = t0;
    this.#idleMs = idleMs;
    this.#save = save;
  }
  touch(chunk: number): void {
    if (this.#saved || this.#first.has(chunk)) return;
    this.#first.set(chunk, performance.now() - this.#t0);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.finish(), this.#idleMs);
    this.#timer.unref();
  }
  get size(): number {
    return this.#first.size;
  }
  /** Saves the recording now unless it was saved already or is empty. */
  finish(): void {
    if (this.#saved || this.#first.size === 0) return;
    this.#saved = true;
    clearTimeout(this.#timer);
    this.#save(new Map(this.#first));
  }
}

/** Folds one recording into a profile (or starts one). */
export function mergeProfile(
  base: Profile | undefined,
  recording: Map<number, number>,
  shape: ProfileShape,
): Profile {
  const byChunk = new Map<number, ProfileEntry>((base?.chunks ?? []).map((e) => [e.chunk, { ...e }]));
  for (const [chunk, t] of recording) {
    const e = byChunk.get(chunk);
    if (e) {
      e.t = (e.t * e.n + t) / (e.n + 1);
      e.n++;
    } else byChunk.set(chunk, { chunk, t, n: 1 });
  }
  const chunks = [...byChunk.values()].sort((a, b) => a.t - b.t || a.chunk - b.chunk);
  return {
    format: PROFILE_FORMAT,
    id: shape.id,
    chunkSize: shape.chunkSize,
    totalSize: shape.totalSize,
    recordings: (base?.recordings ?? 0) + 1,
    updatedAt: new Date().toISOString(),
    chunks,
  };
}

export function serializeProfile(p: Profile): Buffer {
  return Buffer.from(`${JSON.stringify(p)}\n`);
}

/** Parses and checks a profile against the snapshot it is for. */
export function parseProfile(text: Buffer, shape: ProfileShape): Profile {
  let p: Profile;
  try {
    p = JSON.parse(text.toString('utf8')) as Profile;
  } catch {
    throw new ProfileError('not JSON');
  }
  if (p === null || typeof p !== 'object' || !/^lazysnap-profile\/1(\.\d+)?$/.test(String(p.format)))
    throw new ProfileError(`format ${JSON.stringify(p?.format)} is not ${PROFILE_FORMAT}`);
  if (p.id !== shape.id || p.chunkSize !== shape.chunkSize || p.totalSize !== shape.totalSize) {
    throw new ProfileError(
      `recorded for ${p.id} (${p.totalSize} bytes in ${p.chunkSize}-byte chunks), not for this snapshot`,
    );
  }
  if (!Array.isArray(p.chunks) || !Number.isSafeInteger(p.recordings))
    throw new ProfileError('chunks must be an array and recordings a count');
  const seen = new Set<number>();
  for (const e of p.chunks) {
    if (
      !Number.isSafeInteger(e?.chunk) ||
      e.chunk < 0 ||
      e.chunk >= shape.chunks ||
      seen.has(e.chunk) ||
      typeof e.t !== 'number' ||
      !Number.isSafeInteger(e.n)
    ) {
      throw new ProfileError(
        `entry ${JSON.stringify(e)} is not a distinct chunk below ${shape.chunks} with t and n`,
      );
    }
    seen.add(e.chunk);
  }
  return p;
}
