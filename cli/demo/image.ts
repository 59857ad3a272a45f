/**
 * A synthetic memory image for the demo, generated per chunk so that neither side needs a copy:
 * about half the chunks are zero (as in real VM memory), the rest pseudo-random words from the
 * chunk index and a seed. The restore side uses it as its "origin"; the reader regenerates it to
 * verify every byte.
 */
export function isZeroChunk(i: number, seed: number): boolean {
  return ((Math.imul(i + 1, 0x9e3779b1) ^ seed) >>> 0) % 2 === 0;
}

export function chunkBytes(i: number, length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  if (isZeroChunk(i, seed)) return out;
  const words = new Uint32Array(out.buffer, out.byteOffset, length >>> 2);
  let x = (Math.imul(i + 1, 0x85ebca6b) ^ seed ^ 0x2545f491) >>> 0 || 1;
  for (let k = 0; k < words.length; k++) {
    // xorshift32: deterministic, ~1 ns per word.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[k] = x >>> 0;
  }
  return out;
}
