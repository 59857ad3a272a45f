/**
 * The timeline's lanes, before any drawing: one per faulting thread and one per origin connection, both
 * reconstructed by interval partitioning (cli/trace/lanes.ts says why they have to be). Faults are
 * [atMs, atMs + waitMs]; fetches are [startMs, endMs] per tier, from taking a slot to the chunk being
 * resident, so a connection whose body arrived but whose chunk is still decoding counts as busy: the lane
 * count is then an upper bound on connections rather than an undercount.
 */
import { splitTotal, type TraceFault, type TraceFetch, type TraceFile } from '../../runtime/trace-format.js';
import type { StallPart } from './html.js';
import { partitionIntervals } from './lanes.js';

export interface Segment {
  part: StallPart;
  /** For the fetch part: the tier that moved the bytes. */
  tier?: string;
  t0: number;
  t1: number;
}

export interface LaneItem {
  t0: number;
  t1: number;
  kind: 'fault' | 'failed-fault' | 'demand' | 'prefetch' | 'failed';
  chunk: number;
  tier: string;
  /** The hover text. */
  title: string;
  /** A fault's wait split, laid end to end from its start (queue, fetch, decode, verify, install). */
  segments: Segment[];
}

export interface Lane {
  kind: 'thread' | 'connection';
  /** A connection lane's tier ('origin0', 'disk', 'failed'). */
  tier: string;
  /** 0-based within its kind (threads) or its tier (connections). */
  index: number;
  items: LaneItem[];
}

export interface TimelineModel {
  threads: Lane[];
  /** Connection lanes by tier, tiers in order (disk, origin0, origin1, ..., failed last). */
  connections: Lane[];
  /** The end of the time axis: the session, or the last thing drawn if later. */
  endMs: number;
}

const f1 = (v: number) => (Math.round(v * 1000) / 1000).toString();

function faultItem(f: TraceFault): LaneItem {
  const parts: [StallPart, number, string?][] = [
    ['queue', f.queueMs],
    ...Object.entries(f.fetchMs).map(([tier, v]): [StallPart, number, string] => ['fetch', v, tier]),
    ['decode', f.decodeMs],
    ['verify', f.verifyMs],
    ['install', f.installMs],
  ];
  // The parts are measured by different threads: when they add up to more than the wait (clock skew
  // between them), they are scaled down to fit rather than drawn past the bar's end.
  const total = splitTotal(f);
  const k = total > f.waitMs && total > 0 ? f.waitMs / total : 1;
  let t = f.atMs;
  const segments: Segment[] = [];
  for (const [part, v, tier] of parts) {
    if (!(v > 0)) continue;
    segments.push({ part, ...(tier !== undefined ? { tier } : {}), t0: t, t1: t + v * k });
    t += v * k;
  }
  const split = parts
    .filter(([, v]) => v > 0)
    .map(([p, v, tier]) => `${p}${tier ? ` ${tier}` : ''} ${f1(v)} ms`)
    .join(', ');
  return {
    t0: f.atMs,
    t1: f.atMs + f.waitMs,
    kind: f.tier === 'failed' ? 'failed-fault' : 'fault',
    chunk: f.chunk,
    tier: f.tier,
    title: `fault on chunk ${f.chunk}: waited ${f1(f.waitMs)} ms (${f1(f.atMs)}–${f1(f.atMs + f.waitMs)} ms), served by ${f.tier}${split ? `; ${split}` : ''}`,
    segments,
  };
}

function fetchItem(f: TraceFetch): LaneItem {
  const extra = [
    f.attempts > 1 ? `${f.attempts} attempts` : '',
    f.hedge !== 'none' ? `hedge ${f.hedge}` : '',
    f.decodeMs > 0 ? `decode ${f1(f.decodeMs)} ms` : '',
    f.verifyMs > 0 ? `verify ${f1(f.verifyMs)} ms` : '',
  ].filter(Boolean);
  return {
    t0: f.startMs,
    t1: f.endMs,
    kind: f.tier === 'failed' ? 'failed' : f.priority,
    chunk: f.chunk,
    tier: f.tier,
    title: `${f.priority} fetch of chunk ${f.chunk} from ${f.tier}: ${f.bytes} bytes, queued ${f1(f.queuedMs)} ms, ${f1(f.startMs)}–${f1(f.endMs)} ms (${f1(f.endMs - f.startMs)} ms)${extra.length ? `; ${extra.join(', ')}` : ''}`,
    segments: [],
  };
}

/** Tiers in the order a fetch tries them: the disk cache, the origins in --store order, then failures. */
function tierRank(t: string): [number, number, string] {
  if (t === 'memory') return [0, 0, t];
  if (t === 'disk') return [1, 0, t];
  const m = /^origin(\d+)$/.exec(t);
  if (m) return [2, Number(m[1]), t];
  if (t === 'failed') return [4, 0, t];
  return [3, 0, t];
}

function byRank(a: string, b: string): number {
  const [x, y] = [tierRank(a), tierRank(b)];
  return x[0] - y[0] || x[1] - y[1] || (x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0);
}

/** Splits items into the fewest lanes in which none overlap. */
function intoLanes(items: LaneItem[], kind: Lane['kind'], tier: string): Lane[] {
  const p = partitionIntervals(items.map((i) => ({ start: i.t0, end: i.t1 })));
  const lanes: Lane[] = Array.from({ length: p.lanes }, (_, index) => ({ kind, tier, index, items: [] }));
  items.forEach((item, i) => lanes[p.laneOf[i]!]!.items.push(item));
  for (const l of lanes) l.items.sort((a, b) => a.t0 - b.t0);
  return lanes;
}

export function timelineModel(trace: TraceFile): TimelineModel {
  const threads = intoLanes(trace.faults.map(faultItem), 'thread', '');
  const tiers = [...new Set(trace.fetches.map((f) => f.tier))].sort(byRank);
  const connections = tiers.flatMap((tier) =>
    intoLanes(trace.fetches.filter((f) => f.tier === tier).map(fetchItem), 'connection', tier),
  );
  let endMs = Math.max(trace.durationMs, 0);
  for (const l of [...threads, ...connections]) for (const i of l.items) endMs = Math.max(endMs, i.t1);
  for (const m of trace.milestones) endMs = Math.max(endMs, m.atMs);
  return { threads, connections, endMs };
}
