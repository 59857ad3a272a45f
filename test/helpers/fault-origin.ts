/**
 * An HTTP origin in front of a directory store that injects faults nginx and s3rver cannot be made
 * to produce on demand: 500s and 503s, stalls, lying bytes (the first 16 replaced), one flipped
 * bit mid-body, bodies cut short of their Content-Length, delays, and objects built to exhaust memory:
 * a 48 KB zstd frame that decodes to 1.5 GiB ('bomb'), and an endless body without Content-Length
 * ('endless'). The one place a fake peer is used.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { Compressor } from 'zstd-napi';

import { FileStore } from '../../store/file-store.js';

let bombFrame: Buffer | undefined;
/** 1.5 GiB of zeros as one zstd frame that does not declare its size (~48 KB). */
export function zstdBomb(): Buffer {
  if (!bombFrame) {
    const c = new Compressor();
    c.setParameters({ contentSizeFlag: false });
    bombFrame = c.compress(Buffer.alloc(1536 * 1024 * 1024));
  }
  return bombFrame;
}

/**
 * What one request gets. `{ delayMs }`: the whole answer that much later; `{ bodyDelayMs }`: the headers at
 * once, the body that much later.
 */
export type Fault =
  | 'ok'
  | '500'
  | '503'
  | 'stall'
  | 'lie'
  | 'corrupt'
  | 'truncate'
  | 'bomb'
  | 'endless'
  | { delayMs: number }
  | { bodyDelayMs: number };

export async function fakeOrigin(root: string, plan: (n: number, url: string) => Fault) {
  const requests: string[] = [];
  /** When each request arrived (performance.now()), in the order of `requests`. */
  const arrivals: number[] = [];
  /** Bytes an 'endless' answer managed to hand to the socket. */
  const stats = { endlessBytes: 0 };
  const files = new FileStore(root);
  const server: Server = createServer((req, res) => {
    const url = req.url ?? '';
    requests.push(url);
    arrivals.push(performance.now());
    const f = plan(requests.length, url);
    if (f === 'stall') return; // never answers
    if (f === '503') return void res.writeHead(503).end('busy');
    if (f === '500') return void res.writeHead(500).end('internal error');
    if (f === 'bomb') return void res.writeHead(200, { 'content-length': zstdBomb().length }).end(zstdBomb());
    if (f === 'endless') {
      // 1 MiB pieces, chunked, for as long as the client reads (it must stop and hang up).
      res.writeHead(200);
      const piece = Buffer.alloc(1 << 20, 0x41);
      const more = (): void => {
        while (!res.destroyed && res.write(piece)) stats.endlessBytes += piece.length;
        if (!res.destroyed) res.once('drain', more);
      };
      res.on('close', () => res.removeAllListeners('drain'));
      return more();
    }
    const answer = () =>
      files.get(url.replace(/^\//, '')).then(
        (b) => {
          res.writeHead(200, { 'content-length': b.length });
          if (typeof f === 'object' && 'bodyDelayMs' in f) {
            res.flushHeaders();
            return void setTimeout(() => res.end(b), f.bodyDelayMs);
          }
          if (f === 'truncate') return void res.write(b.subarray(0, b.length >> 1), () => res.destroy());
          if (f === 'lie') return void res.end(Buffer.from(b).fill(7, 0, 16));
          if (f === 'corrupt') {
            const c = Buffer.from(b);
            c[c.length >> 1]! ^= 0x10;
            return void res.end(c);
          }
          res.end(b);
        },
        () => res.writeHead(404).end(),
      );
    if (typeof f === 'object' && 'delayMs' in f) setTimeout(() => void answer(), f.delayMs);
    else void answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    arrivals,
    stats,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}
