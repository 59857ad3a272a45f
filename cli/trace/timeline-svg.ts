/**
 * The timeline drawn as inline SVG: a time axis in ms, the thread lanes (fault waits, red, with their
 * split stacked inside), the connection lanes per tier (demand and prefetch fetches in their colours),
 * and the milestones as vertical lines. Everything is drawn here, at 1×; the page's script only moves
 * what carries `data-t0`/`data-t1` (milliseconds) when the reader zooms, so the page reads the same
 * without it.
 *
 * Size: bars narrower than 2 px that touch the previous one in their lane are drawn as one (its title
 * says how many), so a lane holds at most a few bars per pixel column however many fetches it had; a
 * fault's split is drawn only where its bar is wide enough to show it.
 */
import type { TraceFile } from '../../runtime/trace-format.js';
import { COLOURS, esc, px, STALL_PARTS } from './html.js';
import type { Lane, LaneItem, TimelineModel } from './timeline-lanes.js';

export const PLOT_WIDTH = 1100;
const X0 = 12;
const PAD_RIGHT = 36;
const LABEL_WIDTH = 190;
const LANE_H = 14;
const LANE_GAP = 3;
const GROUP_H = 20;
const MILESTONE_ROW = 13;
const MILESTONE_ROWS = 3;
const AXIS_H = 18;
/** A bar at least this wide (px, at 1×) shows its fault's split. */
const SPLIT_MIN_PX = 3;

const PART_COLOUR = Object.fromEntries(STALL_PARTS.map((p) => [p.key, p.colour])) as Record<string, string>;

const KIND_COLOUR: Record<LaneItem['kind'], string> = {
  fault: COLOURS.stall,
  'failed-fault': COLOURS.failedFault,
  demand: COLOURS.demand,
  prefetch: COLOURS.prefetch,
  failed: COLOURS.failedFetch,
};

const KIND_NAME: Record<LaneItem['kind'], string> = {
  fault: 'fault waits',
  'failed-fault': 'faults failed closed',
  demand: 'demand fetches',
  prefetch: 'prefetches',
  failed: 'failed fetches',
};

/** A tick step of 1, 2 or 5 × 10^k ms giving about `n` ticks over `span`. */
export function tickStep(span: number, n = 10): number {
  const raw = Math.max(span, 1e-6) / n;
  const pow = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw)!;
}

const tickLabel = (t: number, step: number) => `${t.toFixed(Math.max(0, -Math.floor(Math.log10(step))))} ms`;

interface Cluster {
  kind: LaneItem['kind'];
  t0: number;
  t1: number;
  items: LaneItem[];
}

/** Neighbouring sub-2-px bars of one kind merged, so that a dense lane costs pixels, not fetches. */
function clusters(items: LaneItem[], scale: number): Cluster[] {
  const out: Cluster[] = [];
  for (const it of items) {
    const last = out[out.length - 1];
    const tiny = (it.t1 - it.t0) * scale < 2;
    if (
      last &&
      tiny &&
      last.kind === it.kind &&
      (last.t1 - last.t0) * scale < 2 &&
      (it.t0 - last.t1) * scale < 1
    ) {
      last.t1 = Math.max(last.t1, it.t1);
      last.items.push(it);
    } else out.push({ kind: it.kind, t0: it.t0, t1: it.t1, items: [it] });
  }
  return out;
}

function clusterTitle(c: Cluster): string {
  if (c.items.length === 1) return c.items[0]!.title;
  const chunks = c.items.map((i) => i.chunk);
  const shown = chunks.slice(0, 8).join(', ') + (chunks.length > 8 ? ', …' : '');
  return `${c.items.length} ${KIND_NAME[c.kind]} (drawn as one at this scale): chunks ${shown}; ${c.t0.toFixed(3)}–${c.t1.toFixed(3)} ms`;
}

/** A rect that the page's script can move: its times in data attributes, its pixels for 1×. */
function timedRect(
  t0: number,
  t1: number,
  scale: number,
  y: number,
  h: number,
  fill: string,
  cls = '',
): string {
  const x = X0 + t0 * scale;
  const w = Math.max(1, (t1 - t0) * scale);
  return `<rect${cls ? ` class="${cls}"` : ''} data-t0="${t0}" data-t1="${t1}" x="${px(x)}" y="${y}" width="${px(w)}" height="${h}" fill="${fill}"/>`;
}

function laneBars(lane: Lane, scale: number): string {
  const out: string[] = [];
  for (const c of clusters(lane.items, scale)) {
    const one = c.items.length === 1 ? c.items[0]! : undefined;
    const attrs = `class="bar ${c.kind}" data-kind="${c.kind}" data-n="${c.items.length}"${one ? ` data-chunk="${one.chunk}" data-tier="${esc(one.tier)}"` : ''}`;
    let body = timedRect(c.t0, c.t1, scale, 0, LANE_H, KIND_COLOUR[c.kind]);
    if (one && one.segments.length > 0 && (c.t1 - c.t0) * scale >= SPLIT_MIN_PX)
      body += one.segments
        .map((s) => timedRect(s.t0, s.t1, scale, 3, LANE_H - 6, PART_COLOUR[s.part]!, `seg ${s.part}`))
        .join('');
    out.push(`<g ${attrs}><title>${esc(clusterTitle(c))}</title>${body}</g>`);
  }
  return out.join('');
}

/** A tier's group heading, short enough for the label column; the origin's URL is its hover title. */
function tierHeading(tier: string, trace: TraceFile, lanes: number): { text: string; title: string } {
  const origin = Object.hasOwn(trace.origins, tier) ? trace.origins[tier] : undefined;
  const what = tier === 'failed' ? 'failed' : tier === 'disk' ? 'disk cache' : tier;
  const unit = tier === 'disk' || tier === 'memory' ? 'reader' : 'conn';
  const text = `${what}: ${lanes} ${unit}${lanes === 1 ? '' : 's'}`;
  const title =
    tier === 'failed'
      ? 'fetches that failed on every origin (which origin each tried is not recorded)'
      : `${tier}${origin ? `: ${origin}` : ''}, ${lanes} lane${lanes === 1 ? '' : 's'}`;
  return { text, title };
}

