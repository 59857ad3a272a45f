/**
 * A recorded restore as one self-contained HTML page: header (who, what, how long, how it ended), the
 * totals and the stall split, the timeline (cli/trace/timeline-svg.ts), the chunk map
 * (cli/trace/chunk-strip.ts) and a totals table. No external resource of any kind: the style and script
 * are inline, the pictures are inline SVG, and the Content-Security-Policy forbids anything else, so the
 * page opens the same from an air-gapped laptop and cannot call home with the snapshot ids in it.
 *
 * Every value that came from the trace goes through esc(): ids, tier names and origins are user data.
 */
import { formatBytes } from '../../core/units.js';
import type { TraceFile } from '../../runtime/trace-format.js';
import { renderChunkStrip } from './chunk-strip.js';
import { COLOURS, esc, fmtMs, pct, STALL_PARTS } from './html.js';
import { PAGE_CSS, PAGE_SCRIPT } from './page-assets.js';
import { timelineModel, type TimelineModel } from './timeline-lanes.js';
import { renderTimeline } from './timeline-svg.js';

const CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";

/** The stall's parts with their totals, fetch summed over tiers (each tier listed under it). */
function stallRows(
  t: TraceFile,
): { key: string; label: string; ms: number; colour: string; sub?: boolean }[] {
  const s = t.stall;
  const fetchTiers = Object.entries(s.fetchMs).sort(([a], [b]) => (a < b ? -1 : 1));
  const fetchMs = fetchTiers.reduce((n, [, v]) => n + v, 0);
  const value = {
    queue: s.queueMs,
    fetch: fetchMs,
    decode: s.decodeMs,
    verify: s.verifyMs,
    install: s.installMs,
  };
  return STALL_PARTS.flatMap((p) => [
    { key: p.key, label: p.label, ms: value[p.key], colour: p.colour },
    ...(p.key === 'fetch'
      ? fetchTiers.map(([tier, ms]) => ({
          key: `fetch.${tier}`,
          label: `fetch from ${tier}`,
          ms,
          colour: p.colour,
          sub: true,
        }))
      : []),
  ]);
}

function header(t: TraceFile): string {
  const facts: [string, string][] = [
    ['snapshot', t.snapshotId || '(not recorded)'],
    ['restore', t.restoreId],
    ['peer pid', String(t.peerPid)],
    [
      'shape',
      `${t.shape}, ${t.regions} region${t.regions === 1 ? '' : 's'}, pages ${formatBytes(t.pageSize)}`,
    ],
    ['started', t.startedAt],
    ['duration', fmtMs(t.durationMs)],
    ['outcome', t.outcome],
    ['chunks', `${t.chunkCount} × ${formatBytes(t.chunkSize)}`],
  ];
  return `<dl class="facts">${facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd data-fact="${esc(k)}">${esc(v)}</dd>`).join('')}</dl>`;
}

/** The headline counts, each with `data-total` and `data-count` for machines. */
function cards(t: TraceFile): string {
  const x = t.totals;
  const cards: [string, string, number, string?][] = [
    ['faults', 'faults', x.faults],
    ['zeroFaults', 'zero faults', x.zeroFaults],
    ['fetchedChunks', 'fetched chunks', x.fetchedChunks],
    ['bytesFetched', 'bytes fetched', x.bytesFetched, formatBytes(x.bytesFetched)],
    ['prefetchedChunks', 'prefetched chunks', x.prefetchedChunks],
    ['failedChunks', 'failed chunks', x.failedChunks],
    ['stallFaults', 'faults that waited', t.stall.faults],
    ['stallMs', 'stall', t.stall.totalMs, fmtMs(t.stall.totalMs)],
  ];
  const hits = Object.entries(x.hitsByTier)
    .map(([tier, n]) => `<li data-tier="${esc(tier)}" data-count="${n}">${esc(tier)} <b>${n}</b></li>`)
    .join('');
  return (
    `<div class="cards">${cards
      .map(
        ([key, label, n, shown]) =>
          `<div class="card" data-total="${key}" data-count="${n}"><b>${esc(shown ?? String(n))}</b><span>${esc(label)}</span></div>`,
      )
      .join('')}</div>` +
    `<div class="small hits">hits by tier: <ul class="legend" id="hits-by-tier">${hits || '<li class="muted">none</li>'}</ul></div>`
  );
}

function stallSection(t: TraceFile): string {
  const rows = stallRows(t);
  const total = t.stall.totalMs;
  const parts = rows.filter((r) => !r.sub && r.ms > 0);
  const explained = parts.reduce((n, r) => n + r.ms, 0);
  const bar = parts
    .map(
      (r) =>
        `<div title="${esc(`${r.label} ${fmtMs(r.ms)} (${pct(r.ms, total)})`)}" style="width:${(100 * r.ms) / Math.max(total, explained, 1e-9)}%;background:${r.colour}"></div>`,
    )
    .join('');
  // Parts as columns: the split reads left to right in the order it happens, as on the bar above it.
  const cols = [{ key: 'total', label: 'total', ms: total, colour: '', sub: false }, ...rows];
  const head = cols
    .map(
      (c) =>
        `<th class="n${c.sub ? ' sub' : ''}" data-part="${esc(c.key)}">${c.colour && !c.sub ? `<span class="swatch" style="background:${c.colour}"></span>` : ''}${esc(c.sub ? c.label.replace(/^fetch from /, '↳ ') : c.label)}</th>`,
    )
    .join('');
  const msRow = cols
    .map((c) => `<td class="n" data-part="${esc(c.key)}" data-ms="${c.ms}">${fmtMs(c.ms)}</td>`)
    .join('');
  const pctRow = cols.map((c) => `<td class="n">${pct(c.ms, total)}</td>`).join('');
  return (
    `<p>${t.stall.faults} faults waited for a chunk, ${fmtMs(total)} in all` +
    `${t.stall.faults > 0 ? ` (${fmtMs(total / t.stall.faults)} each on average)` : ''}. Where the time went:</p>` +
    `<div class="splitbar" id="stall-bar">${bar}</div>` +
    `<table id="stall-split"><thead><tr><th></th>${head}</tr></thead><tbody>` +
    `<tr><th>ms</th>${msRow}</tr><tr><th>share</th>${pctRow}</tr></tbody></table>`
  );
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function totalsTable(t: TraceFile, m: TimelineModel): string {
  const waits = t.faults.map((f) => f.waitMs).sort((a, b) => a - b);
  const demand = t.fetches.filter((f) => f.priority === 'demand');
  const rows: [string, string][] = [
    ['faults', String(t.totals.faults)],
    ['zero faults (mapped without a fetch)', String(t.totals.zeroFaults)],
    ['faults that waited for a fetch', String(t.faults.length)],
    [
      'fault wait p50 / p95 / max',
      `${fmtMs(quantile(waits, 0.5))} / ${fmtMs(quantile(waits, 0.95))} / ${fmtMs(waits[waits.length - 1] ?? 0)}`,
    ],
    ['fetched chunks', String(t.totals.fetchedChunks)],
    ['bytes fetched', `${formatBytes(t.totals.bytesFetched)} (${t.totals.bytesFetched} B)`],
    ['prefetched chunks', String(t.totals.prefetchedChunks)],
    ['failed chunks', String(t.totals.failedChunks)],
    ['fetches recorded: demand / prefetch', `${demand.length} / ${t.fetches.length - demand.length}`],
    ['retries', String(t.fetches.reduce((n, f) => n + Math.max(0, f.attempts - 1), 0))],
    [
      'hedges won / lost',
      `${t.fetches.filter((f) => f.hedge === 'won').length} / ${t.fetches.filter((f) => f.hedge === 'lost').length}`,
    ],
    ['faulting threads (at least)', String(m.threads.length)],
    ['connection lanes by tier', connectionSummary(m) || 'none'],
    ...Object.entries(t.totals.hitsByTier).map(([tier, n]): [string, string] => [
      `hits from ${tier}`,
      String(n),
    ]),
    ...Object.entries(t.origins).map(([tier, url]): [string, string] => [`origin ${tier}`, url]),
  ];
  return `<table id="totals"><tbody>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td class="n">${esc(v)}</td></tr>`).join('')}</tbody></table>`;
}

