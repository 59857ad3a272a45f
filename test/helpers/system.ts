/** This machine, for helpers that start real programs: where an executable is, and a free port. */
import { accessSync, constants } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/** The first executable `name` on PATH, then in `extraDirs` (sbin directories are often off PATH). */
export function findExecutable(name: string, extraDirs: readonly string[] = []): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), ...extraDirs]) {
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A TCP port free on 127.0.0.1 a moment ago (callers retry if another process takes it first). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}
