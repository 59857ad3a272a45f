/**
 * Regenerates the option tables of README.md from the CLI's definitions (cli/specs/): each table sits
 * between `<!-- cli-options:COMMAND ... -->` and `<!-- /cli-options:COMMAND -->` and is rewritten whole.
 *
 *   node --import tsx scripts/cli-docs.ts           rewrite README.md
 *   node --import tsx scripts/cli-docs.ts --check   exit 1 if README.md is out of date
 *
 * test/unit/cli-docs.test.ts runs the check, so a flag added to a spec without this fails the tests.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { formatOptionTable } from '../cli/option-spec.js';
import { COMMAND_SPECS } from '../cli/specs/index.js';

export const README = fileURLToPath(new URL('../README.md', import.meta.url));

const MARKED = /(<!-- cli-options:([a-z]+)\b[^>]*-->\n)[\s\S]*?(<!-- \/cli-options:\2 -->)/g;

/** README text with every marked table regenerated; throws on a marker naming no command. */
export function renderReadme(text: string): string {
  return text.replace(MARKED, (_all, open: string, name: string, close: string) => {
    const spec = COMMAND_SPECS.find((c) => c.name === name);
    if (!spec) throw new Error(`README.md marks a table for "${name}", which is not a lazysnap command`);
    return `${open}${formatOptionTable(spec)}\n${close}`;
  });
}

/** The commands README.md has a marked table for. */
export function markedCommands(text: string): string[] {
  return [...text.matchAll(MARKED)].map((m) => m[2]!);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const text = readFileSync(README, 'utf8');
  const next = renderReadme(text);
  const missing = COMMAND_SPECS.map((c) => c.name).filter((n) => !markedCommands(text).includes(n));
  if (missing.length) {
    process.stderr.write(`README.md has no marked option table for: ${missing.join(', ')}\n`);
    process.exitCode = 1;
  } else if (process.argv.includes('--check')) {
    if (next !== text) {
      process.stderr.write(
        'README.md option tables are out of date: run node --import tsx scripts/cli-docs.ts\n',
      );
      process.exitCode = 1;
    }
  } else if (next !== text) writeFileSync(README, next);
}
