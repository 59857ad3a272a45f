import { InvalidArgumentError } from '../../core/errors.js';
import { formatBytes, parseSize } from '../../core/units.js';
import { snapshot } from '../../sdk/snapshot.js';
import type { Codec } from '../../store/chunk.js';
import type { EncryptionMode } from '../../store/chunk-crypto.js';
import { DEFAULT_KEY_ID, KEY_ID_ENV } from '../../store/key-provider.js';
import { signingKey } from '../../store/signing.js';
import { UsageError, intOption, readKeyFile, required, storeFrom, type Io } from '../common.js';
import { parseOptions } from '../option-spec.js';
import { progressReporter, type ProgressMode } from '../progress.js';
import { snapshotSpec } from '../specs/snapshot.js';

export const spec = snapshotSpec;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const values = parseOptions(snapshotSpec, argv);
  const id = required(values, 'id');
  if ((values['mem-file'] === undefined) === (values.pid === undefined))
    throw new UsageError('give exactly one source: --mem-file FILE or --pid PID');
  // A process's layout is its own mappings: these describe a memory file and would be ignored.
  const fileOnly = (['regions', 'page-size', 'parent'] as const).filter((n) => values[n] !== undefined);
  if (values.pid !== undefined && fileOnly.length > 0) {
    const flags = fileOnly.map((n) => `--${n}`);
    const named = flags.length > 1 ? `${flags.slice(0, -1).join(', ')} and ${flags.at(-1)!}` : flags[0]!;
    throw new UsageError(
      `${named} ${flags.length > 1 ? 'describe' : 'describes'} a memory file, not a process: drop ${flags.length > 1 ? 'them' : 'it'} ` +
        'with --pid (a process is snapshotted with its own mappings and page size), or give --mem-file',
    );
  }
  // Checked against the spec's choices by parseOptions.
  const codec = values.compress as Codec;
  const pageSize = parseSize(values['page-size'] ?? '4KiB', '--page-size');
  if (pageSize !== 4096 && pageSize !== 2097152)
    throw new InvalidArgumentError('--page-size', '4KiB or 2MiB', values['page-size']);
  const chunkSize = parseSize(values['chunk-size'], '--chunk-size');
  const level = intOption('level', values.level, 1, 19);
  const concurrency = intOption('concurrency', values.concurrency, 1, 256);
  const mode = values.progress as ProgressMode;
  const regions = values.regions?.split(',').map((r) => parseSize(r, '--regions'));
  if (values.maps !== undefined && values.pid === undefined)
    throw new UsageError('--maps selects mappings of a process: it needs --pid');
  const pid = values.pid !== undefined ? intOption('pid', values.pid, 1, 2 ** 22)! : undefined;
  const signKey =
    values['sign-key'] !== undefined
      ? signingKey(readKeyFile('sign-key', values['sign-key']), '--sign-key')
      : undefined;
  if (values['key-id'] !== undefined && values.encrypt === undefined)
    throw new UsageError(
      '--key-id names the key of --encrypt: give --encrypt convergent or --encrypt random',
    );
  const keyId = values['key-id'] ?? process.env[KEY_ID_ENV] ?? DEFAULT_KEY_ID;
  const encrypt =
    values.encrypt !== undefined ? { mode: values.encrypt as EncryptionMode, keyId } : undefined;
  const store = await storeFrom(values);
  const bar = progressReporter(mode, io, id);
  try {
    const summary = await snapshot({
      store,
      id,
      source:
        pid !== undefined
          ? { pid, ...(values.maps !== undefined ? { maps: values.maps.split(',') } : {}) }
          : { memoryFile: values['mem-file']!, pageSize, ...(regions ? { regions } : {}) },
      chunkSize,
      codec,
      ...(values.vmstate !== undefined ? { vmstateFile: values.vmstate } : {}),
      ...(level !== undefined ? { level } : {}),
      ...(concurrency !== undefined ? { concurrency } : {}),
      ...(values.parent !== undefined ? { parent: values.parent } : {}),
      ...(signKey ? { signKey } : {}),
      ...(encrypt ? { encrypt } : {}),
      ...(signal ? { signal } : {}),
      onProgress: (p) => bar.update(p.bytesDone, p.totalSize),
    });
    bar.finish();
    if (values.json) io.out(`${JSON.stringify(summary)}\n`);
    else {
      io.out(
        `snapshot ${summary.id}: ${formatBytes(summary.totalSize)} in ${summary.chunks} chunks\n` +
          `  zero        ${summary.zeroChunks} chunks (not stored)\n` +
          `  unique      ${summary.uniqueChunks} chunks${summary.inheritedChunks ? `, ${summary.inheritedChunks} inherited from ${values.parent}` : ''}\n` +
          `  uploaded    ${summary.uploadedChunks} chunks, ${formatBytes(summary.uploadedBytes)} (dedup+compression ${summary.dedupRatio.toFixed(2)}x)\n` +
          `  throughput  ${summary.mbPerSecond.toFixed(0)} MB/s (${(summary.elapsedMs / 1000).toFixed(2)} s)\n` +
          (summary.encryption
            ? `  encrypted   aes-256-gcm, ${summary.encryption.mode}, key id ${summary.encryption.keyId}\n`
            : '') +
          (summary.signedBy ? `  signed      ${summary.signedBy}\n` : ''),
      );
    }
    return 0;
  } finally {
    await store.close();
  }
}
