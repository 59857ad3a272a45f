/**
 * Snapshot sources: where the memory image comes from. A source says how big the image is, how it
 * splits into regions, which byte ranges hold data, and reads bytes at an offset.
 *  - a full memory file (Firecracker `Full` snapshot or a raw image): holes read as zero;
 *  - a diff memory file (Firecracker `Diff`, a sparse file): holes mean "unchanged since the parent";
 *  - a live process (snapshotter/process-source.ts).
 */
import { open, type FileHandle } from 'node:fs/promises';

import { SourceError } from '../core/errors.js';
import { fileDataExtents } from '../native/index.js';
import type { Manifest, ManifestRegion } from '../store/manifest.js';

export interface MemorySource {
  readonly kind: Manifest['source']['kind'];
  readonly detail: string;
  readonly totalSize: number;
  readonly pageSize: 4096 | 2097152;
  readonly regions: readonly ManifestRegion[];
  /** Sorted, disjoint [start, end) ranges that hold data; elsewhere is zero or (diff) the parent's. */
  readonly dataRanges: readonly (readonly [number, number])[];
  /** True when ranges outside dataRanges keep the parent's bytes (diff snapshots). */
  readonly relativeToParent: boolean;
  /** Fills target with the image bytes at offset (target.length bytes, within the image). */
  read(offset: number, target: Buffer): Promise<void>;
  close(): Promise<void>;
}

export interface FileSourceOptions {
  /** Region sizes laid end to end (Firecracker: one per guest memory region). @default [file size] */
  regions?: number[];
  pageSize?: 4096 | 2097152;
  /** The file is a Firecracker diff snapshot: holes are unchanged pages, not zero pages. */
  diff?: boolean;
}

class FileSource implements MemorySource {
  readonly kind: 'memory-file' | 'diff-file';
  readonly detail: string;
  readonly totalSize: number;
  readonly pageSize: 4096 | 2097152;
  readonly regions: ManifestRegion[];
  readonly dataRanges: [number, number][];
  readonly relativeToParent: boolean;
  readonly #fh: FileHandle;

  constructor(
    path: string,
    fh: FileHandle,
    size: number,
    extents: [number, number][],
    opts: FileSourceOptions,
  ) {
    this.#fh = fh;
    this.detail = path;
    this.totalSize = size;
    this.pageSize = opts.pageSize ?? 4096;
    this.relativeToParent = opts.diff ?? false;
    this.kind = this.relativeToParent ? 'diff-file' : 'memory-file';
    let off = 0;
    this.regions = (opts.regions ?? [size]).map((s) => {
      const r = { offset: off, size: s };
      off += s;
      return r;
    });
    if (off !== size)
      throw new SourceError(
        `${path}: region sizes add up to ${off} bytes but the file has ${size}`,
        undefined,
        { input: true },
      );
    for (const r of this.regions) {
      if (r.size <= 0 || r.size % this.pageSize)
        throw new SourceError(
          `${path}: region size ${r.size} is not a positive multiple of the page size ${this.pageSize}`,
          undefined,
          { input: true },
        );
    }
    // Extents are filesystem-block aligned; widen them to pages so a page is never half-read.
    const ps = this.pageSize;
    this.dataRanges = [];
    for (const [s, e] of extents) {
      const a = Math.floor(s / ps) * ps;
      const b = Math.min(size, Math.ceil(e / ps) * ps);
      const last = this.dataRanges[this.dataRanges.length - 1];
      if (last && a <= last[1]) last[1] = Math.max(last[1], b);
      else this.dataRanges.push([a, b]);
    }
  }

  async read(offset: number, target: Buffer): Promise<void> {
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await this.#fh.read(target, done, target.length - done, offset + done);
      if (bytesRead === 0)
        throw new SourceError(
          `${this.detail}: unexpected end of file at ${offset + done} (the file shrank while being read?)`,
        );
      done += bytesRead;
    }
  }

  close(): Promise<void> {
    return this.#fh.close();
  }
}

/** Opens a memory file (full, or sparse diff with options.diff) as a snapshot source. */
export async function openMemoryFile(path: string, options: FileSourceOptions = {}): Promise<MemorySource> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message;
    throw new SourceError(`cannot open memory file ${path}: ${why}`, e, { input: true });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new SourceError(`${path} is not a regular file`, undefined, { input: true });
    if (st.size === 0) throw new SourceError(`${path} is empty`, undefined, { input: true });
    const ps = options.pageSize ?? 4096;
    if (st.size % ps)
      throw new SourceError(`${path}: size ${st.size} is not a multiple of the page size ${ps}`, undefined, {
        input: true,
      });
    return new FileSource(path, fh, st.size, fileDataExtents(fh.fd), options);
  } catch (e) {
    await fh.close();
    throw e;
  }
}
