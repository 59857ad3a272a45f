/**
 * A clone of the repository must explain itself (issue 14): the README once sent readers to
 * ../shared/DESIGN.md, which only existed beside the developers' checkouts. So every relative
 * Markdown link in the documentation must reach a file inside the repository (and, with #anchor,
 * a heading of that file), and every docs/*.md or bench/README.md a source comment names must exist.
 *
 * Deliberate simplifications: inline links only (`[text](path)`; the docs use no reference-style
 * links), ATX headings only (`## Title`), and comments found by a regex that does not know about
 * strings: a `//` inside a string only makes more text scanned, never less.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { repoRoot } from '../helpers/fixtures.js';

/** The documents a reader of a clone follows links in. */
function documents(): string[] {
  const infra = readdirSync(path.join(repoRoot, 'infra'), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.md'))
    .map((f) => path.join('infra', f));
  const docs = readdirSync(path.join(repoRoot, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => path.join('docs', f));
  return ['README.md', ...docs, 'bench/README.md', ...infra, 'test/fixtures/contracts/README.md'].sort();
}

/** Build output, dependencies and scratch space: not the repository's own sources. */
const SKIP_DIRS = new Set(['node_modules', 'dist', 'build', 'bin', '.git', '.lazysnap']);

function sources(dir = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(repoRoot, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (!SKIP_DIRS.has(e.name)) out.push(...sources(rel));
    } else if (/\.(ts|c|h)$/.test(e.name)) out.push(rel);
  }
  return out;
}

/** GitHub's heading anchor: the rendered text, lowercased, punctuation dropped, each space a hyphen. */
function githubSlug(heading: string): string {
  return heading
    .trim()
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/<[^>]+>/g, '')
    .replace(/[`*]/g, '')
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-');
}

/** Each line outside fenced code blocks, with inline code blanked out (same length, no brackets). */
function proseLines(text: string): { line: string; n: number }[] {
  const out: { line: string; n: number }[] = [];
  let fenced = false;
  text.split('\n').forEach((raw, i) => {
    if (/^\s*(```|~~~)/.test(raw)) fenced = !fenced;
    else if (!fenced) out.push({ line: raw.replace(/`[^`]*`/g, (m) => 'x'.repeat(m.length)), n: i + 1 });
  });
  return out;
}

/** The anchors of a Markdown file's headings, duplicates numbered as GitHub does (-1, -2, ...). */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  let fenced = false;
  for (const line of text.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const h = fenced ? null : /^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/.exec(line);
    if (!h) continue;
    const slug = githubSlug(h[1]!);
    const k = seen.get(slug) ?? 0;
    seen.set(slug, k + 1);
    out.add(k === 0 ? slug : `${slug}-${k}`);
  }
  return out;
}

const LINK = /\[(?:[^[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g;
const EXTERNAL = /^(https?|mailto):/i;

/**
 * What is wrong with the relative links of `text` (Markdown at `file`, relative to the repository
 * root), one line each: a target outside the repository, a target that does not exist, an anchor
 * with no heading. `read` gives the text of a linked Markdown file.
 */
function brokenLinks(
  file: string,
  text: string,
  read = (abs: string) => readFileSync(abs, 'utf8'),
): string[] {
  const problems: string[] = [];
  for (const { line, n } of proseLines(text)) {
    for (const m of line.matchAll(LINK)) {
      const target = m[1]!;
      if (EXTERNAL.test(target)) continue;
      const hash = target.indexOf('#');
      const rel = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
      const anchor = hash < 0 ? undefined : target.slice(hash + 1);
      const abs =
        rel === ''
          ? path.join(repoRoot, file)
          : path.resolve(repoRoot, rel.startsWith('/') ? '.' : path.dirname(file), rel.replace(/^\/+/, ''));
      const inRepo = path.relative(repoRoot, abs);
      const where = `${file}:${n}: ${target}`;
      if (inRepo.startsWith('..') || path.isAbsolute(inRepo)) problems.push(`${where} leaves the repository`);
      else if (!existsSync(abs)) problems.push(`${where}: no such file`);
      else if (anchor !== undefined && abs.endsWith('.md') && !anchors(read(abs)).has(anchor))
        problems.push(`${where}: no heading with that anchor in ${inRepo}`);
    }
  }
  return problems;
}

/** The repository documents named in a source file's comments that do not exist. */
function missingDocRefs(file: string, text: string): string[] {
  const problems: string[] = [];
  for (const comment of text.match(/\/\/[^\n]*|\/\*[\s\S]*?\*\//g) ?? []) {
    for (const m of comment.matchAll(/(?<![\w./-])(docs\/[\w-]+(?:\/[\w-]+)*\.md|bench\/README\.md)/g)) {
      if (!existsSync(path.join(repoRoot, m[1]!))) problems.push(`${file}: ${m[1]} does not exist`);
    }
  }
  return problems;
}

describe('documentation links', () => {
  it('finds the documents to check', () => {
    const docs = documents();
    expect(docs).toContain('docs/DESIGN.md');
    expect(docs).toContain('docs/PROTOCOL.md');
    expect(docs).toContain('infra/modules/iam/README.md');
  });

  it.each(documents())('every relative link in %s reaches a file (and heading) in the repository', (file) => {
    expect(brokenLinks(file, readFileSync(path.join(repoRoot, file), 'utf8'))).toEqual([]);
  });

  it('every docs/*.md and bench/README.md named in a .ts, .c or .h comment exists', () => {
    // This file names missing documents on purpose, to show the checker catches them.
    const files = sources().filter((f) => f !== path.join('test', 'unit', 'links.test.ts'));
    expect(files.length).toBeGreaterThan(100);
    const problems = files.flatMap((f) => missingDocRefs(f, readFileSync(path.join(repoRoot, f), 'utf8')));
    expect(problems).toEqual([]);
  });
});

describe('the link checker itself', () => {
  const md = [
    '# A title',
    '## The manifest (`lazysnap/1`)',
    '## UFFD_EVENT_REMOVE',
    '## Twice',
    '## Twice',
    '```',
    '## not a heading',
    '[inside a fence](gone.md)',
    '```',
  ].join('\n');

  it('computes GitHub anchors', () => {
    expect([...anchors(md)]).toEqual([
      'a-title',
      'the-manifest-lazysnap1',
      'uffd_event_remove',
      'twice',
      'twice-1',
    ]);
    expect(githubSlug('P3: replay beats lazy; eager by ~10–17×')).toBe('p3-replay-beats-lazy-eager-by-1017');
  });

  it('reports a missing file, a link out of the repository and a missing anchor; passes good ones', () => {
    const text = [
      '[ok](README.md) [ok](docs/FORMAT.md#signed-manifests) [web](https://example.com/x.md) `[code](gone.md)`',
      '[gone](docs/NOPE.md)',
      '[out](../shared/DESIGN.md)',
      '[anchor](docs/FORMAT.md#no-such-heading)',
      '[self](#no-such-heading-here)',
    ].join('\n');
    expect(brokenLinks('README.md', text)).toEqual([
      'README.md:2: docs/NOPE.md: no such file',
      'README.md:3: ../shared/DESIGN.md leaves the repository',
      'README.md:4: docs/FORMAT.md#no-such-heading: no heading with that anchor in docs/FORMAT.md',
      'README.md:5: #no-such-heading-here: no heading with that anchor in README.md',
    ]);
  });

  it('checks anchors against headings outside code fences, numbering duplicates', () => {
    // docs/FORMAT.md exists, so only the anchors are in question; its text is the sample's.
    const text = '[a](FORMAT.md#twice-1) [b](FORMAT.md#uffd_event_remove) [c](FORMAT.md#not-a-heading)';
    expect(brokenLinks('docs/x.md', text, () => md)).toEqual([
      'docs/x.md:1: FORMAT.md#not-a-heading: no heading with that anchor in docs/FORMAT.md',
    ]);
    expect(brokenLinks('docs/x.md', md)).toEqual([]); // its one link is inside a code fence
  });

  it('reports documents named in comments that do not exist, and only in comments', () => {
    const ts = [
      '/** See docs/SDK.md and docs/NOPE.md. */',
      "const s = 'docs/ALSO-NOPE.md';",
      '// bench/README.md, and https://example.com/docs/REMOTE.md',
    ].join('\n');
    expect(missingDocRefs('x.ts', ts)).toEqual(['x.ts: docs/NOPE.md does not exist']);
  });
});
