/**
 * A live process as a snapshot source: its private writable mappings (heap, stack, anonymous
 * memory, .data/.bss), laid end to end as regions that remember their original addresses. The
 * process is held with SIGSTOP from before /proc/PID/maps is read until close(), so the mappings and
 * their bytes do not change under the copy; bytes are read with process_vm_readv (ptrace access:
 * root or the same user under Yama scope 0/1 with a parent relationship).
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

import { InvalidArgumentError, SourceError, isSystemError } from '../core/errors.js';
import { kill, processVmRead } from '../native/index.js';
import type { ManifestRegion } from '../store/manifest.js';
import type { MemorySource } from './source.js';

export interface Mapping {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
}

/** Parses /proc/PID/maps text. */
export function parseMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (m)
      out.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), perms: m[3]!, path: m[4]!.trim() });
  }
  return out;
}

/**
 * Whether a mapping is snapshot material: private and writable (what a restore must bring back;
 * read-only and shared mappings come from files), minus the kernel's special mappings. Filters,
 * when given, narrow further: 'heap', 'stack', 'anon', a path substring, or an address range
 * "0xSTART-0xEND" that the mapping overlaps.
 */
/**
 * The parts of a mapping to snapshot. Only private writable mappings qualify (code, read-only data
 * and shared memory are not the process's own state). With no filters, all of each; `heap`,
 * `stack`, `anon` or a path substring select whole mappings; an address range `0xA-0xB` selects
 * just the part of a mapping inside it, so one object (a WebAssembly memory, an arena) can be
 * snapshot on its own even where the kernel merged its mapping with a neighbour.
 */
export function selectRanges(m: Mapping, filters: readonly string[] = []): Array<[bigint, bigint]> {
  if (m.perms[1] !== 'w' || m.perms[3] !== 'p' || /^\[(vvar|vdso|vsyscall)/.test(m.path)) return [];
  if (filters.length === 0) return [[m.start, m.end]];
  const ranges: Array<[bigint, bigint]> = [];
  for (const f of filters) {
    const r = /^0x([0-9a-f]+)-0x([0-9a-f]+)$/i.exec(f);
    if (r) {
      const lo = BigInt(`0x${r[1]}`);
      const hi = BigInt(`0x${r[2]}`);
      if (m.start < hi && lo < m.end) ranges.push([lo > m.start ? lo : m.start, hi < m.end ? hi : m.end]);
    } else if (
      (f === 'heap' && m.path === '[heap]') ||
      (f === 'stack' && m.path === '[stack]') ||
      (f === 'anon' && m.path === '') ||
      (!['heap', 'stack', 'anon'].includes(f) && m.path.includes(f))
    ) {
      return [[m.start, m.end]];
    }
  }
  return ranges.sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

/** Validates --maps filters: address ranges must be page-aligned and non-empty. */
export function assertMapFilters(filters: readonly string[]): void {
  for (const f of filters) {
    const r = /^0x([0-9a-f]+)-0x([0-9a-f]+)$/i.exec(f);
    if (r) {
      const lo = BigInt(`0x${r[1]}`);
      const hi = BigInt(`0x${r[2]}`);
      if (lo >= hi || lo % 4096n || hi % 4096n)
        throw new InvalidArgumentError('maps', 'address ranges 0xSTART-0xEND, page-aligned, START < END', f);
    } else if (f === '' || f.startsWith('0x'))
      throw new InvalidArgumentError('maps', 'heap, stack, anon, a path substring or 0xSTART-0xEND', f);
  }
}

async function waitStopped(pid: number, signal?: AbortSignal): Promise<void> {
  for (let i = 0; i < 500; i++) {
    signal?.throwIfAborted();
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'T' || state === 't') return;
    await sleep(2);
  }
  throw new SourceError(`process ${pid} did not stop within 1 s of SIGSTOP`);
}

export interface ProcessSourceOptions {
  filters?: string[];
  signal?: AbortSignal;
}

export async function openProcess(pid: number, options: ProcessSourceOptions = {}): Promise<MemorySource> {
  if (options.filters) assertMapFilters(options.filters);
  try {
    kill(pid, 'SIGSTOP');
  } catch (e) {
    const why =
      isSystemError(e) && e.code === 'ESRCH'
        ? 'no such process'
        : isSystemError(e) && e.code === 'EPERM'
          ? 'permission denied'
          : (e as Error).message;
    throw new SourceError(`cannot snapshot process ${pid}: ${why}`, e, { input: true });
  }
  const resume = () => {
    try {
      kill(pid, 'SIGCONT');
    } catch {
      // It exited meanwhile: nothing to resume.
    }
  };
  try {
    await waitStopped(pid, options.signal);
    const maps = parseMaps(await readFile(`/proc/${pid}/maps`, 'utf8')).flatMap((m) =>
      selectRanges(m, options.filters).map(([start, end]) => ({ start, end })),
    );
    if (maps.length === 0)
      throw new SourceError(
        `process ${pid} has no private writable mappings${options.filters?.length ? ` matching ${options.filters.join(',')}` : ''}`,
      );
    let off = 0;
    const regions: ManifestRegion[] = maps.map((m) => {
      const size = Number(m.end - m.start);
      const r = { offset: off, size, address: `0x${m.start.toString(16)}` };
      off += size;
      return r;
    });
    const total = off;
    const detail = `pid ${pid}`;
    return {
      kind: 'process',
      detail,
      totalSize: total,
      pageSize: 4096,
      regions,
      dataRanges: [[0, total]],
      relativeToParent: false,
      async read(offset: number, target: Buffer): Promise<void> {
        let done = 0;
        // Regions are few (tens to hundreds); a linear scan per chunk is cheaper than an index.
        for (let i = 0; i < regions.length && done < target.length; i++) {
          const r = regions[i]!;
          const pos = offset + done;
          if (pos >= r.offset + r.size) continue;
          const n = Math.min(target.length - done, r.offset + r.size - pos);
          const addr = maps[i]!.start + BigInt(pos - r.offset);
          const got = processVmRead(pid, addr, target.subarray(done, done + n));
          if (got !== n)
            throw new SourceError(`${detail}: only ${got} of ${n} bytes readable at 0x${addr.toString(16)}`);
          done += n;
        }
        if (done !== target.length)
          throw new SourceError(`${detail}: read past the end of the image at ${offset}`);
      },
      async close(): Promise<void> {
        resume();
      },
    };
  } catch (e) {
    resume();
    if (e instanceof SourceError) throw e;
    throw new SourceError(`cannot snapshot process ${pid}: ${(e as Error).message}`, e);
  }
}
