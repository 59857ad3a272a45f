/**
 * What the source of a UFFDIO_COPY costs on the machine the other scenarios ran on, by where its
 * bytes were written (bench/ref/copy-source.c): one reused buffer, as the C reference handlers decode
 * into, against a fresh slot of a 4 KiB-page arena per chunk, as lazysnap's chunk table decodes into
 * (populated with MADV_POPULATE_WRITE, then written, then copied from). Extra rows: the same arena
 * advised MADV_HUGEPAGE (what the table does for chunks of 2 MiB and more), and the 4 KiB-page slot
 * written by the kernel (pwrite of a reused buffer to a memfd, pread into the slot), an option for
 * lazysnap's loader threads.
 *
 * Not lazysnap code: a property of the host that L1 and P2 depend on. On bare metal a fresh page costs
 * a fault and a zeroed page; under a hypervisor that shadows the guest's page tables (this machine's
 * kernel runs as a PVM guest: pvm_* entry points in /proc/kallsyms), a first access to each 4 KiB page
 * costs an exit per access mode, the decoder's stores and then the kernel's copy_from_user. Recorded
 * so the tables' ratios can be read against it. Informational: no target.
 *
 *   node --import tsx bench/host-memory.bench.ts
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

import { buildC } from '../test/helpers/fixtures.js';
import { environment, modeTable, roundCount, writeResult } from './lib/results.js';

const CS = 512 * 1024;
const N = 256; // 128 MiB per mode per round
const ROUNDS = roundCount(7);
const MODES = ['reused', 'fresh', 'fresh-thp', 'fresh-memfd'] as const;
type Mode = (typeof MODES)[number];
interface Line {
  mode: Mode;
  populateNs: number;
  writeNs: number;
  copyNs: number;
}

const bin = buildC('bench/ref/copy-source.c', 'copy-source');
/** Whether the kernel is built as a PVM guest (its entry points are in the symbol table). */
const pvm = /\bpvm_irq_enable\b/.test(readFileSync('/proc/kallsyms', 'utf8'));

/** One mode's per-chunk means in one round (µs), as modeTable reads them. */
const rounds: {
  mode: Mode;
  warmup: boolean;
  populate: number;
  write: number;
  copy: number;
  slot: number;
  total: number;
}[] = [];
for (let r = -1; r < ROUNDS; r++) {
  // Rotated each round, so that no mode always runs on memory another just freed.
  const order = MODES.map((_, i) => MODES[(i + Math.max(r, 0)) % MODES.length]!);
  const out = execFileSync(bin, [String(CS), String(N), ...order], { encoding: 'utf8' });
  const round = out
    .trim()
    .split('\n')
    .map((s) => JSON.parse(s) as Line)
    .map((l) => ({
      mode: l.mode,
      warmup: r < 0,
      populate: l.populateNs / 1e3,
      write: l.writeNs / 1e3,
      copy: l.copyNs / 1e3,
      slot: (l.populateNs + l.writeNs) / 1e3, // what a slot costs before the copy
      total: (l.populateNs + l.writeNs + l.copyNs) / 1e3,
    }));
  rounds.push(...round);
  console.error(
    `host-memory round ${r + 1}/${ROUNDS}${r < 0 ? ' (warm-up)' : ''}: ` +
      round.map((m) => `${m.mode} ${m.total.toFixed(0)} µs/chunk`).join(', '),
  );
}

const table = modeTable<Mode>(rounds);
const row = (name: string, ref: [Mode, string], ours: [Mode, string]) =>
  table.row(name, 'µs', ref, ours, null);
const rows = [
  row(
    "write a 512 KiB chunk (a decoder's stores): reused buffer vs a fresh 4 KiB-page arena slot (populated first; populate included)",
    ['reused', 'write'],
    ['fresh', 'slot'],
  ),
  row('  of which the stores alone, after MADV_POPULATE_WRITE', ['reused', 'write'], ['fresh', 'write']),
  row(
    'UFFDIO_COPY of that chunk into fresh peer pages: from the reused buffer vs from the fresh slot',
    ['reused', 'copy'],
    ['fresh', 'copy'],
  ),
  row('per chunk in all: reused buffer vs fresh 4 KiB-page slot', ['reused', 'total'], ['fresh', 'total']),
  row(
    'per chunk in all: reused buffer vs fresh slot of an MADV_HUGEPAGE arena (extra row)',
    ['reused', 'total'],
    ['fresh-thp', 'total'],
  ),
  row(
    'per chunk in all: reused buffer vs a fresh 4 KiB-page slot the kernel writes (stores to a reused buffer, pwrite to a memfd, pread into the slot; extra row)',
    ['reused', 'total'],
    ['fresh-memfd', 'total'],
  ),
];
const medians = Object.fromEntries(
  MODES.flatMap((m) =>
    ['populate', 'write', 'slot', 'copy', 'total'].map((k) => [`${m}.${k}`, table.med(m, k)]),
  ),
);
writeResult({
  scenario: 'host-memory',
  title: "This host's cost of a fresh copy source (what L1 and P2 depend on)",
  howMeasured:
    `bench/ref/copy-source.c, one process, ${N} chunks of 512 KiB per mode into a fresh region of its own registered with userfaultfd, one UFFDIO_COPY per chunk, every byte checked afterwards. ` +
    "Reference: one reused buffer, written before each copy (a memcpy of a pattern: a decoder's stores), as bench/ref/ref-store-handler.c decodes. " +
    'lazysnap: a fresh slot per chunk of an arena mapped as native/src/table.c maps it (private anonymous, MADV_NOHUGEPAGE below 2 MiB chunks), MADV_POPULATE_WRITE, then the same stores, then the copy from the slot; extra rows: the arena advised MADV_HUGEPAGE, and the 4 KiB-page slot written by the kernel instead of by stores (the stores go to a reused buffer, then pwrite() to a memfd and pread() into the slot). ' +
    `Per-chunk means within a round, medians over ${ROUNDS} rounds after a warm-up round (modes rotated each round; min–max beneath). ` +
    `Kernel built as a PVM guest (shadow page tables): ${pvm ? 'yes' : 'no'}. Informational, no target: a property of the host, not of lazysnap.`,
  env: environment(),
  config: { chunkSize: CS, chunks: N, rounds: ROUNDS, pvmGuest: pvm },
  rows,
  rounds,
  medians,
});
for (const r of rows)
  console.error(
    `${r.case}: ${r.lazysnap!.toFixed(0)} µs vs ${r.reference!.toFixed(0)} µs (${r.ratio!.toFixed(1)}×)`,
  );
