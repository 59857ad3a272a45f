import type { CommandSpec } from '../option-spec.js';

export const inspectSpec = {
  name: 'inspect',
  summary: "show a snapshot's manifest",
  synopsis: ['inspect --store URL --id ID [--verify-key FILE] [--json] [--s3-endpoint URL]'],
  description: `Shows a snapshot's manifest: sizes, regions, chunk counts (zero, unique, by codec), parent, vmstate,
whether it is signed and how its chunks are encrypted. No chunk is read.`,
  options: {
    store: {
      type: 'string',
      value: 'URL',
      shown: 'required',
      meaning: 'a directory, `file://`, `s3://bucket/prefix` or `http(s)://`',
    },
    id: { type: 'string', value: 'ID', shown: 'required', meaning: 'the snapshot' },
    'verify-key': {
      type: 'string',
      value: 'FILE',
      shown: 'off',
      meaning:
        "Ed25519 public key (PEM): check the manifest's detached signature first; an unsigned or wrongly signed manifest is refused (exit 1, `LAZYSNAP_BAD_SIGNATURE`) and not shown",
    },
    json: { type: 'boolean', default: false, meaning: 'print the manifest summary as JSON' },
    's3-endpoint': {
      type: 'string',
      value: 'URL',
      shown: '`$AWS_ENDPOINT_URL_S3`',
      meaning: 'S3-compatible endpoint for an `s3://` store (path-style)',
    },
  },
  notes: `With LAZYSNAP_CHUNK_KEY (or LAZYSNAP_CHUNK_KEY_FILE) set, an encrypted snapshot's key check is
compared with that key ("key: matches", "key: does not match", or "key: unusable (why)" for a
key that cannot be read or is for another key id).`,
} as const satisfies CommandSpec;
