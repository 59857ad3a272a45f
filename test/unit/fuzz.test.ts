/**
 * A short run of every fuzz target (test/fuzz/), a few hundred cases each with a fresh seed per
 * run; `npm run fuzz` runs the same properties with >= 100,000 cases. A failure prints fast-check's
 * counterexample with the seed and path that replay it (`npm run fuzz -- --only NAME --seed=S --path=P`).
 */
import { describe, expect, it } from 'vitest';

import { TARGETS } from '../fuzz/properties.js';

describe('fuzz (quick run; npm run fuzz for the long one)', () => {
  for (const t of TARGETS) {
    it(`${t.name}: ${t.surface}`, async (ctx) => {
      const r = await t.run({ numRuns: t.quickRuns });
      // A target that cannot run here is a skip the report shows, with its reason, never a green pass.
      if (r.skipped) ctx.skip(`${t.name} cannot run here: ${r.skipped}`);
      expect(
        r.failed,
        `${r.report}\nreplay: npm run fuzz -- --only ${t.name} --seed=${r.seed} --cases ${t.quickRuns}`,
      ).toBe(false);
      if (!r.skipped) expect(r.cases).toBe(t.quickRuns);
    });
  }
});
