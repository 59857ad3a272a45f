import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

import { repoRoot } from '../helpers/fixtures.js';

/** Runs a snippet that logs through core/logger in a child and returns its stderr lines as JSON. */
function logLines(snippet: string, env: Record<string, string> = {}): Record<string, unknown>[] {
  const code = `import('./core/logger.ts').then(async (m) => { ${snippet} })`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', code], {
    cwd: repoRoot,
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  expect(r.status, r.stderr).toBe(0);
  return r.stderr
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('logger', () => {
  it('writes JSON to stderr with component and restore bindings on children', () => {
    const lines = logLines(
      "const log = m.componentLogger('runtime.session').child({ snapshotId: 'snap1', restoreId: 'r1' }); log.info({ faults: 3 }, 'session done'); m.rootLogger().flush();",
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 30,
      component: 'runtime.session',
      snapshotId: 'snap1',
      restoreId: 'r1',
      faults: 3,
      msg: 'session done',
    });
  });

  it('honours LAZYSNAP_LOG_LEVEL and never prints credentials', () => {
    const lines = logLines(
      "const log = m.rootLogger(); log.debug('hidden?'); log.warn({ s3: { secretAccessKey: 'AKIA-SECRET-123' } }, 'creds'); log.flush();",
      { LAZYSNAP_LOG_LEVEL: 'warn' },
    );
    expect(lines.map((l) => l.msg)).toEqual(['creds']);
    expect(JSON.stringify(lines)).not.toContain('AKIA-SECRET-123');
    expect(lines[0]).toMatchObject({ s3: { secretAccessKey: '[redacted]' } });
  });
});
