/**
 * runtime/supervisor/sandbox.ts names system calls by number; a wrong number would deny a call the
 * worker needs or let through one it should not have. Checked against the kernel's own table in the
 * installed UAPI headers (linux-libc-dev), where they are.
 */
import { existsSync, readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import { X86_64_DENIED } from '../../runtime/supervisor/sandbox.js';

const HEADER = ['/usr/include/x86_64-linux-gnu/asm/unistd_64.h', '/usr/include/asm/unistd_64.h'].find((p) =>
  existsSync(p),
);
const skip = HEADER ? '' : 'no x86_64 unistd_64.h (Debian: apt-get install linux-libc-dev)';

describe('the worker sandbox', () => {
  it.skipIf(skip !== '')(
    `every denied x86_64 system call number is the kernel's${skip ? ` [SKIPPED: ${skip}]` : ''}`,
    () => {
      const table = new Map(
        [...readFileSync(HEADER!, 'utf8').matchAll(/^#define __NR_(\w+) (\d+)$/gm)].map((m) => [
          m[1]!,
          Number(m[2]),
        ]),
      );
      expect(Object.keys(X86_64_DENIED).length).toBeGreaterThan(30);
      for (const [name, nr] of Object.entries(X86_64_DENIED)) expect(table.get(name), name).toBe(nr);
    },
  );
});
