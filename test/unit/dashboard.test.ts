/**
 * The Grafana dashboard (infra/grafana/lazysnap-dashboard.json) and docs/METRICS.md held to what
 * RuntimeMetrics really serves at /metrics: a metric renamed in runtime/metrics.ts, a panel querying a
 * name nobody exposes, a family that no panel shows or no document describes, each fails here.
 *
 * Deliberate simplification: PromQL is not parsed but scanned (metricNames): strings, label matchers,
 * range selectors and grouping label lists are blanked out, and every identifier left that is neither
 * called as a function nor a keyword is a metric name. That is enough for the expressions a dashboard
 * holds; where promtool is installed, every expression is also put through Prometheus's own parser.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { newLoadTiming } from '../../runtime/chunk-loader.js';
import { RuntimeMetrics } from '../../runtime/metrics.js';
import { repoRoot } from '../helpers/fixtures.js';

const DASHBOARD = path.join(repoRoot, 'infra', 'grafana', 'lazysnap-dashboard.json');
const METRICS_DOC = path.join(repoRoot, 'docs', 'METRICS.md');
const METRICS_SOURCE = path.join(repoRoot, 'runtime', 'metrics.ts');

/**
 * Families that no panel shows, each with the reason. Empty: the dashboard shows every family. A
 * family added to runtime/metrics.ts goes on a panel, or here with a reason.
 */
const NOT_ON_DASHBOARD: ReadonlyMap<string, string> = new Map();

const HISTOGRAM_SERIES = ['_bucket', '_sum', '_count'] as const;

/** One exposition, parsed: each family's type (HELP/TYPE lines) and every series name with a sample. */
interface Exposition {
  families: Map<string, string>;
  samples: Set<string>;
}

function parseExposition(text: string): Exposition {
  const families = new Map<string, string>();
  const samples = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE ([a-zA-Z_:][\w:]*) (\w+)$/.exec(line);
    if (type) families.set(type[1]!, type[2]!);
    else if (line.startsWith('#') || line.trim() === '') continue;
    else {
      const sample = /^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? \S+$/.exec(line);
      expect(sample, `not a sample line: ${line}`).not.toBeNull();
      samples.add(sample![1]!);
    }
  }
  return { families, samples };
}

/** The names a query may use for each family: the family's own, and a histogram's three series. */
function queryableNames(families: Map<string, string>): Set<string> {
  const out = new Set<string>();
  for (const [name, type] of families) {
    if (type === 'histogram') for (const s of HISTOGRAM_SERIES) out.add(name + s);
    else out.add(name);
  }
  return out;
}

/** The family a series name belongs to (a histogram's _bucket/_sum/_count, or the name itself). */
function familyOf(series: string, families: Map<string, string>): string | undefined {
  if (families.has(series)) return series;
  const s = HISTOGRAM_SERIES.find((x) => series.endsWith(x));
  const base = s && series.slice(0, -s.length);
  return base && families.get(base) === 'histogram' ? base : undefined;
}

const PROMQL_KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
  'atan2',
  'inf',
  'nan',
]);

