import { parseArgs } from 'node:util';

import { formatBytes, parseDuration } from '../../core/units.js';
import { collectGarbage } from '../../snapshotter/gc.js';
import { storeFrom, type Io } from '../common.js';

export const usage = `usage: lazysnap gc --store URL [--dry-run] [--grace DURATION] [--json] [--s3-endpoint URL]

Deletes chunks that no manifest references. Chunks younger than the grace period are kept, since a
snapshot in progress uploads its chunks before its manifest.

options:
  --dry-run         list what would be deleted, delete nothing
  --grace DURATION  keep unreferenced chunks younger than this: 30s, 10m, 1h, 2d (default 1h)
`;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      store: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      grace: { type: 'string', default: '1h' },
      json: { type: 'boolean', default: false },
      's3-endpoint': { type: 'string' },
    },
    strict: true,
  });
  const graceMs = parseDuration(values.grace, '--grace');
  const store = await storeFrom(values);
  try {
    const r = await collectGarbage({
      store,
      dryRun: values['dry-run'],
      graceMs,
      ...(signal ? { signal } : {}),
    });
    if (values.json) io.out(`${JSON.stringify({ dryRun: values['dry-run'], ...r })}\n`);
    else {
      const verb = values['dry-run'] ? 'would delete' : 'deleted';
      io.out(
        `gc ${store.url}: ${r.manifests} manifests reference ${r.referencedChunks} chunks; ${verb} ${r.deleted.length} chunks (${formatBytes(r.deletedBytes)})` +
          `${r.keptYoung ? `, kept ${r.keptYoung} younger than ${values.grace}` : ''}\n`,
      );
      if (values['dry-run']) for (const k of r.deleted) io.out(`  ${k}\n`);
    }
    return 0;
  } finally {
    await store.close();
  }
}
