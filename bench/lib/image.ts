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