/** The metric names a PromQL expression selects (see the file comment for how). */
function metricNames(expr: string): string[] {
  const blanked = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set<string>();
  for (const m of blanked.matchAll(/(?<![\w.$:])[a-zA-Z_:][\w:]*/g)) {
    const rest = blanked.slice(m.index + m[0].length);
    if (/^\s*\(/.test(rest) || PROMQL_KEYWORDS.has(m[0].toLowerCase())) continue;
    names.add(m[0]);
  }
  return [...names];
}

interface Target {
  expr: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id?: number;
  type?: string;
  title?: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  definition?: string;
  datasource?: { type?: string; uid?: string };
}
interface Dashboard {
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
  annotations?: { list: { expr?: string; datasource?: { uid?: string } }[] };
}

/** Every panel, rows' nested panels included (a collapsed row holds its panels inside it). */
function allPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

/** A variable's query text, whichever shape Grafana saved it in (a string, or the query editor's object). */
function variableQuery(v: Variable): string {
  return typeof v.query === 'string' ? v.query : (v.query?.query ?? '');
}

/** The PromQL inside a variable query: `label_values(<selector>, <label>)` selects <selector>. */
function variableExpr(q: string): string {
  const m = /^\s*label_values\((.*),\s*\w+\s*\)\s*$/.exec(q) ?? /^\s*query_result\((.*)\)\s*$/.exec(q);
  return m ? m[1]! : q;
}

const dashboardText = readFileSync(DASHBOARD, 'utf8');
const dashboard = JSON.parse(dashboardText) as Dashboard;
const panels = allPanels(dashboard.panels);
const panelExprs = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
const otherExprs = [
  ...dashboard.templating.list
    .filter((v) => v.type === 'query')
    .map((v) => ({ panel: `variable ${v.name}`, expr: variableExpr(variableQuery(v)) })),
  ...(dashboard.annotations?.list ?? [])
    .filter((a) => a.expr !== undefined)
    .map((a) => ({ panel: 'annotation', expr: a.expr! })),
];
const allExprs = [...panelExprs, ...otherExprs];

describe('the metric name scanner itself', () => {
  it('finds metric names and nothing else: not functions, label names, label values, variables or durations', () => {
    expect(
      metricNames(
        'histogram_quantile(0.99, sum by (le, tier) (rate(lazysnap_fetch_seconds_bucket{tier=~"origin.*",instance=~"$instance"}[$__rate_interval])))',
      ),
    ).toEqual(['lazysnap_fetch_seconds_bucket']);
    expect(metricNames('sum(increase(lazysnap_a_total{x="lazysnap_b"}[$__range])) or vector(0)')).toEqual([
      'lazysnap_a_total',
    ]);
    expect(
      metricNames('sum(rate(a_sum[5m])) / on (instance) group_left sum(rate(b_count[1h] offset 1d))'),
    ).toEqual(['a_sum', 'b_count']);
    expect(metricNames('up == bool 1 and process_cpu_seconds_total > 1e3 unless Inf')).toEqual([
      'up',
      'process_cpu_seconds_total',
    ]);
    expect(metricNames('sum (rate (x_total [1m])) by (job)')).toEqual(['x_total']);
    expect(variableExpr('label_values(lazysnap_sessions_active, instance)')).toBe('lazysnap_sessions_active');
  });
});

describe('the Grafana dashboard against what /metrics serves', () => {
  let metrics: RuntimeMetrics;
  let server: { port: number; close: () => Promise<void> };
  let fresh: Exposition;
  let touched: Exposition;

  const scrape = async (): Promise<string> => {
    const res = await fetch(`http://127.0.0.1:${server.port}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    return res.text();
  };

  beforeAll(async () => {
    metrics = new RuntimeMetrics();
    server = await metrics.listen(0);
    // What a serve that has not restored anything yet exposes.
    fresh = parseExposition(await scrape());
    // Then every family once, with label values it really takes (docs/METRICS.md lists them).
    metrics.onFetch({
      hash: 'h',
      chunk: 0,
      tier: 'origin0',
      bytes: 4096,
      ms: 12,
      priority: 'demand',
      errors: [],
      misses: 0,
      timing: {
        queuedAt: 0,
        startedAt: 0,
        endedAt: 12,
        attempts: 1,
        hedge: 'none',
        hedges: 0,
        loader: newLoadTiming(),
      },
    });
    metrics.faults.inc(3);
    metrics.zeroFaults.inc();
    metrics.jsFaults.inc(2);
    metrics.faultSeconds.observe(0.004);
    metrics.stallSeconds.observe(0.005);
    metrics.stallPhaseSeconds.inc({ phase: 'fetch', tier: 'origin0' }, 0.004);
    metrics.stallPhaseSeconds.inc({ phase: 'queue', tier: '' }, 0.001);
    metrics.prefetchChunks.inc({ outcome: 'ahead' });
    metrics.prefetchMisses.inc();
    metrics.sessions.set(1);
    metrics.sessionsTotal.inc({ outcome: 'ended' });
    metrics.failClosed.inc({ action: 'poison' });
    metrics.nativeFailures.inc({ kind: 'copy', code: 'ENOENT', action: 'wake' });
    metrics.sessionsAdopted.inc();
    metrics.adoptionsRefused.inc();
    metrics.faultsAcrossRestart.inc();
    metrics.workerRestarts.inc();
    metrics.unservedSeconds.inc(0.2);
    metrics.hedges.inc({ outcome: 'won' });
    metrics.handshakeErrors.inc();
    metrics.peersRefused.inc();
    touched = parseExposition(await scrape());
  });

  afterAll(async () => {
    await server?.close();
  });

  it('serves exactly the families runtime/metrics.ts defines, and no default process metrics', () => {
    const defined = [...readFileSync(METRICS_SOURCE, 'utf8').matchAll(/\bname: '([a-z_:]+)'/g)].map(
      (m) => m[1]!,
    );
    expect(defined.length).toBeGreaterThan(20);
    expect([...fresh.families.keys()].sort()).toEqual([...defined].sort());
    expect([...touched.families.keys()].sort()).toEqual([...defined].sort());
    // collectDefaultMetrics is never called: no process_* or nodejs_* series to chart.
    for (const s of touched.samples) expect(s).toMatch(/^lazysnap_/);
  });

  it('before any restore, families with labels show only HELP and TYPE; after one of each, all have series', () => {
    // prom-client prints a labelled family without samples as its two comment lines only.
    expect(fresh.samples.has('lazysnap_fetches_total')).toBe(false);
    expect(fresh.samples.has('lazysnap_fetch_seconds_bucket')).toBe(false);
    expect(fresh.samples.has('lazysnap_faults_total')).toBe(true);
    for (const [name, type] of touched.families) {
      const series = type === 'histogram' ? HISTOGRAM_SERIES.map((s) => name + s) : [name];
      for (const s of series) expect(touched.samples, `${s} has no sample: touch it above`).toContain(s);
    }
  });

  it('is valid JSON with a Prometheus datasource variable and an instance variable', () => {
    expect(() => JSON.parse(dashboardText) as unknown).not.toThrow();
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(38);
    const ds = dashboard.templating.list.find((v) => v.name === 'datasource');
    expect(ds).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const instance = dashboard.templating.list.find((v) => v.name === 'instance');
    expect(instance).toMatchObject({ type: 'query', datasource: { uid: '${datasource}' } });
    expect(variableQuery(instance!)).toBe('label_values(lazysnap_sessions_active, instance)');
  });

  it('every panel has a unique id and a title, and queries through ${datasource}', () => {
    const ids = panels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
    for (const p of panels) {
      expect(p.title?.trim(), `panel ${p.id} has no title`).toBeTruthy();
      if (p.type === 'row') continue;
      expect(p.targets?.length, `${p.title} has no query`).toBeGreaterThan(0);
      expect(p.datasource?.uid, p.title).toBe('${datasource}');
      for (const t of p.targets!) expect(t.datasource?.uid, p.title).toBe('${datasource}');
    }
    // A collapsed row keeps its panels inside it: the walk above must have seen some.
    expect(dashboard.panels.some((p) => p.type === 'row' && (p.panels?.length ?? 0) > 0)).toBe(true);
  });

  it('every metric an expression uses (panels, variables, annotations) is one /metrics exposes', () => {
    const names = queryableNames(fresh.families);
    const unknown = allExprs.flatMap(({ panel, expr }) =>
      metricNames(expr)
        .filter((n) => !names.has(n) || !touched.samples.has(n))
        .map((n) => `${panel}: ${n}`),
    );
    expect(unknown).toEqual([]);
    expect(allExprs.every(({ expr }) => metricNames(expr).length > 0)).toBe(true);
  });

  it('every panel query filters on the instance variable and takes rates over $__rate_interval or $__range', () => {
    for (const { panel, expr } of panelExprs) {
      for (const m of expr.matchAll(/\b(lazysnap_\w+)(\{[^}]*\})?/g))
        expect(m[2] ?? '', `${panel}: ${m[1]}`).toContain('instance=~"$instance"');
      for (const m of expr.matchAll(/\[([^\]]*)\]/g))
        expect(['$__rate_interval', '$__range'], `${panel}: ${expr}`).toContain(m[1]);
    }
  });

  it('every family runtime/metrics.ts defines is on a panel, or excluded with a reason', () => {
    const shown = new Set(
      panelExprs.flatMap(({ expr }) => metricNames(expr)).map((n) => familyOf(n, fresh.families)),
    );
    const missing = [...fresh.families.keys()].filter((f) => !shown.has(f) && !NOT_ON_DASHBOARD.has(f));
    expect(missing).toEqual([]);
    for (const f of NOT_ON_DASHBOARD.keys())
      expect(fresh.families.has(f), `${f} is excluded but not defined`).toBe(true);
  });

  it('docs/METRICS.md describes every metric /metrics exposes, and no other', () => {
    const doc = readFileSync(METRICS_DOC, 'utf8');
    for (const f of touched.families.keys())
      expect(doc, `docs/METRICS.md does not mention ${f}`).toContain(`\`${f}`);
    const stale = [...doc.matchAll(/\blazysnap_\w+/g)]
      .map((m) => m[0])
      .filter((n) => familyOf(n, touched.families) === undefined);
    expect(stale).toEqual([]);
  });

  const promtool = spawnSync('promtool', ['--version']).status === 0;
  it.skipIf(!promtool)(
    `every expression parses as PromQL${promtool ? '' : ' [SKIPPED: promtool is not installed]'}`,
    () => {
      // Grafana's variables as Grafana would substitute them; a recording rule per expression.
      const rules = allExprs.map(({ expr }, i) => ({
        record: `dashboard:expr_${i}`,
        expr: expr
          .replaceAll('$__rate_interval', '1m')
          .replaceAll('$__range', '1h')
          .replaceAll('$instance', '.*'),
      }));
      const dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-dashboard-'));
      try {
        // JSON is YAML: promtool reads it as a rule file.
        const file = path.join(dir, 'rules.yml');
        writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules }] }));
        const r = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
        expect(r.status, r.stdout + r.stderr).toBe(0);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
