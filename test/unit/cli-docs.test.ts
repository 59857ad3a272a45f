/**
 * The CLI's options are defined once (cli/specs/); these hold `--help`, the README's option tables and
 * the runtime's defaults to that definition, so a flag cannot be added, renamed or re-defaulted in one
 * place only.
 */
import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import { documentedDefault, flagLabel, type CommandSpec } from '../../cli/option-spec.js';
import { COMMAND_SPECS, serveSpec, snapshotSpec } from '../../cli/specs/index.js';
import { parseDuration, parseSize } from '../../core/units.js';
import { resolveServeOptions } from '../../runtime/serve-options.js';
import { CODECS } from '../../store/chunk.js';
import { ENCRYPTION_MODES } from '../../store/chunk-crypto.js';
import { markedCommands, README, renderReadme } from '../../scripts/cli-docs.js';
import { cli } from '../helpers/cli.js';

const readme = readFileSync(README, 'utf8');

/** The rows of a command's marked table, parsed from README.md itself (not from the generator). */
function readmeRows(name: string): Map<string, { label: string; dflt: string; meaning: string }> {
  const m = new RegExp(
    `<!-- cli-options:${name}\\b[^>]*-->\\n([\\s\\S]*?)<!-- /cli-options:${name} -->`,
  ).exec(readme);
  expect(m, `README.md has no marked option table for ${name}`).not.toBeNull();
  const rows = new Map<string, { label: string; dflt: string; meaning: string }>();
  for (const line of m![1]!.trim().split('\n').slice(2)) {
    const cells = line.split(/(?<!\\)\|/).map((c) => c.trim());
    const label = cells[1]!.replace(/`/g, '');
    rows.set(label.split(' ')[0]!, { label, dflt: cells[2]!, meaning: cells[3]!.replace(/\\\|/g, '|') });
  }
  return rows;
}

const flags = (spec: CommandSpec) => Object.keys(spec.options).map((n) => `--${n}`);

describe('CLI options: one definition', () => {
  it('README.md has a table for every command, exactly as scripts/cli-docs.ts renders it', () => {
    expect(markedCommands(readme).sort()).toEqual(COMMAND_SPECS.map((c) => c.name).sort());
    // Fails when a spec changed without `node --import tsx scripts/cli-docs.ts`.
    expect(renderReadme(readme)).toBe(readme);
  });

  for (const spec of COMMAND_SPECS) {
    it(`${spec.name}: the README lists every flag with its default and meaning, and no other`, () => {
      const rows = readmeRows(spec.name);
      expect([...rows.keys()].sort()).toEqual(flags(spec).sort());
      for (const [name, o] of Object.entries(spec.options)) {
        const row = rows.get(`--${name}`)!;
        expect(row.label).toBe(flagLabel(name, o));
        expect(row.dflt).toBe(documentedDefault(o));
        expect(row.meaning).toBe(o.meaning);
      }
    });

    it(`${spec.name} --help lists every flag with its value name`, async () => {
      const r = await cli([spec.name, '--help']);
      expect(r.code).toBe(0);
      for (const [name, o] of Object.entries(spec.options))
        expect(r.out).toMatch(
          new RegExp(`^  ${flagLabel(name, o).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(  |$)`, 'm'),
        );
      // And no flag the command lacks (the notes may name another command's, e.g. snapshot --encrypt).
      const own = new Set(flags(spec));
      const listed = [...r.out.matchAll(/^ {2}(--[a-z0-9-]+)/gm)].map((m) => m[1]!);
      expect(listed.filter((f) => !own.has(f))).toEqual([]);
    });
  }

  it('every `lazysnap <command>` example in README.md uses flags that command has', () => {
    const byName = new Map(COMMAND_SPECS.map((c) => [c.name, new Set(flags(c))]));
    const example = new RegExp(`\\blazysnap (${COMMAND_SPECS.map((c) => c.name).join('|')})\\b(.*)`);
    let seen = 0;
    for (const line of readme.split('\n')) {
      const m = example.exec(line);
      if (!m) continue;
      for (const f of m[2]!.match(/--[a-z0-9-]+/g) ?? []) {
        seen++;
        expect(byName.get(m[1]!)!.has(f), `${line.trim()}: ${m[1]} has no ${f}`).toBe(true);
      }
    }
    expect(seen).toBeGreaterThan(5);
  });

  it("serve's documented defaults are the runtime's", () => {
    const r = resolveServeOptions({ stores: ['/x'], id: 'x', socketPath: '/x/s' });
    const shown = (n: keyof typeof serveSpec.options) =>
      documentedDefault(serveSpec.options[n]).replace(/`/g, '');
    expect(parseSize(shown('cache-budget'), 'x')).toBe(r.cacheBudgetBytes);
    expect(parseSize(shown('memory-budget'), 'x')).toBe(r.memoryBudgetBytes);
    expect(parseSize(shown('readahead'), 'x')).toBe(r.readaheadBytes);
    expect(Number(shown('retries'))).toBe(r.retries);
    expect(Number(shown('prefetch-window'))).toBe(r.prefetchWindow);
    expect(Number(shown('fetch-concurrency'))).toBe(r.fetchConcurrency);
    expect(Number(shown('prefetch-concurrency'))).toBe(r.prefetchConcurrency);
    expect(shown('metrics-host')).toBe(r.metricsHost);
    // The CLI passes these itself; they still match what the API does without them.
    expect(parseDuration(shown('fail-timeout'), 'x')).toBe(r.failTimeoutMs);
    expect(parseDuration(shown('attempt-timeout'), 'x')).toBe(r.attemptTimeoutMs);
    expect(parseDuration(shown('handshake-timeout'), 'x')).toBe(r.handshakeTimeoutMs);
    expect(parseDuration(shown('shutdown-grace'), 'x')).toBe(r.shutdownGraceMs);
    expect(shown('fail-closed')).toBe(r.failClosed);
    expect(shown('prefetch')).toBe(r.prefetch);
  });

  it("snapshot's choices are the store's codecs and encryption modes", () => {
    expect([...snapshotSpec.options.compress.choices].sort()).toEqual([...CODECS].sort());
    expect([...snapshotSpec.options.encrypt.choices].sort()).toEqual([...ENCRYPTION_MODES].sort());
  });
});
