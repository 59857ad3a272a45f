/**
 * A memory cgroup for one test process, with a limit: cgroup v2 where the memory controller is there,
 * else v1 (machines whose memory controller is still on the v1 hierarchy). `reason` says why none could
 * be made (no root, no writable hierarchy), for a visible skip.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface MemoryCgroup {
  dir: string;
  version: 1 | 2;
  /** Moves a process into the group (its later allocations are charged here). */
  add(pid: number): void;
  /** Bytes charged now. */
  usage(): number;
  /**
   * v1 only: turns the group's OOM killer off, so a charge over the limit fails (a UFFDIO_COPY gets
   * ENOMEM) instead of killing a member. False where that cannot be done (v2 has no such switch).
   */
  disableOomKiller(): boolean;
  /**
   * How many members the kernel's OOM killer has killed in this group (v1 memory.oom_control,
   * v2 memory.events `oom_kill`): tells a kernel kill from any other SIGKILL. NaN where not reported.
   */
  oomKills(): number;
  remove(): void;
}

function v2Base(): string | undefined {
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    try {
      if (readFileSync(path.join(root, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('memory'))
        return root;
    } catch {
      // No cgroup v2 hierarchy at this root: try the next.
    }
  }
  return undefined;
}

function v1Base(): string | undefined {
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l));
  if (!line) return undefined;
  const dir = path.join('/sys/fs/cgroup/memory', line.slice(line.lastIndexOf(':') + 1));
  return existsSync(path.join(dir, 'memory.limit_in_bytes')) ? dir : undefined;
}

export function memoryCgroup(name: string, limitBytes: number): MemoryCgroup | { reason: string } {
  const v2 = v2Base();
  const base = v2 ?? v1Base();
  if (!base)
    return {
      reason: 'no memory cgroup hierarchy (v2 memory controller or v1 memory mount) to create a group in',
    };
  const dir = path.join(base, `${name}-${process.pid}`);
  try {
    mkdirSync(dir);
    if (v2) writeFileSync(path.join(dir, 'memory.max'), String(limitBytes));
    else writeFileSync(path.join(dir, 'memory.limit_in_bytes'), String(limitBytes));
  } catch (e) {
    try {
      rmdirSync(dir);
    } catch {
      // Never created: the error below is the one that matters.
    }
    return { reason: `cannot create a memory cgroup under ${base}: ${(e as Error).message}` };
  }
  return {
    dir,
    version: v2 ? 2 : 1,
    add: (pid) => writeFileSync(path.join(dir, 'cgroup.procs'), String(pid)),
    disableOomKiller: () => {
      if (v2) return false;
      try {
        writeFileSync(path.join(dir, 'memory.oom_control'), '1');
        return true;
      } catch {
        return false;
      }
    },
    oomKills: () => {
      try {
        const text = readFileSync(path.join(dir, v2 ? 'memory.events' : 'memory.oom_control'), 'utf8');
        return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? NaN);
      } catch {
        return NaN;
      }
    },
    usage: () =>
      Number(readFileSync(path.join(dir, v2 ? 'memory.current' : 'memory.usage_in_bytes'), 'utf8')),
    remove: () => {
      try {
        rmdirSync(dir);
      } catch {
        // Already removed, or still busy: a test cgroup left behind is harmless.
      }
    },
  };
}
