/*
 * copy-source: what the source of a UFFDIO_COPY costs on this host, by where its bytes were written
 * (bench/host-memory.bench.ts). The C reference handlers decode every chunk into one reused buffer
 * and copy from it; lazysnap decodes each chunk into its own slot of the chunk table's arena (a fresh
 * mapping per chunk, populated with MADV_POPULATE_WRITE, native/src/table.c) and copies from that slot.
 * On bare metal the difference is a page fault and a zeroed page per 4 KiB; on a host whose hypervisor
 * shadows page tables, a first access to a page costs an exit per page and per mode (the user-mode
 * stores of the decoder, then the kernel's copy_from_user), which this measures.
 *
 * For each mode it copies CHUNKS chunks of CHUNK bytes into a fresh region of its own registered with
 * userfaultfd (missing mode), one UFFDIO_COPY each, as a handler installs into its peer:
 *   reused     one buffer, written before each copy (a decoder's stores, here a memcpy of a pattern);
 *   fresh      each chunk in its own slot of a 4 KiB-page arena (MADV_NOHUGEPAGE), populated, written;
 *   fresh-thp  the same in an arena advised MADV_HUGEPAGE (lazysnap does this for chunks of 2 MiB+);
 *   fresh-memfd  a 4 KiB-page slot as in fresh, but written by the kernel: the stores go to a reused
 *              buffer, which is pwrite()n to a memfd and pread() into the slot, so the slot's first
 *              access is the kernel's, as the copy's is (an option for lazysnap's loader threads: a
 *              seccomp sandbox that denies process_vm_readv still allows it).
 * The modes run in the order given; one JSON line each on stdout: per-chunk mean ns of populating the
 * slot, writing it and copying it.
 *
 *   gcc -O2 -Wall -Wextra -o copy-source copy-source.c
 *   copy-source CHUNK_BYTES CHUNKS MODE...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static void die(const char *what) {
  fprintf(stderr, "copy-source: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *map(size_t len, int advice) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  if (madvise(p, len, advice) != 0) die("madvise");
  return p;
}

static int open_uffd(void) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (fd < 0) {
    /* Where the syscall is restricted to root with CAP_SYS_PTRACE, /dev/userfaultfd may still serve. */
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) die("userfaultfd");
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
    close(dev);
    if (fd < 0) die("USERFAULTFD_IOC_NEW");
  }
  struct uffdio_api api = {.api = UFFD_API};
  if (ioctl(fd, UFFDIO_API, &api) != 0) die("UFFDIO_API");
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr,
            "usage: copy-source CHUNK_BYTES CHUNKS MODE...  (modes: reused fresh fresh-thp fresh-memfd)\n");
    return 2;
  }
  size_t chunk = strtoull(argv[1], NULL, 0), n = strtoull(argv[2], NULL, 0);
  if (chunk == 0 || chunk % 4096 || n == 0 || n > 65536) {
    fprintf(stderr, "copy-source: CHUNK_BYTES must be a positive multiple of 4096, CHUNKS 1..65536\n");
    return 2;
  }
  int uffd = open_uffd();
  /* What the decoder writes: the same bytes for every chunk, from a buffer hot in every sense. */
  uint8_t *pattern = map(chunk, MADV_NORMAL);
  for (size_t i = 0; i < chunk; i++) pattern[i] = (uint8_t)(i * 131 + 7);
  uint8_t *reused = map(chunk, MADV_NOHUGEPAGE);
  memcpy(reused, pattern, chunk);
  int mfd = memfd_create("copy-source", MFD_CLOEXEC);
  if (mfd < 0 || ftruncate(mfd, (off_t)chunk) != 0) die("memfd");

  for (int a = 3; a < argc; a++) {
    const char *mode = argv[a];
    int fresh = strcmp(mode, "reused") != 0, via_memfd = strcmp(mode, "fresh-memfd") == 0;
    if (fresh && strcmp(mode, "fresh") != 0 && strcmp(mode, "fresh-thp") != 0 && !via_memfd) {
      fprintf(stderr, "copy-source: unknown mode %s\n", mode);
      return 2;
    }
    size_t len = chunk * n;
    uint8_t *dst = map(len, MADV_NOHUGEPAGE);
    struct uffdio_register reg = {.range = {(uintptr_t)dst, len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) die("UFFDIO_REGISTER");
    uint8_t *arena =
        fresh ? map(len, strcmp(mode, "fresh-thp") == 0 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) : NULL;
    uint64_t pop = 0, write = 0, copy = 0;
    for (size_t i = 0; i < n; i++) {
      uint8_t *src = fresh ? arena + i * chunk : reused;
      uint64_t t0 = now_ns();
      if (fresh && madvise(src, chunk, MADV_POPULATE_WRITE) != 0) die("MADV_POPULATE_WRITE");
      uint64_t t1 = now_ns();
      if (via_memfd) {
        memcpy(reused, pattern, chunk);
        if (pwrite(mfd, reused, chunk, 0) != (ssize_t)chunk || pread(mfd, src, chunk, 0) != (ssize_t)chunk)
          die("memfd copy");
      } else {
        memcpy(src, pattern, chunk);
      }
      uint64_t t2 = now_ns();
      struct uffdio_copy c = {.dst = (uintptr_t)(dst + i * chunk), .src = (uintptr_t)src, .len = chunk};
      if (ioctl(uffd, UFFDIO_COPY, &c) != 0 || c.copy != (int64_t)chunk) die("UFFDIO_COPY");
      uint64_t t3 = now_ns();
      pop += t1 - t0;
      write += t2 - t1;
      copy += t3 - t2;
    }
    /* The bytes arrived: a copy that silently did nothing must not read as a fast one. */
    for (size_t i = 0; i < n; i++)
      if (memcmp(dst + i * chunk, pattern, chunk) != 0) {
        fprintf(stderr, "copy-source: chunk %zu differs after UFFDIO_COPY\n", i);
        return 1;
      }
    printf("{\"mode\":\"%s\",\"chunk\":%zu,\"chunks\":%zu,\"populateNs\":%.0f,\"writeNs\":%.0f,\"copyNs\":%."
           "0f}\n",
           mode, chunk, n, (double)pop / n, (double)write / n, (double)copy / n);
    fflush(stdout);
    munmap(dst, len);
    if (arena) munmap(arena, len);
  }
  return 0;
}
