/**
 * What every part of the trace page shares: escaping (snapshot ids, restore ids, tier names and origin
 * URLs are user data and go into text and attributes), number formats, and the colours, defined once so
 * that the timeline, the chunk strip and their legends cannot disagree.
 */

const ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Text or an attribute value (double-quoted) made inert: safe in both places. */
export function esc(v: string | number): string {
  return String(v).replace(/[&<>"']/g, (c) => ENTITIES[c]!);
}

/** Milliseconds for people: 3 significant figures below 10 ms, whole above 1 s. */
export function fmtMs(v: number): string {
  const a = Math.abs(v);
  if (a >= 1000) return `${Math.round(v).toLocaleString('en-US')} ms`;
  if (a >= 10) return `${v.toFixed(1)} ms`;
  return `${v.toFixed(a >= 1 ? 2 : 3)} ms`;
}

/** A share of a whole as a percentage ('–' when there is no whole). */
export function pct(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '–';
}

/** A coordinate: two decimals are sub-pixel enough and keep a page of thousands of bars small. */
export const px = (v: number) => String(Math.round(v * 100) / 100);

export const COLOURS = {
  demand: '#4e79a7',
  prefetch: '#59a14f',
  failedFetch: '#3b3b3b',
  /** A fault's wait not explained by its split (and the bar behind the split). */
  stall: '#d62728',
  failedFault: '#7f0000',
  milestone: '#6f42c1',
} as const;

/** The parts of a stall, in the order they happen, and their colours. */
export const STALL_PARTS = [
  { key: 'queue', label: 'queue', colour: '#ff9da7' },
  { key: 'fetch', label: 'fetch', colour: '#f28e2b' },
  { key: 'decode', label: 'decode', colour: '#b07aa1' },
  { key: 'verify', label: 'verify', colour: '#edc948' },
  { key: 'install', label: 'install', colour: '#9c755f' },
] as const;

export type StallPart = (typeof STALL_PARTS)[number]['key'];

/** The chunk map's classes (runtime/trace-format.ts ChunkMapChar), in legend order. */
export const CHUNK_CLASSES = [
  { char: 'd', label: 'demanded', colour: COLOURS.demand },
  { char: 'p', label: 'prefetched', colour: COLOURS.prefetch },
  { char: 'm', label: 'memory', colour: '#f1ce63' },
  { char: 'z', label: 'zero', colour: '#c9c9c9' },
  { char: 'x', label: 'failed', colour: COLOURS.stall },
  { char: '.', label: 'untouched', colour: '#f2f2f2' },
] as const;
