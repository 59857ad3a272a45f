/**
 * The page's inline style and script. Inline because the page must open from a file with no network
 * (the Content-Security-Policy in render-html.ts forbids fetching anything); small because the drawing is
 * done in cli/trace/timeline-svg.ts and the script only adds what needs a reader: zooming the timeline
 * (re-placing what carries `data-t0`/`data-t1`, redrawing the ticks) and a line that shows what is under
 * the pointer; `#zoom=N` in the address opens it zoomed. It sets `data-ready` on <body> once it has
 * run, so that a headless check can tell that it did.
 */

export const PAGE_CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 40px; font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #fff; }
h1 { font-size: 18px; margin: 0 0 6px; }
h2 { font-size: 14px; margin: 22px 0 8px; border-bottom: 1px solid #d8dee4; padding-bottom: 3px; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.muted { color: #656d76; }
.small { font-size: 12px; }
dl.facts { display: grid; grid-template-columns: repeat(4, max-content 1fr); gap: 2px 12px; margin: 8px 0; }
dl.facts dt { color: #656d76; }
dl.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0; }
.card { border: 1px solid #d8dee4; border-radius: 6px; padding: 6px 10px; min-width: 110px; }
.card b { display: block; font-size: 17px; }
.card span { color: #656d76; font-size: 12px; }
.hits { display: flex; gap: 10px; align-items: baseline; }
.hits .legend { margin: 0; }
.splitbar { display: flex; height: 18px; width: 100%; max-width: 1120px; border-radius: 3px; overflow: hidden; background: #eee; }
.splitbar div { height: 100%; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #eaeef2; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
#stall-split th.sub { color: #656d76; font-weight: normal; }
#totals td.n { padding-left: 32px; }
.legend { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 4px 16px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -2px; margin-right: 5px; border: 1px solid rgba(0,0,0,.15); }
.toolbar { display: flex; gap: 6px; align-items: center; margin: 6px 0; }
.toolbar button { font: inherit; padding: 1px 8px; border: 1px solid #d0d7de; background: #f6f8fa; border-radius: 4px; cursor: pointer; }
.toolbar button[aria-pressed="true"] { background: #0969da; color: #fff; border-color: #0969da; }
#details { min-height: 1.45em; font-size: 12px; color: #1f2328; }
.timeline { display: flex; align-items: flex-start; border: 1px solid #d8dee4; border-radius: 6px; }
.lane-labels { flex: none; background: #fafbfc; border-right: 1px solid #d8dee4; }
.lane-labels text { font-size: 11px; fill: #1f2328; }
.lane-labels text.group { font-weight: 600; font-size: 11px; }
.plot-scroll { overflow-x: auto; flex: 1; }
#timeline text { font-size: 10px; }
#timeline .tick { stroke: #eaeef2; }
#timeline .tick-label { fill: #656d76; text-anchor: middle; }
#timeline .lane-bg { fill: #f6f8fa; }
#timeline .group-rule { stroke: #d8dee4; }
#timeline .bar > rect:first-of-type { stroke: #fff; stroke-width: 0.5; }
#timeline .bar:hover rect { stroke: #000; stroke-width: 1; }
#timeline .milestone line { stroke-dasharray: 3 2; }
#chunk-map { display: block; max-width: 100%; }
#chunk-map .cell:hover { stroke: #000; }
footer { margin-top: 24px; }
`;

/**
 * Plain ES2017 in a string: it runs in the reader's browser, not in Node, and must not log (the headless
 * check treats any console line as a failure).
 */
export const PAGE_SCRIPT = `
(function () {
  'use strict';
  var svg = document.getElementById('timeline');
  var details = document.getElementById('details');
  if (!svg) { document.body.setAttribute('data-ready', '1'); return; }
  var NS = 'http://www.w3.org/2000/svg';
  var x0 = Number(svg.getAttribute('data-x0'));
  var plotWidth = Number(svg.getAttribute('data-plot-width'));
  var padRight = Number(svg.getAttribute('data-pad-right'));
  var endMs = Math.max(Number(svg.getAttribute('data-end-ms')), 1e-3);
  var axisY = Number(svg.getAttribute('data-axis-y'));
  var height = Number(svg.getAttribute('height'));
  var timed = svg.querySelectorAll('[data-t0]');

  function step(span) {
    var raw = Math.max(span, 1e-6) / 10;
    var pow = Math.pow(10, Math.floor(Math.log10(raw)));
    var m = [1, 2, 5, 10];
    for (var i = 0; i < m.length; i++) if (m[i] * pow >= raw) return m[i] * pow;
    return 10 * pow;
  }

  function ticks(zoom, scale) {
    var axis = svg.querySelector('g.axis');
    while (axis.firstChild) axis.removeChild(axis.firstChild);
    var s = step(endMs / zoom);
    var digits = Math.max(0, -Math.floor(Math.log10(s)));
    for (var i = 0; i * s <= endMs * (1 + 1e-9); i++) {
      var t = i * s;
      var x = String(x0 + t * scale);
      var line = document.createElementNS(NS, 'line');
      line.setAttribute('class', 'tick');
      line.setAttribute('x1', x); line.setAttribute('x2', x);
      line.setAttribute('y1', String(axisY)); line.setAttribute('y2', String(height));
      var label = document.createElementNS(NS, 'text');
      label.setAttribute('class', 'tick-label');
      label.setAttribute('x', x); label.setAttribute('y', String(axisY - 3));
      label.textContent = t.toFixed(digits) + ' ms';
      axis.appendChild(line); axis.appendChild(label);
    }
  }

  function layout(zoom) {
    var scale = (plotWidth * zoom) / endMs;
    svg.setAttribute('width', String(x0 + plotWidth * zoom + padRight));
    svg.querySelectorAll('.lane-bg, .group-rule').forEach(function (el) {
      if (el.tagName === 'line') el.setAttribute('x2', String(x0 + plotWidth * zoom + padRight));
      else el.setAttribute('width', String(x0 + plotWidth * zoom + padRight));
    });
    for (var i = 0; i < timed.length; i++) {
      var el = timed[i];
      var t0 = Number(el.getAttribute('data-t0'));
      var x = x0 + t0 * scale;
      if (el.tagName === 'rect') {
        var t1 = Number(el.getAttribute('data-t1'));
        el.setAttribute('x', String(x));
        el.setAttribute('width', String(Math.max(1, (t1 - t0) * scale)));
      } else if (el.tagName === 'line') {
        el.setAttribute('x1', String(x)); el.setAttribute('x2', String(x));
      } else if (el.tagName === 'text') {
        // Labels near the right end are drawn leftwards of their line (text-anchor end).
        el.setAttribute('x', String(el.getAttribute('text-anchor') === 'end' ? x - 3 : x + 3));
      }
    }
    ticks(zoom, scale);
    timed = svg.querySelectorAll('[data-t0]');
    svg.setAttribute('data-zoom', String(zoom));
  }

  function zoomTo(b) {
    document.querySelectorAll('button[data-zoom]').forEach(function (o) { o.setAttribute('aria-pressed', String(o === b)); });
    layout(Number(b.getAttribute('data-zoom')));
  }
  document.querySelectorAll('button[data-zoom]').forEach(function (b) {
    b.addEventListener('click', function () { zoomTo(b); });
  });
  // A link can open the page zoomed: trace.html#zoom=4.
  var asked = /zoom=([0-9]+)/.exec(location.hash);
  var button = asked ? document.querySelector('button[data-zoom="' + asked[1] + '"]') : null;
  if (button) zoomTo(button);

  // What is under the pointer: the hovered bar's title, or the time at the pointer.
  svg.addEventListener('mousemove', function (ev) {
    var g = ev.target && ev.target.closest ? ev.target.closest('g.bar, g.milestone') : null;
    var title = g ? g.querySelector('title') : null;
    var zoom = Number(svg.getAttribute('data-zoom') || '1');
    var box = svg.getBoundingClientRect();
    var t = ((ev.clientX - box.left - x0) * endMs) / (plotWidth * zoom);
    details.textContent = (title ? title.textContent + ' | ' : '') + 't = ' + t.toFixed(2) + ' ms';
  });
  document.body.setAttribute('data-ready', '1');
})();
`;
