/**
 * Random benchmark images, written in 64 MiB pieces so that the driver process never holds the image
 * in memory (test/helpers/images.ts keeps it as one Buffer, which suits tests that compare bytes). A
 * driver holding an idle 1 GiB while the handlers run perturbed the populate numbers on this machine;
 * see bench/ANALYSIS.md.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';

const PIECE = 64 * 1024 * 1024;

export function writeRandomImage(file: string, size: number): string {
  const fd = openSync(file, 'w', 0o600);
  try {
    for (let off = 0; off < size; off += PIECE) {
      const piece = randomBytes(Math.min(PIECE, size - off));
      for (let done = 0; done < piece.length;)
        done += writeSync(fd, piece, done, piece.length - done, off + done);
    }
  } finally {
    closeSync(fd);
  }
  return file;
}

/**
 * A random image in which the chunks `isZero` picks are zero bytes (written, not holes: zero
 * detection must read them like data), written in 64 MiB pieces like writeRandomImage.
 */
export function writeZeroRichImage(
  file: string,
  size: number,
  chunkSize: number,
  isZero: (chunk: number) => boolean,
): string {
  const fd = openSync(file, 'w', 0o600);
  try {
    for (let off = 0; off < size; off += PIECE) {
      const piece = randomBytes(Math.min(PIECE, size - off));
      for (let c = 0; c < piece.length; c += chunkSize)
        if (isZero((off + c) / chunkSize)) piece.fill(0, c, c + chunkSize);
      for (let done = 0; done < piece.length;)
        done += writeSync(fd, piece, done, piece.length - done, off + done);
    }
  } finally {
    closeSync(fd);
  }
  return file;
}

/**
 * Like writeZeroRichImage, but the non-zero chunks are somewhat compressible, so that zstd has work
 * on both sides of a restore: their 4 KiB pages cycle through random bytes, random bytes over 16
 * symbols (4 bits of entropy a byte) and text naming the chunk and page. zstd level 1 stores such a
 * chunk at ~60% and decodes it at ~1.2 GB/s here (Huffman-coded literals throughout), where an
 * incompressible chunk is a stored block (a memcpy). Every chunk is distinct (random pages).
 */
export function writeMixedZeroRichImage(
  file: string,
  size: number,
  chunkSize: number,
  isZero: (chunk: number) => boolean,
): string {
  const PAGE = 4096;
  const fd = openSync(file, 'w', 0o600);
  try {
    for (let off = 0; off < size; off += PIECE) {
      const piece = randomBytes(Math.min(PIECE, size - off));
      for (let c = 0; c < piece.length; c += chunkSize) {
        const chunk = (off + c) / chunkSize;
        if (isZero(chunk)) {
          piece.fill(0, c, c + chunkSize);
          continue;
        }
        for (let p = 0; p < chunkSize / PAGE; p++) {
          const o = c + p * PAGE;
          if (p % 3 === 1) for (let i = o; i < o + PAGE; i++) piece[i] = 0x61 + (piece[i]! & 15);
          else if (p % 3 === 2)
            piece.write(`lazysnap chunk ${chunk} page ${p} `.repeat(PAGE / 16), o, PAGE, 'latin1');
        }
      }
      for (let done = 0; done < piece.length;)
        done += writeSync(fd, piece, done, piece.length - done, off + done);
    }
  } finally {
    closeSync(fd);
  }
  return file;
}
