/**
 * The demo's data set: what a real service holds in memory, built by a real process. Memory is cut
 * into 1 MiB arenas, each filled to a different level with 64-byte records (an id, a score and a
 * readable name, so it compresses like real heap data); the unused tail of every arena stays zero,
 * so a snapshot has zero chunks as real memory does.
 */
const ARENA = 1 << 20;
const RECORD = 64;

function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Fills `mem` (zeroed) with the data set; returns the number of records. */
export function buildDataset(mem: Uint8Array, seed: number): number {
  const view = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  const name = Buffer.alloc(RECORD - 8);
  let records = 0;
  for (let a = 0; a * ARENA < mem.byteLength; a++) {
    const end = Math.min(mem.byteLength, (a + 1) * ARENA);
    // Fill levels from 0 to 100%: about half of the memory ends up holding records.
    const used = Math.floor(((mix(a ^ seed) % 101) / 100) * (end - a * ARENA));
    for (let off = a * ARENA; off + RECORD <= a * ARENA + used; off += RECORD) {
      const id = records++;
      const h = mix(id ^ seed);
      view.setUint32(off, id, true);
      view.setUint32(off + 4, h, true);
      name.fill(0x20);
      name.write(`user-${id.toString().padStart(9, '0')} region-${h % 17} plan-${(h >>> 8) % 5}`, 'latin1');
      mem.set(name, off + 8);
    }
  }
  return records;
}
