import { describe, expect, it } from 'vitest';

import { hasUffd, uffdSuite } from '../helpers/skip.js';
import { cli as run } from '../helpers/cli.js';


describe('lazysnap CLI', () => {
  it('prints help (exit 0), and usage with no command (exit 2)', async () => {
    expect(await run(['--help'])).toMatchObject({ code: 0, out: expect.stringContaining('usage: lazysnap <command>') });
    expect((await run([])).code).toBe(2);
    expect(await run(['demo', '--help'])).toMatchObject({ code: 0, out: expect.stringContaining('--working-set F') });
    expect(await run(['--version'])).toMatchObject({ code: 0, out: expect.stringMatching(/^\d+\.\d+\.\d+\n$/) });
  });

  it('rejects bad usage with one clear line and exit 2', async () => {
    for (const [argv, msg] of [
      [['nope'], /unknown command "nope"/],
      [['demo', '--size', 'lots'], /--size must be a size such as 4096, 512KiB or 1GiB, received "lots"/],
      [['demo', '--chunk-size', '3000'], /chunkSize must be an integer in \[4096|chunkSize must be a power of two/],
      [['demo', '--working-set', '2'], /--working-set must be a fraction in \(0, 1\], received "2"/],
      [['demo', '--bogus'], /Unknown option '--bogus'/],
    ] as const) {
      const r = await run([...argv]);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(msg);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe.skipIf(!hasUffd)(uffdSuite('lazysnap demo'), () => {
  it('restores lazily and eagerly, verifies every byte, and fetches only the working set lazily', async () => {
    const r = await run(['demo', '--size', '16MiB', '--chunk-size', '256KiB', '--working-set', '0.25', '--latency-ms', '0', '--compare', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as {
      chunks: number;
      touched: number;
      runs: { mode: string; verified: boolean; chunksFetched: number; zeroChunks: number; stats: { zeroFaults: number; forwardedFaults: number } }[];
    };
    const [lazy, eager] = report.runs;
    expect(report).toMatchObject({ chunks: 64, touched: 16 });
    expect(lazy).toMatchObject({ mode: 'lazy', verified: true });
    expect(eager).toMatchObject({ mode: 'eager', verified: true, chunksFetched: 64 - eager!.zeroChunks });
    // Lazy fetched exactly the non-zero chunks of the working set, each once; zero chunks never reached JS.
    expect(lazy!.chunksFetched).toBe(lazy!.stats.forwardedFaults);
    expect(lazy!.chunksFetched + lazy!.stats.zeroFaults).toBe(16);
  });
});
