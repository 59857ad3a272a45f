/*
 * ref-handler: the "physical limit" reference for lazysnap's benchmarks.
 *
 * A single-threaded userfaultfd page-fault handler with the whole snapshot
 * image resident in memory, serving exactly one client that performs
 * Firecracker's UFFD handshake (see docs/PROTOCOL.md and Firecracker
 * src/vmm/src/persist.rs). It resolves every fault by UFFDIO_COPY of the whole
 * chunk that contains the faulting page, like lazysnap does, so the two can be
 * benchmarked side by side. The fault path neither logs nor allocates.
 *
 *   gcc -O2 -Wall -Wextra -o ref-handler ref-handler.c   (ref-uffd.h beside it)
 *   ref-handler --socket PATH --image FILE --chunk-size N
 *
 * stdout: "listening" once the socket accepts connections, then, when the
 * client closes its socket, one JSON line of counters.
 * Exit status: 0 done, 1 serve error (the peer is SIGKILLed first, so that it
 * is not left hung on a fault nobody will resolve), 2 bad usage or handshake.
 *
 * The handshake, the removed ranges and the event loop are in ref-uffd.h,
 * shared with ref-store-handler.c; this file is the policy (resolve) and the
 * image. Deliberate simplifications: those of ref-uffd.h, and UFFDIO_ZEROPAGE
 * for removed pages only (the image's own zero pages are copied like any
 * other page).
 */
#define _GNU_SOURCE
#define REF_NAME "ref-handler"
#include "ref-uffd.h"

static const uint8_t *image;

/* This handler's counters, beside the shared ones in st. */
static struct { uint64_t copies, bytes_copied; } hs;

static uint64_t parse_size_arg(const char *name, const char *s) {
  char *end;
  unsigned long long v;

  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-')
    die(2, "%s: expected a decimal byte count, got '%s'", name, s);
  return v;
}

/* ---- setup: the image ---------------------------------------------------- */

/*
 * The image is read() into private anonymous memory and locked, so that the
 * fault path never waits on disk or on the page cache.
 */
