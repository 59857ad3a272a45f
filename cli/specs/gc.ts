import type { CommandSpec } from '../option-spec.js';

export const gcSpec = {
  name: 'gc',
  summary: 'delete chunks no manifest references',
  synopsis: ['gc --store URL [--dry-run] [--grace DURATION] [--json] [--s3-endpoint URL]'],
  description: `Deletes chunks that no manifest references. Chunks younger than the grace period are kept, since a
snapshot in progress uploads its chunks before its manifest.`,
  options: {
    store: {
      type: 'string',
      value: 'URL',
      shown: 'required',
      meaning: 'a directory, `file://` or `s3://bucket/prefix` (an HTTP origin cannot list)',
    },
    'dry-run': { type: 'boolean', default: false, meaning: 'list what would be deleted, delete nothing' },
    grace: {
      type: 'string',
      value: 'DURATION',
      default: '1h',
      meaning:
        'keep unreferenced chunks younger than this (`30s`, `10m`, `1h`, `2d`): a snapshot in progress uploads chunks before its manifest',
    },
    json: {
      type: 'boolean',
      default: false,
      meaning: 'print the result (manifests, referenced chunks, deleted keys and bytes) as JSON',
    },
    's3-endpoint': {
      type: 'string',
      value: 'URL',
      shown: '`$AWS_ENDPOINT_URL_S3`',
      meaning: 'S3-compatible endpoint for an `s3://` store (path-style)',
    },
  },
} as const satisfies CommandSpec;
