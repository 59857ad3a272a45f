/**
 * What `lazysnap trace` reads: a lazysnap trace file (runtime/trace-format.ts), one OTLP JSON document,
 * or OTLP JSON lines (the Collector's file exporter). The text decides which, not the file name; every
 * session found is checked with parseTraceFile, so the renderer only ever sees a valid TraceFile.
 */
import { InvalidArgumentError } from '../../core/errors.js';
import { parseTraceFile, type TraceFile } from '../../runtime/trace-format.js';
import { UsageError } from '../common.js';
import { tracesFromOtlp } from './otlp-json.js';
import { isOtlpDocument } from './otlp-spans.js';

const EXPECTED = 'JSON: a lazysnap trace file or an OTLP JSON export';

/** The sessions in `text` (the contents of `file`, named in every error). */
export function readTraces(text: string, file: string): TraceFile[] {
  const docs = parseDocuments(text, file);
  if (docs.length === 1 && !isOtlpDocument(docs[0])) return [parseTraceFile(docs[0], `${file}: trace`)];
  return tracesFromOtlp(docs, file).map((t) => parseTraceFile(t, `${file}: trace of ${t.restoreId}`));
}

/**
 * One JSON document, or one per line (JSON lines, when the first line is a document by itself); an
 * error names the line and column where the text stops being JSON.
 */
function parseDocuments(text: string, file: string): unknown[] {
  if (text.trim() === '') throw new InvalidArgumentError(file, EXPECTED, 'an empty file');
  try {
    return [JSON.parse(text)];
  } catch (whole) {
    const lines = text.split('\n');
    const first = lines.findIndex((l) => l.trim() !== '');
    if (!isOtlpDocument(tryParse(lines[first]!))) throw notJson(file, text, 0, whole);
    const docs: unknown[] = [];
    let offset = 0;
    for (const line of lines) {
      if (line.trim() !== '')
        try {
          docs.push(JSON.parse(line));
        } catch (e) {
          throw notJson(file, text, offset, e);
        }
      offset += line.length + 1;
    }
    return docs;
  }
}

function tryParse(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

/** V8 says "at position N" (of the text it was given, which starts at `offset`): shown as line and column. */
function notJson(file: string, text: string, offset: number, e: unknown): InvalidArgumentError {
  const reason = e instanceof Error ? e.message : String(e);
  const m = / at position (\d+)/.exec(reason);
  let where = file;
  if (m) {
    const before = text.slice(0, offset + Number(m[1]));
    const line = before.split('\n').length;
    where = `${file} line ${line} column ${before.length - before.lastIndexOf('\n')}`;
  } else if (offset > 0) where = `${file} line ${text.slice(0, offset).split('\n').length}`;
  // Single quotes: the message quotes the received value in double quotes.
  return new InvalidArgumentError(where, EXPECTED, reason.replace(m?.[0] ?? '', '').replace(/"/g, "'"));
}

/**
 * The session to draw: the only one, or the one `restoreId` names. A file of several sessions without
 * `--restore` is a usage error that lists their ids, so the next command can be typed from it.
 */
export function pickTrace(
  traces: readonly TraceFile[],
  restoreId: string | undefined,
  file: string,
): TraceFile {
  if (restoreId === undefined) {
    if (traces.length === 1) return traces[0]!;
    throw new UsageError(
      `${file} holds ${traces.length} restore sessions: pick one with --restore ID (${idList(traces)})`,
    );
  }
  const t = traces.find((x) => x.restoreId === restoreId);
  if (!t)
    throw new InvalidArgumentError('--restore', `a restore id in ${file} (${idList(traces)})`, restoreId);
  return t;
}

/** The sessions' ids, in their order; an export of a busy host may hold thousands, so the line is capped. */
function idList(traces: readonly TraceFile[], max = 20): string {
  const ids = traces.slice(0, max).map((t) => t.restoreId);
  return traces.length > max ? `${ids.join(', ')}, and ${traces.length - max} more` : ids.join(', ');
}
