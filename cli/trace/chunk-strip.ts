/**
 * The chunk map (runtime/trace-format.ts `chunks`) as a strip: the snapshot's chunks in address order,
 * each coloured by what happened to it in this session, over a few rows so that a large snapshot still
 * gets more than a pixel per handful of chunks. When chunks outnumber the pixels of a row, a cell holds
 * several and takes the colour of the most telling class among them (failed over demanded over
 * prefetched over memory over zero over untouched): one demand fault in a cell of untouched chunks is what
 * a reader looks for, so it must not be averaged away. Runs of cells of one pure class are one rect.
 */
import type { ChunkMapChar } from '../../runtime/trace-format.js';
import { formatBytes } from '../../core/units.js';
import { CHUNK_CLASSES, esc, pct, px } from './html.js';

const WIDTH = 1136;
const MAX_ROWS = 8;
const ROW_H = 22;
const ROW_GAP = 3;

/** Which class a mixed cell shows: the first present in this order. */
const SALIENCE: readonly ChunkMapChar[] = ['x', 'd', 'p', 'm', 'z', '.'];
const COLOUR = Object.fromEntries(CHUNK_CLASSES.map((c) => [c.char, c.colour])) as Record<string, string>;
const LABEL = Object.fromEntries(CHUNK_CLASSES.map((c) => [c.char, c.label])) as Record<string, string>;

export type ChunkCounts = Record<ChunkMapChar, number>;

export function chunkCounts(map: string): ChunkCounts {
  const n: ChunkCounts = { z: 0, p: 0, d: 0, m: 0, x: 0, '.': 0 };
  for (const c of map) n[c as ChunkMapChar]++;
  return n;
}

export interface StripLayout {
  rows: number;
  /** Chunks per row (the last row may hold fewer). */
  perRow: number;
  /** Chunks per cell: 1 unless a row has more chunks than pixels. */
  perCell: number;
}

export function stripLayout(count: number, width = WIDTH): StripLayout {
  const rows = Math.max(1, Math.min(MAX_ROWS, Math.ceil(count / width)));
  const perRow = Math.max(1, Math.ceil(count / rows));
  return { rows, perRow, perCell: Math.max(1, Math.ceil(perRow / width)) };
}

interface Run {
  from: number;
  to: number;
  cls: ChunkMapChar;
  /** Set for cells holding more than one class: the counts, for the title. */
  mix?: string;
}

/** One row's cells, runs of one pure class merged. */
function rowRuns(map: string, from: number, to: number, perCell: number): Run[] {
  const runs: Run[] = [];
  for (let c = from; c < to; c += perCell) {
    const end = Math.min(to, c + perCell);
    const cell = map.slice(c, end);
    const present = SALIENCE.filter((k) => cell.includes(k));
    const cls = present[0]!;
    const mix =
      present.length > 1
        ? SALIENCE.map((k) => [k, cell.split(k).length - 1] as const)
            .filter(([, n]) => n > 0)
            .map(([k, n]) => `${n} ${LABEL[k]}`)
            .join(', ')
        : undefined;
    const last = runs[runs.length - 1];
    if (last && !last.mix && !mix && last.cls === cls) last.to = end;
    else runs.push({ from: c, to: end, cls, ...(mix ? { mix } : {}) });
  }
  return runs;
}

export function renderChunkStrip(map: string, chunkSize: number): string {
  const count = map.length;
  const { rows, perRow, perCell } = stripLayout(count);
  const cellW = WIDTH / Math.ceil(perRow / perCell);
  const rects: string[] = [];
  for (let r = 0; r < rows; r++) {
    const from = r * perRow;
    const to = Math.min(count, from + perRow);
    const y = r * (ROW_H + ROW_GAP);
    for (const run of rowRuns(map, from, to, perCell)) {
      const x = ((run.from - from) / perCell) * cellW;
      const w = (Math.ceil((run.to - from) / perCell) - (run.from - from) / perCell) * cellW;
      const range = run.to - run.from === 1 ? `chunk ${run.from}` : `chunks ${run.from}–${run.to - 1}`;
      const bytes =
        chunkSize > 0 ? ` (${formatBytes(run.from * chunkSize)}–${formatBytes(run.to * chunkSize)})` : '';
      const title = `${range}${bytes}: ${run.mix ?? LABEL[run.cls]}`;
      rects.push(
        `<rect class="cell" data-class="${esc(run.cls)}" data-from="${run.from}" data-to="${run.to}" x="${px(x)}" y="${y}" width="${px(Math.max(w, 0.5))}" height="${ROW_H}" fill="${COLOUR[run.cls]}"><title>${esc(title)}</title></rect>`,
      );
    }
  }
  const height = rows * (ROW_H + ROW_GAP) - ROW_GAP;
  const counts = chunkCounts(map);
  const legend = CHUNK_CLASSES.map(
    (c) =>
      `<li data-class="${esc(c.char)}" data-count="${counts[c.char]}"><span class="swatch" style="background:${c.colour}"></span>` +
      `${c.label} <code>${esc(c.char)}</code> <b>${counts[c.char]}</b> <span class="muted">${pct(counts[c.char], count)}</span></li>`,
  ).join('');
  const scaleNote =
    perCell > 1
      ? `${count} chunks in ${rows} rows of ${perRow}; each cell holds ${perCell} chunks and shows the most telling class among them`
      : `${count} chunks in ${rows} row${rows === 1 ? '' : 's'} of ${perRow}, one cell per chunk`;
  return (
    `<svg id="chunk-map" xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" data-chunks="${count}" data-rows="${rows}" data-per-cell="${perCell}">${rects.join('')}</svg>` +
    `<p class="muted small">${esc(scaleNote)}, in address order${chunkSize > 0 ? ` (${formatBytes(chunkSize)} each)` : ''}.</p>` +
    `<ul class="legend" id="chunk-legend">${legend}</ul>`
  );
}
