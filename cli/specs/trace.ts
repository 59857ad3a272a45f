import type { CommandSpec } from '../option-spec.js';

export const traceSpec = {
  name: 'trace',
  summary: 'draw a recorded restore as a self-contained HTML timeline',
  synopsis: ['trace FILE [--output OUT] [--restore ID]'],
  description: `Draws one restore session as a single HTML page that needs no network: its totals and stall split,
a timeline with a lane per faulting thread and per origin connection (fault waits, demand fetches,
prefetches, milestones), and the chunk map. FILE is a trace that serve --trace-dir wrote
(<restoreId>.trace.json) or an OTLP JSON export of lazysnap's spans (one document, or one per line as
the OpenTelemetry Collector's file exporter writes them).`,
  options: {
    output: {
      type: 'string',
      short: 'o',
      value: 'OUT',
      shown: 'FILE with `.html` for `.json`',
      meaning: 'where to write the page (`-o` for short); `-` writes it to stdout',
    },
    restore: {
      type: 'string',
      value: 'ID',
      shown: 'the only session',
      meaning:
        'the session to draw, by restore id, when FILE holds several (an OTLP export); such a file without it is refused with the ids it holds',
    },
  },
  notes: `Exit codes: 0 written, 2 a FILE that cannot be read or is not a trace (not JSON, another format or
version, a field of the wrong type, an OTLP export without a lazysnap.restore span), 1 the page
could not be written.`,
} as const satisfies CommandSpec;
