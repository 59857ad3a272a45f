/** Snapshot an image into a directory store and serve it: the common setup of the serve suites. */
import path from 'node:path';

import { RestoreServer, type ServeOptions } from '../../runtime/restore-server.js';
import { createSnapshot, type SnapshotOptions, type SnapshotSummary } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { FileStore } from '../../store/file-store.js';

export async function snapshotTo(
  storeDir: string,
  imagePath: string,
  id: string,
  chunkSize: number,
  extra: Partial<Omit<SnapshotOptions, 'source' | 'store' | 'id' | 'chunkSize'>> = {},
): Promise<SnapshotSummary> {
  const src = await openMemoryFile(imagePath);
  try {
    return await createSnapshot({ source: src, store: new FileStore(storeDir), id, chunkSize, ...extra });
  } finally {
    await src.close();
  }
}

export async function serve(
  dir: string,
  opts: Partial<ServeOptions> & Pick<ServeOptions, 'stores' | 'id'>,
): Promise<RestoreServer> {
  return RestoreServer.start({ socketPath: path.join(dir, 'run', 'uffd.sock'), ...opts });
}

/** Resolves once the server has ended n sessions (their summaries are logged and kept). */
export async function summaries(
  server: RestoreServer,
  n: number,
  timeoutMs = 20_000,
): Promise<RestoreServer['summaries']> {
  const end = Date.now() + timeoutMs;
  while (server.summaries.length < n) {
    if (Date.now() > end)
      throw new Error(`only ${server.summaries.length} of ${n} sessions ended within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return server.summaries;
}
