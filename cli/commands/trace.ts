import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { InvalidArgumentError } from '../../core/errors.js';
import { formatBytes } from '../../core/units.js';
import { UsageError, type Io } from '../common.js';
import { parseCommandLine } from '../option-spec.js';
import { traceSpec } from '../specs/trace.js';
import { pickTrace, readTraces } from '../trace/read-trace.js';
import { renderTraceHtml } from '../trace/render-html.js';

export const spec = traceSpec;

/** The page next to the trace: `x.trace.json` → `x.trace.html`, `x.json` → `x.html`, else `.html` added. */
export function defaultOutput(file: string): string {
  return /\.jsonl?$/i.test(file) ? file.replace(/\.jsonl?$/i, '.html') : `${file}.html`;
}

export async function run(argv: string[], io: Io): Promise<number> {
  const { values, operands } = parseCommandLine(traceSpec, argv);
  if (operands.length !== 1)
    throw new UsageError(
      `trace takes one FILE (a trace file or an OTLP JSON export), received ${operands.length === 0 ? 'none' : operands.map((o) => JSON.stringify(o)).join(' ')}`,
    );
  const file = operands[0]!;
  const out = values.output ?? defaultOutput(file);
  if (out !== '-' && path.resolve(out) === path.resolve(file))
    throw new UsageError(`--output ${out} is FILE itself: the trace would be overwritten by its page`);

  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(
      'FILE',
      'a readable file',
      `${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
  const trace = pickTrace(readTraces(text, file), values.restore, file);
  const html = renderTraceHtml(trace);

  if (out === '-') io.out(html);
  else {
    writeFileSync(out, html);
    io.out(
      `wrote ${out} (${formatBytes(Buffer.byteLength(html))}): restore ${trace.restoreId} of ${trace.snapshotId || '(snapshot not recorded)'}, ` +
        `${trace.totals.faults} faults, ${trace.faults.length} waited ${trace.stall.totalMs.toFixed(1)} ms in all, ${trace.fetches.length} fetches\n`,
    );
  }
  return 0;
}
