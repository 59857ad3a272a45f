import type { CommandSpec } from '../option-spec.js';

export const demoSpec = {
  name: 'demo',
  summary: "restore a process's memory lazily, in-process, on the embedded default",
  synopsis: ['demo [options]'],
  description: `The whole job on the embedded default (a local directory store, no services): a child process
builds a data set in memory; lazysnap snapshots the live process into the store; a fresh process
restores the memory lazily (pages fault in from the store as the workload reads them, zero chunks
are mapped without a fetch) and verifies every chunk against the source. No root needed where the
kernel allows unprivileged userfaultfd in user mode (Linux 5.11+).`,
  options: {
    size: {
      type: 'string',
      value: 'SIZE',
      default: '256MiB',
      meaning: "memory the source process fills: a non-zero multiple of 64 KiB, at most the machine's memory",
    },
    'chunk-size': {
      type: 'string',
      value: 'SIZE',
      default: '512KiB',
      meaning: 'chunk size: a power of two ≥ 4 KiB',
    },
    'working-set': {
      type: 'string',
      value: 'F',
      default: '0.1',
      meaning: 'fraction of the chunks the workload reads, 0 < F ≤ 1',
    },
    store: {
      type: 'string',
      value: 'DIR',
      default: '.lazysnap',
      meaning:
        'the local store; kept, so `lazysnap inspect --store DIR --id ID` works afterwards (the report names the id)',
    },
    id: {
      type: 'string',
      value: 'ID',
      shown: '`demo-<UTC time>`',
      meaning:
        'snapshot id, which must be new; a second run uploads no chunks (they are all in the store: dedup)',
    },
    compare: {
      type: 'boolean',
      default: false,
      meaning: 'also restore eagerly (every chunk fetched before the workload), side by side',
    },
    json: { type: 'boolean', default: false, meaning: 'print the report as JSON' },
  },
} as const satisfies CommandSpec;
