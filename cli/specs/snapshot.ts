import { DEFAULT_KEY_ID, KEY_ID_ENV } from '../../store/key-provider.js';
import type { CommandSpec } from '../option-spec.js';

const SOURCES = 'sources (one)';

export const snapshotSpec = {
  name: 'snapshot',
  summary: 'chunk VM or process memory into a store',
  synopsis: [
    'snapshot --mem-file FILE --store URL --id ID [options]',
    'snapshot --pid PID --store URL --id ID [options]',
  ],
  description: `Chunks memory into content-addressed, compressed objects: zero chunks are not stored, chunks the
store already holds are not uploaded again, and the manifest is written last.`,
  options: {
    'mem-file': {
      type: 'string',
      value: 'FILE',
      group: SOURCES,
      meaning:
        'a Firecracker memory file or raw image; with `--parent`, a Firecracker diff snapshot (sparse: holes are pages unchanged since the parent)',
    },
    pid: {
      type: 'string',
      value: 'PID',
      group: SOURCES,
      meaning:
        'a live process: its private writable mappings, held with SIGSTOP while copied, original addresses recorded',
    },
    maps: {
      type: 'string',
      value: 'LIST',
      shown: 'all',
      group: SOURCES,
      meaning:
        'with `--pid`, which mappings: `heap`, `stack`, `anon`, a path substring, or `0xSTART-0xEND` (just that address range), comma-separated',
    },
    store: {
      type: 'string',
      value: 'URL',
      shown: 'required',
      meaning: 'where to write: a directory, `file://` or `s3://bucket/prefix`',
    },
    id: {
      type: 'string',
      value: 'ID',
      shown: 'required',
      api: 'id',
      meaning: '1-128 of `[A-Za-z0-9._-]`; an id already in the store is refused',
    },
    vmstate: { type: 'string', value: 'FILE', meaning: 'a Firecracker vmstate file, stored as `vmstate/ID`' },
    parent: {
      type: 'string',
      value: 'ID',
      api: 'parent',
      meaning:
        'with `--mem-file`, the snapshot a diff was taken relative to; unchanged chunks are inherited without reading',
    },
    'chunk-size': {
      type: 'string',
      value: 'SIZE',
      default: '512KiB',
      api: 'chunkSize',
      meaning: 'power of two, multiple of the page size. Larger chunks: fewer requests, more bytes per fault',
    },
    compress: {
      type: 'string',
      value: 'CODEC',
      default: 'zstd',
      choices: ['none', 'zstd'],
      meaning: '`zstd` or `none`',
    },
    level: {
      type: 'string',
      value: 'N',
      shown: '`1`',
      api: 'level',
      meaning: 'zstd level 1-19: higher is smaller and slower to write, not slower to read',
    },
    regions: {
      type: 'string',
      value: 'SIZES',
      shown: 'one region',
      meaning:
        'with `--mem-file`, region sizes laid end to end, e.g. `3GiB,1GiB` (a VM over 3 GiB has two on x86)',
    },
    'page-size': {
      type: 'string',
      value: 'SIZE',
      shown: '`4KiB`',
      meaning:
        'with `--mem-file`, `4KiB` or `2MiB` (hugepage-backed guests; the chunk size must then be a multiple of 2 MiB)',
    },
    concurrency: {
      type: 'string',
      value: 'N',
      shown: '`8`',
      api: 'concurrency',
      meaning: 'chunks in flight, 1-256; memory is about 2 × N × chunk size',
    },
    progress: {
      type: 'string',
      value: 'MODE',
      default: 'auto',
      choices: ['auto', 'tty', 'json', 'quiet'],
      meaning:
        '`tty`: a bar on stderr; `json`: JSON lines on stderr; `quiet`: nothing; `auto`: a bar when stderr is a terminal, else nothing',
    },
    's3-endpoint': {
      type: 'string',
      value: 'URL',
      shown: '`$AWS_ENDPOINT_URL_S3`',
      api: 's3Endpoint',
      meaning: 'S3-compatible endpoint for an `s3://` store (path-style)',
    },
    json: {
      type: 'boolean',
      default: false,
      meaning: 'print the summary (total, zero, unique, uploaded bytes, dedup ratio, MB/s) as JSON',
    },
    'sign-key': {
      type: 'string',
      value: 'FILE',
      shown: 'unsigned',
      group: 'security',
      meaning:
        "Ed25519 private key (PEM; `openssl genpkey -algorithm ed25519`): writes `manifests/ID.json.sig`, a detached signature of the manifest's exact bytes, just before the manifest ([docs/FORMAT.md](docs/FORMAT.md#signed-manifests)). `serve --verify-key` then refuses anything else",
    },
    encrypt: {
      type: 'string',
      value: 'MODE',
      shown: 'off',
      choices: ['convergent', 'random'],
      group: 'security',
      meaning:
        'encrypt chunks and the vmstate before upload (AES-256-GCM) with the key in `LAZYSNAP_CHUNK_KEY` (64 hex digits or base64 of 32 bytes; `openssl rand -hex 32`) or in the file named by `LAZYSNAP_CHUNK_KEY_FILE`. `convergent`: equal chunks give equal objects, so dedup across snapshots under one key still works; `random`: a per-snapshot salt, snapshots share nothing. Object names are keyed hashes. A diff must be encrypted like its parent ([docs/FORMAT.md](docs/FORMAT.md#encrypted-chunks))',
    },
    'key-id': {
      type: 'string',
      value: 'ID',
      shown: `\`$${KEY_ID_ENV}\`, else \`${DEFAULT_KEY_ID}\``,
      group: 'security',
      meaning:
        "with `--encrypt`, the key's name, recorded in the manifest (never the key) for serve to ask for it",
    },
  },
} as const satisfies CommandSpec;
