/* Restores a buffer lazily from `lazysnap serve` and checks it against the image it was snapshotted
 * from. Build: gcc -O2 -Wall -Inative/include -o restore-buffer examples/restore-buffer.c
 * Usage: restore-buffer SOCKET IMAGE   (the snapshot served on SOCKET was taken of IMAGE) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "lazysnap_client.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SOCKET IMAGE\n", argv[0]);
    return 2;
  }
  int img = open(argv[2], O_RDONLY);
  struct stat st;
  if (img < 0 || fstat(img, &st) != 0) {
    perror(argv[2]);
    return 2;
  }
  const unsigned char *want = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, img, 0);
  if (want == MAP_FAILED) {
    perror("mmap image");
    return 2;
  }
  struct lazysnap_region r = {.addr = NULL, .size = (size_t)st.st_size, .offset = 0};
  struct lazysnap_session s;
  if (lazysnap_restore(argv[1], &r, 1, 0, &s) != 0) {
    perror("lazysnap_restore");
    return 1;
  }
  /* Every first touch below faults and is served by lazysnap serve. */
  const unsigned char *got = r.addr;
  size_t bad = 0;
  for (size_t off = 0; off < r.size; off += 4096) bad += memcmp(got + off, want + off, 4096) != 0;
  printf("{\"pages\":%zu,\"mismatches\":%zu}\n", r.size / 4096, bad);
  lazysnap_close(&s);
  return bad ? 1 : 0;
}