function connectionSummary(m: TimelineModel): string {
  const by = new Map<string, number>();
  for (const l of m.connections) by.set(l.tier, (by.get(l.tier) ?? 0) + 1);
  return [...by].map(([tier, n]) => `${tier} ${n}`).join(', ');
}

function timelineLegend(): string {
  const sw = (colour: string, label: string) =>
    `<li><span class="swatch" style="background:${colour}"></span>${esc(label)}</li>`;
  return (
    `<ul class="legend" id="timeline-legend">` +
    sw(COLOURS.stall, 'fault wait (stall)') +
    STALL_PARTS.map((p) => sw(p.colour, `stall: ${p.label}`)).join('') +
    sw(COLOURS.failedFault, 'fault failed closed') +
    sw(COLOURS.demand, 'demand fetch') +
    sw(COLOURS.prefetch, 'prefetch') +
    sw(COLOURS.failedFetch, 'failed fetch') +
    sw(COLOURS.milestone, 'milestone') +
    `</ul>`
  );
}

export function renderTraceHtml(t: TraceFile): string {
  const model = timelineModel(t);
  const title = `lazysnap restore ${t.restoreId} of ${t.snapshotId}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${PAGE_CSS}</style>
</head>
<body data-restore-id="${esc(t.restoreId)}">
<h1>Restore <code>${esc(t.restoreId)}</code> of <code>${esc(t.snapshotId || '(snapshot not recorded)')}</code></h1>
${header(t)}
${cards(t)}
<h2>Stall</h2>
${stallSection(t)}
<h2>Timeline</h2>
<div class="toolbar">zoom ${[1, 2, 4, 8, 16].map((z) => `<button type="button" data-zoom="${z}" aria-pressed="${z === 1}">${z}×</button>`).join('')}</div>
${timelineLegend()}
<div id="details" class="muted">Point at a bar for its chunk, tier, bytes and times.</div>
${renderTimeline(t, model)}
<p class="small muted" id="lanes-note">Lanes are reconstructed. The kernel does not say which thread of the peer faulted
(Firecracker does not ask for <code>UFFD_FEATURE_THREAD_ID</code>), so fault waits are put in lanes by greedy interval
partitioning (earliest start first, into the first free lane): a thread waits on one fault at a time, so this is the
fewest threads that explain the waits. Connection lanes are built the same way per tier from each fetch's slot to its
chunk being resident (one request per connection at a time: HTTP/1.1 without pipelining); since that span includes
decoding and verifying after the body arrived, a tier may show more lanes than it had connections. Stalls show their split (queue, fetch, decode, verify, install) where the bar is wide
enough; bars closer than a pixel are drawn as one.</p>
<h2>Chunk map</h2>
${renderChunkStrip(t.chunks, t.chunkSize)}
<h2>Totals</h2>
${totalsTable(t, model)}
<footer class="small muted">lazysnap trace · ${esc(t.format)}/${t.version} · ${t.milestones.length} milestones, ${t.faults.length} faults, ${t.fetches.length} fetches recorded</footer>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
}
