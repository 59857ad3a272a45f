import { describe, expect, it } from 'vitest';

import { progressReporter } from '../../cli/progress.js';

function sink(isTTY: boolean) {
  const lines: string[] = [];
  return { io: { out: () => {}, err: (s: string) => lines.push(s), isTTY }, lines };
}

describe('progress', () => {
  it('draws a bar on a terminal, redrawing at most every 100 ms and always at the end', () => {
    const { io, lines } = sink(true);
    const p = progressReporter('auto', io, 'snap');
    p.update(1, 100);
    p.update(2, 100); // within 100 ms: skipped
    p.update(100, 100);
    p.finish();
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^\rsnap \[\.{30}\] 1 B \/ 100 B/);
    expect(lines[1]).toMatch(/^\rsnap \[#{30}\] 100 B \/ 100 B/);
    expect(lines[2]).toBe('\n');
  });

  it('is silent off a terminal unless JSON lines are asked for', () => {
    const quiet = sink(false);
    progressReporter('auto', quiet.io, 's').update(5, 10, true);
    expect(quiet.lines).toEqual([]);
    const json = sink(false);
    progressReporter('json', json.io, 's').update(5, 10, true);
    expect(JSON.parse(json.lines[0]!)).toMatchObject({ progress: 's', done: 5, total: 10 });
  });
});
