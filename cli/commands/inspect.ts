import { WrongKeyError } from '../../core/errors.js';
import { formatBytes } from '../../core/units.js';
import { openChunkCrypto } from '../../store/chunk-crypto.js';
import { envKeyProvider } from '../../store/key-provider.js';
import { assertSnapshotId, signatureKey } from '../../store/keys.js';
import { chunkCodec, chunkHash } from '../../store/manifest.js';
import { loadIndex } from '../../store/reader.js';
import { keyFingerprint, verifyKey } from '../../store/signing.js';
import { readKeyFile, required, storeFrom, type Io } from '../common.js';
import { parseOptions } from '../option-spec.js';
import { inspectSpec } from '../specs/inspect.js';

export const spec = inspectSpec;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const values = parseOptions(inspectSpec, argv);
  const id = required(values, 'id');
  assertSnapshotId(id, '--id');
  const vk =
    values['verify-key'] !== undefined
      ? verifyKey(readKeyFile('verify-key', values['verify-key']), '--verify-key')
      : undefined;
  const store = await storeFrom(values);
  try {
    const ix = await loadIndex(store, id, signal, vk ? { verifyKey: vk } : {});
    const m = ix.manifest;
    const signature = vk
      ? `verified (${keyFingerprint(vk)})`
      : (await store.has(signatureKey(id), signal ? { signal } : {}))
        ? 'present, not verified (give --verify-key)'
        : 'none';
    // The same check serve makes (openChunkCrypto): a key that is there but wrong does not match; a
    // key that cannot be had (malformed, another key id) says why instead.
    let keyMatch: boolean | null = null;
    let keyProblem: string | undefined;
    if (m.encryption && (process.env.LAZYSNAP_CHUNK_KEY || process.env.LAZYSNAP_CHUNK_KEY_FILE)) {
      keyMatch = await openChunkCrypto(m.encryption, envKeyProvider(), id, signal).then(
        () => true,
        (e: unknown) => {
          if (!(e instanceof WrongKeyError)) keyProblem = (e as Error).message;
          return false;
        },
      );
    }
    const encryption = m.encryption
      ? {
          alg: m.encryption.alg,
          mode: m.encryption.mode,
          keyId: m.encryption.keyId,
          keyMatches: keyMatch,
          ...(keyProblem ? { keyProblem } : {}),
        }
      : null;
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
      signature,
      encryption,
    };
    if (values.json) io.out(`${JSON.stringify(info)}\n`);
    else {
      io.out(
        [
          `snapshot ${m.id} (${m.format}, created ${m.createdAt})`,
          `  source      ${m.source.kind}${m.source.detail ? ` ${m.source.detail}` : ''}`,
          `  size        ${formatBytes(m.totalSize)}, pages ${formatBytes(m.pageSize)}, chunks ${formatBytes(m.chunkSize)}`,
          `  regions     ${m.regions.map((r) => `${formatBytes(r.size)}@${r.offset}${r.address ? ` (${r.address})` : ''}`).join(', ')}`,
          `  chunks      ${ix.count} total, ${zero} zero, ${unique.size} unique (${
            Object.entries(byCodec)
              .map(([c, n]) => `${n} ${c}`)
              .join(', ') || 'none stored'
          })`,
          `  parent      ${m.parent ?? '-'}`,
          `  vmstate     ${m.vmstate ? `${m.vmstate.key} (${formatBytes(m.vmstate.size)})` : '-'}`,
          `  signature   ${signature}`,
          `  encryption  ${encryption ? `${encryption.alg}, ${encryption.mode}, key id ${encryption.keyId}${keyMatch === null ? '' : keyMatch ? ', key: matches' : keyProblem ? `, key: unusable (${keyProblem})` : ', key: does not match'}` : 'none'}`,
        ].join('\n') + '\n',
      );
    }
    return 0;
  } finally {
    await store.close();
  }
}
