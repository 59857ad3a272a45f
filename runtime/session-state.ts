/**
 * A session's description in its state memfd (native/src/session_state.h): what a successor needs to
 * adopt it from its descriptors alone. The fault thread keeps the removed-page bitmap, the
 * installed-chunk bitmap and its last events there; the runtime writes this metadata next to them once,
 * when the session starts: who the peer is, its regions, its restore id.
 */
import { readSync, writeSync } from 'node:fs';

import { HandshakeError } from '../core/errors.js';
import { addon } from '../native/addon.js';
import type { PageSize, Region } from '../native/index.js';
import type { Handshake } from './handshake.js';

/** The metadata's own version: a successor that does not know it refuses to adopt. */
export const SESSION_META_VERSION = 1;

export interface SessionMeta {
  v: number;
  snapshotId: string;
  restoreId: string;
  pid: number;
  pageSize: PageSize;
  shape: Handshake['shape'];
  regions: { base: string; size: number; offset: number }[];
}

export function metaOf(snapshotId: string, restoreId: string, pid: number, h: Handshake): SessionMeta {
  return {
    v: SESSION_META_VERSION,
    snapshotId,
    restoreId,
    pid,
    pageSize: h.pageSize,
    shape: h.shape,
    regions: h.regions.map((r) => ({ base: r.base.toString(16), size: r.size, offset: r.offset })),
  };
}

/** Writes the metadata into an initialized state memfd (a 4-byte length, then JSON). */
export function writeSessionMeta(fd: number, meta: SessionMeta): void {
  const layout = addon().stateLayout(fd);
  const json = Buffer.from(JSON.stringify(meta));
  if (json.length + 4 > layout.metaMax) throw new HandshakeError('too many regions to record for adoption');
  const buf = Buffer.alloc(json.length + 4);
  buf.writeUInt32LE(json.length, 0);
  json.copy(buf, 4);
  writeSync(fd, buf, 0, buf.length, layout.metaOffset);
}

/**
 * A session's metadata and the chunks it had installed, from its state memfd. Throws (EPROTO, or a
 * HandshakeError) for a layout, version or content this runtime does not read: the caller refuses to
 * adopt and fails the session closed rather than guess.
 */
export function readSessionState(fd: number): {
  meta: SessionMeta;
  handshake: Handshake;
  installed: Uint8Array;
} {
  const layout = addon().stateLayout(fd);
  const len = Buffer.alloc(4);
  readSync(fd, len, 0, 4, layout.metaOffset);
  const n = len.readUInt32LE(0);
  if (n === 0 || n + 4 > layout.metaMax) throw new HandshakeError('the session state holds no metadata');
  const json = Buffer.alloc(n);
  readSync(fd, json, 0, n, layout.metaOffset + 4);
  const meta = JSON.parse(json.toString('utf8')) as SessionMeta;
  if (meta.v !== SESSION_META_VERSION)
    throw new HandshakeError(
      `session metadata version ${meta.v} (this runtime reads ${SESSION_META_VERSION})`,
    );
  const regions: Region[] = meta.regions.map((r) => ({
    base: BigInt(`0x${r.base}`),
    size: r.size,
    offset: r.offset,
  }));
  const installed = new Uint8Array(layout.installedLength);
  readSync(fd, installed, 0, installed.length, layout.installedOffset);
  return { meta, handshake: { regions, pageSize: meta.pageSize, shape: meta.shape }, installed };
}

/** Whether bit c of a bitmap is set. */
export function bit(bits: Uint8Array, c: number): boolean {
  return ((bits[c >> 3] ?? 0) >> (c & 7)) & 1 ? true : false;
}