static void load_image(const char *path) {
  struct stat sb;
  uint64_t map_len, done = 0;
  uint8_t *buf;
  int fd;

  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(2, "--image %s: %s", path, strerror(errno));
  if (fstat(fd, &sb) < 0) die(2, "--image %s: fstat: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode) || sb.st_size <= 0) die(2, "--image %s: expected a non-empty regular file", path);
  ref_total_size = (uint64_t)sb.st_size;
  map_len = (ref_total_size + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  buf = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) die(2, "mmap image buffer (%" PRIu64 " bytes): %s", map_len, strerror(errno));
  /* THP on the source cuts TLB misses in the kernel's copy_from_user. */
  if (madvise(buf, map_len, MADV_HUGEPAGE) < 0 && errno != EINVAL)
    die(2, "madvise(MADV_HUGEPAGE): %s", strerror(errno));
  while (done < ref_total_size) {
    ssize_t n = read(fd, buf + done, ref_total_size - done);

    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die(2, "--image %s: read: %s", path, strerror(errno));
    if (n == 0) die(2, "--image %s: file shrank while reading", path);
    done += (uint64_t)n;
  }
  close(fd);
  if (mlock(buf, map_len) < 0) fprintf(stderr, REF_NAME ": warning: mlock image: %s\n", strerror(errno));
  if (mprotect(buf, map_len, PROT_READ) < 0) die(2, "mprotect image: %s", strerror(errno));
  image = buf;
}

/* ---- fault path: no allocation, no logging -------------------------------- */

/*
 * Copy the chunk containing the faulting page. Chunk boundaries are image
 * offsets, clipped to the region and to the removed ranges on either side
 * of the page, so a chunk never fills a removed page with snapshot bytes.
 * A retry after DEFER resumes where the last attempt stopped: the pages
 * before that point were copied or found present (and woken).
 *
 * UFFDIO_COPY outcomes (fs/userfaultfd.c userfaultfd_copy, mm/userfaultfd.c
 * mfill_atomic): 0 = all copied and woken; EAGAIN with copy > 0 = stopped at
 * a present page after copying `copy` bytes; EEXIST = the first page is
 * present; EAGAIN with copy <= 0 = mmap_changing (a REMOVE is queued);
 * ESRCH = the client's mm has exited.
 */
static int resolve(struct fault *f) {
  uint64_t addr = f->addr;
  const struct region *r = find_region(addr);
  uint64_t page, img, cs, ce, dst, end, wake_start = 0, wake_end = 0;
  size_t i;

  if (!r) fail_serve("fault outside every region", EFAULT);
  page = addr & ~(r->psz - 1);

  i = removed_after(page);
  if (i < nremoved && removed[i].start < page + r->psz) return serve_zero(r, page);

  img = r->off + (page - r->base);
  cs = img & ~(r->chunk - 1);
  ce = cs + r->chunk;
  if (cs < r->off) cs = r->off;
  if (ce > r->off + r->size) ce = r->off + r->size;
  dst = r->base + (cs - r->off);
  end = r->base + (ce - r->off);
  if (i > 0 && removed[i - 1].end > dst) dst = (removed[i - 1].end + r->psz - 1) & ~(r->psz - 1);
  if (i < nremoved && removed[i].start < end) end = removed[i].start & ~(r->psz - 1);
  if (f->resume > dst) dst = f->resume;

  while (dst < end) {
    struct uffdio_copy cp = {
        .dst = dst,
        .src = (uintptr_t)(image + r->off + (dst - r->base)),
        .len = end - dst,
        .mode = 0,
    };

    if (ioctl(uffd, UFFDIO_COPY, &cp) == 0) {
      hs.copies++;
      hs.bytes_copied += cp.len;
      break;
    }
    if (errno == EAGAIN && cp.copy > 0) {
      /* Stopped at a page already present: go on from there. */
      hs.copies++;
      hs.bytes_copied += (uint64_t)cp.copy;
      dst += (uint64_t)cp.copy;
    } else if (errno == EEXIST) {
      /*
       * The page at dst is present: wake its waiters and skip
       * it. Consecutive present pages share one UFFDIO_WAKE.
       */
      st.eexist++;
      if (wake_end != dst) {
        if (wake_end > wake_start) wake(wake_start, wake_end - wake_start);
        wake_start = dst;
      }
      dst += r->psz;
      wake_end = dst;
    } else if (errno == EAGAIN) {
      /* mmap_changing: a REMOVE is queued. Drain, then retry. */
      if (wake_end > wake_start) wake(wake_start, wake_end - wake_start);
      f->resume = dst;
      return DEFER;
    } else if (errno == ESRCH) {
      return -1; /* the client's mm is gone */
    } else {
      fail_serve("UFFDIO_COPY", errno);
    }
  }
  if (wake_end > wake_start) wake(wake_start, wake_end - wake_start);
  return RESOLVED;
}

/* ---- main -------------------------------------------------------------------- */

static void usage(void) {
  die(2, "usage: ref-handler --socket PATH --image FILE --chunk-size N");
}

int main(int argc, char **argv) {
  const char *sock_path = NULL, *image_path = NULL;
  uint64_t chunk = 0;
  long pagesize = sysconf(_SC_PAGESIZE);
  int i, lsock, conn;

  for (i = 1; i < argc; i++) {
    if (i + 1 >= argc) usage();
    if (!strcmp(argv[i], "--socket"))
      sock_path = argv[++i];
    else if (!strcmp(argv[i], "--image"))
      image_path = argv[++i];
    else if (!strcmp(argv[i], "--chunk-size"))
      chunk = parse_size_arg("--chunk-size", argv[++i]);
    else
      usage();
  }
  if (!sock_path || !image_path || !chunk) usage();
  if (pagesize <= 0 || (chunk & (chunk - 1)) || chunk % (uint64_t)pagesize || chunk > MAX_CHUNK)
    die(2, "--chunk-size: expected a power of two, a multiple of %ld and at most %lu, got %" PRIu64, pagesize,
        (unsigned long)MAX_CHUNK, chunk);

  load_image(image_path);
  ref_setup();

  lsock = listen_at(sock_path);
  if (printf("listening\n") < 0 || fflush(stdout) == EOF) die(2, "stdout: %s", strerror(errno));
  do conn = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
  while (conn < 0 && errno == EINTR);
  if (conn < 0) die(2, "accept: %s", strerror(errno));
  close(lsock); /* exactly one client */

  handshake(conn, chunk);
  serve(conn);

  printf("{\"faults\":%" PRIu64 ",\"copies\":%" PRIu64 ",\"bytesCopied\":%" PRIu64 ",\"eexist\":%" PRIu64
         ",\"removes\":%" PRIu64 ",\"zeropages\":%" PRIu64 "}\n",
         st.faults, hs.copies, hs.bytes_copied, st.eexist, st.removes, st.zeropages);
  if (fflush(stdout) == EOF) return 1;
  if (st.unknown || st.deferred || client_gone)
    fprintf(stderr, REF_NAME ": %" PRIu64 " deferred retries, %" PRIu64 " unknown events%s\n", st.deferred,
            st.unknown, client_gone ? ", client mm exited before its socket closed" : "");
  return 0;
}
