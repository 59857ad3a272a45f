/**
 * Handshake payloads for a given snapshot shape: valid ones built from a model (so the parser must
 * accept them, with exactly these regions), and every kind of damage to them.
 */
import fc from 'fast-check';

import type { PageSize } from '../../native/index.js';
import type { SnapshotShape } from '../../runtime/handshake.js';
import { shown } from './target.js';
import { deepNesting, jsonTree, junkBytes, mutateBytes, mutateTree, render, toTree } from './arbitraries.js';

export const HANDSHAKE_FIELDS = [
  'base_host_virt_addr',
  'size',
  'offset',
  'page_size',
  'page_size_kib',
] as const;

export interface ModelRegion {
  base: bigint;
  size: number;
  offset: number;
}

export interface Payload {
  bytes: Buffer;
  /** Set when the payload is valid by construction: the regions the parser must return. */
  valid?: { regions: ModelRegion[]; shape: 'v1' | 'v7' | 'v12' };
  kind: string;
}

/**
 * 1–4 regions inside the snapshot, non-overlapping in both address space and snapshot offsets,
 * page aligned, in one of the three payload shapes (v1 only for 4 KiB pages: it implies them).
 */
export function validPayload(snap: SnapshotShape): fc.Arbitrary<Payload> {
  const pages = snap.totalSize / snap.pageSize;
  return fc
    .record({
      cuts: fc.uniqueArray(fc.integer({ min: 0, max: pages }), { minLength: 2, maxLength: 8 }),
      gaps: fc.array(fc.nat(64), { minLength: 4, maxLength: 4 }),
      base: fc.bigInt({ min: 1n, max: 1n << 30n }),
      shape: fc.constantFrom<'v1' | 'v7' | 'v12'>(
        ...(snap.pageSize === 4096 ? (['v1', 'v7', 'v12'] as const) : (['v7', 'v12'] as const)),
      ),
      order: fc.nat(),
    })
    .filter(({ cuts }) => new Set(cuts).size >= 2)
    .map(({ cuts, gaps, base, shape, order }) => {
      const c = [...cuts].sort((a, b) => a - b);
      const spans: [number, number][] = [];
      for (let i = 0; i + 1 < c.length && spans.length < 4; i += 2)
        if (c[i + 1]! > c[i]!) spans.push([c[i]!, c[i + 1]!]);
      if (spans.length === 0) spans.push([c[0]!, c[c.length - 1]!]);
      const ps = BigInt(snap.pageSize);
      let addr = base * ps;
      const regions = spans.map(([a, b], i): ModelRegion => {
        const r = { base: addr, size: (b - a) * snap.pageSize, offset: a * snap.pageSize };
        addr += BigInt(r.size) + BigInt(gaps[i]!) * ps;
        return r;
      });
      // Firecracker lists regions in guest order; a peer may not: rotate them.
      const rot = order % regions.length;
      const listed = [...regions.slice(rot), ...regions.slice(0, rot)];
      const objs = listed.map((r) => ({
        base_host_virt_addr: Number(r.base),
        size: r.size,
        offset: r.offset,
        ...(shape === 'v12' ? { page_size: snap.pageSize } : {}),
        ...(shape !== 'v1' ? { page_size_kib: snap.pageSize } : {}),
      }));
      return {
        bytes: Buffer.from(JSON.stringify(objs)),
        valid: { regions: listed, shape },
        kind: `valid-${shape}`,
      };
    });
}

/** Every kind of payload, valid ones included; `maxBytes` bounds the junk and nesting. */
export function anyPayload(snap: SnapshotShape, maxBytes: number): fc.Arbitrary<Payload> {
  const valid = validPayload(snap);
  const tree = valid.chain((p) =>
    mutateTree(toTree(JSON.parse(p.bytes.toString()) as unknown), HANDSHAKE_FIELDS).map((t): Payload => ({
      bytes: Buffer.from(render(t)),
      kind: 'mutated-tree',
    })),
  );
  const bytes = valid.chain((p) =>
    mutateBytes(p.bytes).map((b): Payload => ({ bytes: b, kind: 'mutated-bytes' })),
  );
  const any = jsonTree(HANDSHAKE_FIELDS).map((t): Payload => ({
    bytes: Buffer.from(render(t)),
    kind: 'json',
  }));
  const arrOfObj = fc
    .array(jsonTree(HANDSHAKE_FIELDS, 2), { minLength: 1, maxLength: 4 })
    .map((items): Payload => ({ bytes: Buffer.from(render({ t: 'arr', items })), kind: 'json-array' }));
  return fc
    .oneof(
      { weight: 3, arbitrary: valid },
      { weight: 4, arbitrary: tree },
      { weight: 3, arbitrary: bytes },
      { weight: 2, arbitrary: any },
      { weight: 2, arbitrary: arrOfObj },
      {
        weight: 1,
        arbitrary: junkBytes(Math.min(maxBytes, 4096)).map((b): Payload => ({ bytes: b, kind: 'junk' })),
      },
      {
        weight: 1,
        arbitrary: deepNesting(Math.max(1, Math.floor(maxBytes / 6))).map((b): Payload => ({
          bytes: b,
          kind: 'deep',
        })),
      },
    )
    .map((p) => ({ ...p, bytes: shown(p.bytes) }));
}

/** Independent check of an accepted handshake against the snapshot (what the parser promises). */
export function checkAccepted(
  h: { regions: { base: bigint; size: number; offset: number }[]; pageSize: PageSize },
  snap: SnapshotShape,
): string | undefined {
  if (h.pageSize !== snap.pageSize) return `page size ${h.pageSize} accepted for a ${snap.pageSize} snapshot`;
  if (h.regions.length < 1 || h.regions.length > 1024) return `${h.regions.length} regions accepted`;
  const ps = BigInt(snap.pageSize);
  for (const r of h.regions) {
    if (!(
      r.size > 0 &&
      r.size % snap.pageSize === 0 &&
      r.offset % snap.pageSize === 0 &&
      r.base % ps === 0n &&
      r.base >= 0n
    ))
      return `unaligned or empty region accepted: ${JSON.stringify({ ...r, base: String(r.base) })}`;
    if (r.offset + r.size > snap.totalSize)
      return `region beyond the snapshot accepted: offset ${r.offset} size ${r.size} of ${snap.totalSize}`;
  }
  for (let i = 0; i < h.regions.length; i++) {
    for (let j = i + 1; j < h.regions.length; j++) {
      const a = h.regions[i]!;
      const b = h.regions[j]!;
      if (a.base < b.base + BigInt(b.size) && b.base < a.base + BigInt(a.size))
        return `regions ${i} and ${j} overlap in address space`;
      if (a.offset < b.offset + b.size && b.offset < a.offset + a.size)
        return `regions ${i} and ${j} overlap in the snapshot`;
    }
  }
  return undefined;
}
