import { parseArgs } from 'node:util';

import { formatBytes } from '../../core/units.js';
import { assertSnapshotId } from '../../store/keys.js';
import { chunkCodec, chunkHash } from '../../store/manifest.js';
import { loadIndex } from '../../store/reader.js';
import { required, storeFrom, type Io } from '../common.js';

export const usage = `usage: lazysnap inspect --store URL --id ID [--json] [--s3-endpoint URL]

Shows a snapshot's manifest: sizes, regions, chunk counts (zero, unique, by codec), parent, vmstate.
`;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { store: { type: 'string' }, id: { type: 'string' }, json: { type: 'boolean', default: false }, 's3-endpoint': { type: 'string' } },
    strict: true,
  });
  const id = required(values, 'id');
  assertSnapshotId(id, '--id');
  const store = await storeFrom(values);
  try {
    const ix = await loadIndex(store, id, signal);
    const m = ix.manifest;
    const unique = new Set<string>();
    const byCodec: Record<string, number> = {};
    let zero = 0;
    for (let i = 0; i < ix.count; i++) {
      const h = chunkHash(ix, i);
      if (h === null) zero++;
      else {
        unique.add(h);
        const c = chunkCodec(ix, i)!;
        byCodec[c] = (byCodec[c] ?? 0) + 1;
      }
    }
    const info = {
      id: m.id,
      format: m.format,
      createdAt: m.createdAt,
      source: m.source,
      pageSize: m.pageSize,
      chunkSize: m.chunkSize,
      totalSize: m.totalSize,
      regions: m.regions,
      chunks: { total: ix.count, zero, unique: unique.size, byCodec },
      parent: m.parent,
      vmstate: m.vmstate,
    };
    if (values.json) io.out(`${JSON.stringify(info)}\n`);
    else {
      io.out(
        [
          `snapshot ${m.id} (${m.format}, created ${m.createdAt})`,
          `  source      ${m.source.kind}${m.source.detail ? ` ${m.source.detail}` : ''}`,
          `  size        ${formatBytes(m.totalSize)}, pages ${formatBytes(m.pageSize)}, chunks ${formatBytes(m.chunkSize)}`,
          `  regions     ${m.regions.map((r) => `${formatBytes(r.size)}@${r.offset}${r.address ? ` (${r.address})` : ''}`).join(', ')}`,
          `  chunks      ${ix.count} total, ${zero} zero, ${unique.size} unique (${Object.entries(byCodec).map(([c, n]) => `${n} ${c}`).join(', ') || 'none stored'})`,
          `  parent      ${m.parent ?? '-'}`,
          `  vmstate     ${m.vmstate ? `${m.vmstate.key} (${formatBytes(m.vmstate.size)})` : '-'}`,
        ].join('\n') + '\n',
      );
    }
    return 0;
  } finally {
    await store.close();
  }
}
