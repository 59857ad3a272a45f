import { formatBytes, parseDuration } from '../../core/units.js';
import { collectGarbage } from '../../snapshotter/gc.js';
import { storeFrom, type Io } from '../common.js';
import { parseOptions } from '../option-spec.js';
import { gcSpec } from '../specs/gc.js';

export const spec = gcSpec;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const values = parseOptions(gcSpec, argv);
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
          `${r.keptYoung ? `, kept ${r.keptYoung} younger than ${values.grace}` : ''}` +
          `${r.deletedTemp.length ? `; ${verb} ${r.deletedTemp.length} temp files of interrupted writes` : ''}\n`,
      );
      if (values['dry-run']) for (const k of [...r.deleted, ...r.deletedTemp]) io.out(`  ${k}\n`);
    }
    return 0;
  } finally {
    await store.close();
  }
}
