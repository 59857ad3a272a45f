/**
 * Store URLs → backends (docs/DESIGN.md, "Contracts"): a path or file:// (directory), s3://bucket/prefix
 * (standard AWS credential chain; --s3-endpoint / AWS_ENDPOINT_URL_S3 for S3-compatible servers,
 * path-style), http(s):// (read-only origin). Backends with heavy dependencies load on first use.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { InvalidUrlError } from '../core/errors.js';
import type { StoreBackend } from './backend.js';
import { FileStore } from './file-store.js';

export interface OpenStoreOptions {
  /** Endpoint of an S3-compatible server (path-style addressing). @default env AWS_ENDPOINT_URL_S3 */
  s3Endpoint?: string;
  /** Keep-alive connections to an HTTP(S) origin or S3: the most requests in flight to it. @default the backend's */
  connections?: number;
}

export async function openStore(url: string, options: OpenStoreOptions = {}): Promise<StoreBackend> {
  if (typeof url !== 'string' || url.trim() === '') throw new InvalidUrlError(String(url), 'empty');
  if (url.includes('\0')) throw new InvalidUrlError(url, 'contains a NUL byte');
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined) return new FileStore(path.resolve(url));
  if (scheme === 'file') {
    let p: string;
    try {
      p = fileURLToPath(url);
    } catch (e) {
      throw new InvalidUrlError(url, (e as Error).message);
    }
    return new FileStore(p);
  }
  if (scheme === 's3') {
    const { S3Store } = await import('./s3-store.js');
    return S3Store.fromUrl(url, {
      ...(options.s3Endpoint ? { endpoint: options.s3Endpoint } : {}),
      ...(options.connections ? { connections: options.connections } : {}),
    });
  }
  if (scheme === 'http' || scheme === 'https') {
    const { HttpStore } = await import('./http-store.js');
    return new HttpStore(url, {
      ...(options.connections ? { connections: options.connections } : {}),
    });
  }
  throw new InvalidUrlError(
    url,
    `unsupported scheme ${scheme}:// (use a directory path, file://, s3:// or http(s)://)`,
  );
}
