/**
 * Regenerates docs/images/trace-timeline.png, the README's picture of `lazysnap trace`: the page of a
 * recorded session (a trace file `serve --trace-dir` wrote) or, without one, of a made-up but realistic
 * session (test/helpers/synthetic-trace.ts, seed 42), as headless Chromium draws it. Needs `chromium`
 * (Debian's package).
 *
 *   node --import tsx scripts/trace-screenshot.ts [TRACE.json]
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { readTraces } from '../cli/trace/read-trace.js';
import { renderTraceHtml } from '../cli/trace/render-html.js';
import { chromiumPath, headless } from '../test/helpers/chromium.js';
import { repoRoot } from '../test/helpers/fixtures.js';
import { syntheticTrace } from '../test/helpers/synthetic-trace.js';

if (!chromiumPath) {
  process.stderr.write('needs chromium (apt-get install -y chromium)\n');
  process.exit(1);
}
const out = path.join(repoRoot, 'docs', 'images', 'trace-timeline.png');
const dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-trace-shot-'));
try {
  const page = path.join(dir, 'r-7f3a91c2.trace.html');
  const file = process.argv[2];
  writeFileSync(
    page,
    renderTraceHtml(file ? readTraces(readFileSync(file, 'utf8'), file)[0]! : syntheticTrace({ seed: 42 })),
  );
  const r = await headless(pathToFileURL(page).href, [`--screenshot=${out}`, '--window-size=1400,1760']);
  if (r.console.length > 0) throw new Error(`the page logged:\n${r.console.join('\n')}`);
  process.stdout.write(
    `wrote ${path.relative(repoRoot, out)} (${Math.round(statSync(out).size / 1024)} KiB)\n`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
