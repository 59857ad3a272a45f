import { parseArgs } from 'node:util';

import { InvalidArgumentError } from '../../core/errors.js';
import { formatBytes, parseSize } from '../../core/units.js';
import { snapshot } from '../../sdk/snapshot.js';
import { assertCodec } from '../../store/chunk.js';
import { ENCRYPTION_MODES, type EncryptionMode } from '../../store/chunk-crypto.js';
import { DEFAULT_KEY_ID, KEY_ID_ENV } from '../../store/key-provider.js';
import { signingKey } from '../../store/signing.js';
import { UsageError, intOption, readKeyFile, required, storeFrom, type Io } from '../common.js';
import { progressReporter, type ProgressMode } from '../progress.js';

export const usage = `usage: lazysnap snapshot --mem-file FILE --store URL --id ID [options]
       lazysnap snapshot --pid PID --store URL --id ID [options]

Chunks memory into content-addressed, compressed objects: zero chunks are not stored, chunks the
store already holds are not uploaded again, and the manifest is written last.

sources (one):
  --mem-file FILE      a Firecracker memory file or raw image; with --parent, a Firecracker diff
                       snapshot (sparse: holes are pages unchanged since the parent)
  --pid PID            a live process: its private writable mappings, held stopped while copied
  --maps LIST          with --pid, which mappings: heap, stack, anon, a path substring, or
                       0xSTART-0xEND (just that address range), comma-separated (default all)

options:
  --store URL          directory, file://, or s3://bucket/prefix (required)
  --id ID              snapshot id: 1-128 of [A-Za-z0-9._-] (required)
  --vmstate FILE       Firecracker vmstate file, stored as vmstate/ID
  --parent ID          the snapshot a diff was taken relative to
  --chunk-size SIZE    power of two, multiple of the page size (default 512KiB)
  --compress CODEC     zstd or none (default zstd)
  --level N            zstd level 1-19 (default 1)
  --regions SIZES      region sizes laid end to end, e.g. 3GiB,1GiB (default: one region)
  --page-size SIZE     4KiB or 2MiB (hugepage-backed guests; chunk size must be a multiple of 2MiB)
  --concurrency N      chunks in flight (default 8; memory ~ 2 x N x chunk size)
  --progress MODE      auto (bar on a terminal), json, or quiet (default auto)
  --s3-endpoint URL    S3-compatible endpoint (also AWS_ENDPOINT_URL_S3)
  --json               print the summary as JSON

security:
  --sign-key FILE      Ed25519 private key (PEM; openssl genpkey -algorithm ed25519): writes
                       manifests/ID.json.sig, a detached signature of the manifest's exact bytes,
                       just before the manifest. serve --verify-key then refuses anything else
  --encrypt MODE       encrypt chunks and the vmstate before upload (AES-256-GCM) with the key in
                       LAZYSNAP_CHUNK_KEY (64 hex digits or base64 of 32 bytes; openssl rand -hex 32)
                       or in the file named by LAZYSNAP_CHUNK_KEY_FILE. MODE: convergent (equal
                       chunks give equal objects, so dedup across snapshots under one key still
                       works) or random (per-snapshot salt: snapshots share nothing). Object names
                       are keyed hashes: the store cannot tell what a chunk holds. A diff must be
                       encrypted like its parent
  --key-id ID          the key's name, recorded in the manifest (never the key) for serve to ask
                       for it (default: ${KEY_ID_ENV}, else "${DEFAULT_KEY_ID}")
`;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'mem-file': { type: 'string' },
      pid: { type: 'string' },
      maps: { type: 'string' },
      store: { type: 'string' },
      id: { type: 'string' },
      vmstate: { type: 'string' },
      parent: { type: 'string' },
      'chunk-size': { type: 'string', default: '512KiB' },
      compress: { type: 'string', default: 'zstd' },
      level: { type: 'string' },
      regions: { type: 'string' },
      'page-size': { type: 'string', default: '4KiB' },
      concurrency: { type: 'string' },
      progress: { type: 'string', default: 'auto' },
      's3-endpoint': { type: 'string' },
      json: { type: 'boolean', default: false },
      'sign-key': { type: 'string' },
      encrypt: { type: 'string' },
      'key-id': { type: 'string' },
    },
    strict: true,
  });
  const id = required(values, 'id');
  if ((values['mem-file'] === undefined) === (values.pid === undefined))
    throw new UsageError('give exactly one source: --mem-file FILE or --pid PID');
  const codec = values.compress;
  assertCodec(codec, '--compress');
  const pageSize = parseSize(values['page-size'], '--page-size');
  if (pageSize !== 4096 && pageSize !== 2097152)
    throw new InvalidArgumentError('--page-size', '4KiB or 2MiB', values['page-size']);
  const chunkSize = parseSize(values['chunk-size'], '--chunk-size');
  const level = intOption('level', values.level, 1, 19);
  const concurrency = intOption('concurrency', values.concurrency, 1, 256);
  const mode = values.progress as ProgressMode;
  if (!['auto', 'tty', 'json', 'quiet'].includes(mode))
    throw new InvalidArgumentError('--progress', 'auto, tty, json or quiet', mode);
  const regions = values.regions?.split(',').map((r) => parseSize(r, '--regions'));
  if (values.maps !== undefined && values.pid === undefined)
    throw new UsageError('--maps selects mappings of a process: it needs --pid');
  const pid = values.pid !== undefined ? intOption('pid', values.pid, 1, 2 ** 22)! : undefined;
  const signKey =
    values['sign-key'] !== undefined
      ? signingKey(readKeyFile('sign-key', values['sign-key']), '--sign-key')
      : undefined;
  if (values.encrypt !== undefined && !ENCRYPTION_MODES.includes(values.encrypt as EncryptionMode))
    throw new InvalidArgumentError('--encrypt', ENCRYPTION_MODES.join(' or '), values.encrypt);
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
