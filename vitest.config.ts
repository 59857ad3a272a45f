import { defineConfig } from 'vitest/config';

/**
 * Files that judge a whole restore's outcome against timeouts (a fetch that does not answer within
 * --attempt-timeout fails its chunk closed). Beside the suite's other files on a 2-core runner, the
 * processes they time starved: the chaos test's fake origins answered good chunks late and they failed
 * closed (1 run in 3 beside native-lifetime and supervisor). They run after the rest, alone.
 */
const alone = ['test/unit/chaos.test.ts'];

export default defineConfig({
  test: {
    globalSetup: ['test/helpers/global-setup.ts'],
    // Suites spawn real processes and touch the kernel; two cores here, so keep parallelism modest.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    // The AWS SDK prints a Node-20 support notice on load; docs/DESIGN.md says to silence it.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    projects: [
      { extends: true, test: { name: 'suite', include: ['test/**/*.test.ts'], exclude: alone } },
      {
        extends: true,
        test: { name: 'alone', include: alone, fileParallelism: false, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
