/**
 * `npm run fuzz`: every fuzz target of test/fuzz/ with its share of the case budget.
 *
 *   npm run fuzz                                  # 100,000 cases in all (the default)
 *   FUZZ_CASES=1000000 npm run fuzz               # a longer run
 *   npm run fuzz -- --only manifest.parse,cli.argv
 *   npm run fuzz -- --only handshake.parse --seed=-123 --path=45:2:0 --cases 1000   # replay a failure
 *
 * Prints cases, time and the slowest case per target, a failure's counterexample with the seed and
 * path that replay it, and the total; exits 1 when any target failed.
 */
import { parseArgs } from 'node:util';

// The AWS SDK's Node-version notice on load (store.urls opens s3:// stores); as in vitest.config.ts.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

import { TARGETS, type Outcome } from '../test/fuzz/properties.js';

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    cases: { type: 'string' },
    seed: { type: 'string' },
    path: { type: 'string' },
  },
});
const total = Number(values.cases ?? process.env.FUZZ_CASES ?? 100_000);
if (!Number.isSafeInteger(total) || total < 1)
  throw new Error(
    `--cases / FUZZ_CASES must be a positive integer, not ${values.cases ?? process.env.FUZZ_CASES}`,
  );
const only = values.only?.split(',');
const targets = TARGETS.filter((t) => !only || only.includes(t.name));
if (targets.length === 0)
  throw new Error(`no target named ${values.only} (targets: ${TARGETS.map((t) => t.name).join(', ')})`);
const weights = targets.reduce((n, t) => n + t.weight, 0);

const t0 = performance.now();
const results: (Outcome & { ms: number })[] = [];
for (const t of targets) {
  const numRuns = targets.length === 1 ? total : Math.max(1, Math.round((total * t.weight) / weights));
  const s = performance.now();
  const r = await t.run({
    numRuns,
    ...(values.seed ? { seed: Number(values.seed) } : {}),
    ...(values.path ? { path: values.path } : {}),
  });
  const ms = performance.now() - s;
  results.push({ ...r, ms });
  const status = r.skipped ? `SKIPPED (${r.skipped})` : r.failed ? 'FAILED' : 'ok';
  console.log(
    `${t.name.padEnd(18)} ${String(r.cases).padStart(8)} cases  ${(ms / 1000).toFixed(1).padStart(7)} s  slowest case ${r.slowestMs.toFixed(1)} ms  seed ${r.seed}  ${status}`,
  );
  if (r.notes) console.log(`  ${r.notes}`);
  if (r.failed)
    console.log(
      `${r.report}\n  replay: npm run fuzz -- --only ${t.name} --seed=${r.seed} --cases ${numRuns}${/path: "([^"]+)"/.exec(r.report) ? ` --path=${/path: "([^"]+)"/.exec(r.report)![1]}` : ''}\n`,
    );
}
const cases = results.reduce((n, r) => n + r.cases, 0);
const failed = results.filter((r) => r.failed);
console.log(
  `\n${cases} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${failed.length ? `${failed.length} target(s) FAILED (${failed.map((r) => r.target).join(', ')})` : 'no failures'}`,
);
process.exit(failed.length ? 1 : 0);
