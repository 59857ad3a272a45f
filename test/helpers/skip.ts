/**
 * Visible skips: suites that need userfaultfd, hugepages or KVM are named with the reason they
 * skip, and the reason is printed once, so a green run without them never looks like coverage.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

import { probeUffd } from '../../native/index.js';
import { kernelCanPoison } from '../../runtime/startup.js';

const uffd = probeUffd();
export const hasUffd = uffd.ok;
export const uffdSkipReason = uffd.ok ? '' : uffd.reason;
if (!uffd.ok) console.warn(`[lazysnap tests] skipping userfaultfd suites: ${uffd.reason}`);

/** The suite name, suffixed with the skip reason when the suite will skip. */
export function uffdSuite(name: string): string {
  return uffd.ok ? name : `${name} [SKIPPED: ${uffd.reason}]`;
}

export function freeHugepages(): number {
  const m = /HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

export function hugepageSkipReason(needed: number): string {
  const free = freeHugepages();
  return free >= needed
    ? ''
    : `needs ${needed} free 2 MiB huge pages, ${free} free (echo ${needed * 2} > /proc/sys/vm/nr_hugepages)`;
}

/** Whether each 4 KiB page of [address, address+length) of pid is present in RAM (pagemap bit 63). */
export function presentPages(pid: number, address: bigint, length: number): boolean[] {
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    const n = length / 4096;
    const buf = Buffer.alloc(n * 8);
    readSync(fd, buf, 0, buf.length, Number((address / 4096n) * 8n));
    return Array.from({ length: n }, (_, i) => buf.readBigUInt64LE(i * 8) >> 63n === 1n);
  } finally {
    closeSync(fd);
  }
}

/** Whether the kernel supports UFFDIO_POISON (Linux 6.6+); false where userfaultfd is unavailable. */
export const kernelHasPoison = kernelCanPoison;