/** The two SVGs (lane labels, and the plot that scrolls when zoomed) of a model. */
export function renderTimeline(trace: TraceFile, model: TimelineModel): string {
  const scale = PLOT_WIDTH / Math.max(model.endMs, 1e-3);
  const labels: string[] = [];
  const rows: string[] = [];
  let y = MILESTONE_ROW * MILESTONE_ROWS + AXIS_H;
  const axisY = y - 4;

  const group = (heading: { text: string; title: string }, lanes: Lane[], label: (l: Lane) => string) => {
    labels.push(
      `<text class="group" x="4" y="${y + 14}"><title>${esc(heading.title)}</title>${esc(heading.text)}</text>`,
    );
    rows.push(
      `<line class="group-rule" x1="0" x2="${X0 + PLOT_WIDTH + PAD_RIGHT}" y1="${y + 0.5}" y2="${y + 0.5}"/>`,
    );
    y += GROUP_H;
    for (const lane of lanes) {
      labels.push(`<text class="lane-label" x="14" y="${y + LANE_H - 3}">${esc(label(lane))}</text>`);
      rows.push(
        `<g class="lane" data-lane-kind="${lane.kind}"${lane.kind === 'connection' ? ` data-tier="${esc(lane.tier)}"` : ''} data-lane="${lane.index}" data-count="${lane.items.length}" transform="translate(0,${y})">` +
          `<rect class="lane-bg" x="0" y="0" width="${X0 + PLOT_WIDTH + PAD_RIGHT}" height="${LANE_H}"/>` +
          `${laneBars(lane, scale)}</g>`,
      );
      y += LANE_H + LANE_GAP;
    }
  };

  group(
    {
      text: `faulting threads: ${model.threads.length}`,
      title: 'reconstructed from the fault waits by interval partitioning (see the note below the timeline)',
    },
    model.threads,
    (l) => `thread ${l.index + 1}`,
  );
  const tiers = [...new Set(model.connections.map((l) => l.tier))];
  for (const tier of tiers) {
    const lanes = model.connections.filter((l) => l.tier === tier);
    const unit = tier === 'disk' || tier === 'memory' ? 'read' : 'conn';
    group(tierHeading(tier, trace, lanes.length), lanes, (l) => `${tier} ${unit} ${l.index + 1}`);
  }
  const height = y + 6;

  // The axis: a tick line across every lane, its label above the first.
  const step = tickStep(model.endMs);
  const ticks: string[] = [];
  for (let i = 0; i * step <= model.endMs * (1 + 1e-9); i++) {
    const t = i * step;
    const x = px(X0 + t * scale);
    ticks.push(
      `<line class="tick" data-t0="${t}" x1="${x}" x2="${x}" y1="${axisY}" y2="${height}"/>` +
        `<text class="tick-label" data-t0="${t}" x="${x}" y="${axisY - 3}">${tickLabel(t, step)}</text>`,
    );
  }

  // Milestones: a line through the lanes, the name above the axis, staggered over a few rows so that
  // close ones do not print over each other.
  const rowEnd: number[] = new Array<number>(MILESTONE_ROWS).fill(-Infinity);
  const milestones = trace.milestones.map((m) => {
    const x = X0 + m.atMs * scale;
    const text = `${m.name} ${m.atMs.toFixed(1)} ms`;
    // About 6 px a character at 10 px; a label that would run past the plot's end goes leftwards.
    const textW = text.length * 6.2;
    const leftwards = x + 3 + textW > X0 + PLOT_WIDTH + PAD_RIGHT;
    const from = leftwards ? x - 3 - textW : x;
    let row = rowEnd.findIndex((end) => end < from);
    if (row < 0) row = rowEnd.indexOf(Math.min(...rowEnd));
    rowEnd[row] = leftwards ? x : x + textW + 6;
    const ty = MILESTONE_ROW * (row + 1) - 3;
    return (
      `<g class="milestone" data-name="${esc(m.name)}"><title>${esc(`${m.name} at ${m.atMs.toFixed(3)} ms`)}</title>` +
      `<line data-t0="${m.atMs}" x1="${px(x)}" x2="${px(x)}" y1="${ty + 2}" y2="${height}" stroke="${COLOURS.milestone}"/>` +
      `<text data-t0="${m.atMs}" x="${px(leftwards ? x - 3 : x + 3)}" y="${ty}"${leftwards ? ' text-anchor="end"' : ''} fill="${COLOURS.milestone}">${esc(text)}</text></g>`
    );
  });

  const width = X0 + PLOT_WIDTH + PAD_RIGHT;
  return (
    `<div class="timeline">` +
    `<svg class="lane-labels" xmlns="http://www.w3.org/2000/svg" width="${LABEL_WIDTH}" height="${height}">${labels.join('')}</svg>` +
    `<div class="plot-scroll"><svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}"` +
    ` data-x0="${X0}" data-plot-width="${PLOT_WIDTH}" data-pad-right="${PAD_RIGHT}" data-end-ms="${model.endMs}" data-axis-y="${axisY}"` +
    ` data-thread-lanes="${model.threads.length}" data-connection-lanes="${model.connections.length}">` +
    `<g class="axis">${ticks.join('')}</g>` +
    `<g class="lanes">${rows.join('')}</g>` +
    `<g class="milestones">${milestones.join('')}</g>` +
    `</svg></div></div>`
  );
}
