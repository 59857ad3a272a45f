/*
 * ref-store-handler: the C reference for restoring from a local chunk store
 * (bench/local-restore.bench.ts, targets L1 and L2 of DESIGN.md).
 *
 * A single-threaded userfaultfd handler, like Firecracker's example
 * on_demand_handler, serving ONE client that performs Firecracker's handshake
 * (/work/shared/PROTOCOL.md). Nothing is resident before the client connects:
 * each fault resolves the whole chunk containing the faulting page from disk.
 *  - zero chunk: UFFDIO_ZEROPAGE over the chunk;
 *  - otherwise: open + read the stored object, ZSTD_decompress into a buffer
 *    of the chunk's length, one UFFDIO_COPY of the chunk;
 *  - --raw: the object is the chunk's bytes, uncompressed (lazysnap's host
 *    disk cache, <cache-dir>/<first 2 hex>/<hash>), read straight into the
 *    buffer.
 * It does the per-chunk work lazysnap's serve does on that path except
 * hashing (Debian has no BLAKE3 library): lazysnap's verification has to fit
 * in the target's margin. A chunk it has copied whole is remembered, so a later
 * fault in it (another thread's, queued before the copy) costs a UFFDIO_WAKE,
 * not another read and decode.
 *
 *   gcc -O2 -Wall -Wextra -o ref-store-handler ref-store-handler.c -lzstd
 *   ref-store-handler --socket PATH --dir DIR --index FILE [--raw] [--arena]
 *
 * --arena: lazysnap's memory layout instead of one reused buffer, for the benchmark to tell what the
 * layout costs from what the runtime costs: each chunk is decoded into its own slot of an arena the size
 * of the snapshot, mapped as native/src/table.c maps its arena (private anonymous, MADV_NOHUGEPAGE
 * below 2 MiB chunks, each slot populated with MADV_POPULATE_WRITE before it is written), and copied
 * from there. Still no hashing, no threads and no hops.
 *
 * The index (written by the benchmark from the snapshot manifest): a first
 * line "ref-index 1 CHUNK_SIZE TOTAL_SIZE COUNT", then COUNT lines, one per
 * chunk in order: "Z" for an all-zero chunk, else the path of its object
 * relative to DIR (chunks/ab/<hash>.zstd in a store, ab/<hash> in a cache).
 *
 * stdout: "listening", then, when the client closes its socket, one JSON line
 * of counters. Exit status: 0 done, 1 serve error (the peer is SIGKILLed
 * first), 2 bad usage, index or handshake.
 *
 * Deliberate simplifications: those of ref-uffd.h; 4 KiB pages only (the
 * chunk is the unit of every copy, and hugetlb pages larger than a chunk would
 * need several objects per page); a DEFERred chunk whose decoded bytes were
 * replaced by another chunk's is read and decoded again on its retry (REMOVE
 * events are rare; Firecracker raises them only for the balloon).
 */
#define _GNU_SOURCE
#define REF_NAME "ref-store-handler"
#include "ref-uffd.h"

#include <zstd.h>

#define PAGE        4096UL
#define MAX_CHUNKS  (1UL << 24)
#define INDEX_LINE  512
#define HEADER_WORD "ref-index"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static uint64_t chunk_size;
static uint64_t nchunks;
static char **paths;       /* per chunk: object path relative to --dir, NULL for zero */
static uint8_t *done;      /* per chunk: copied whole (every page present or removed) */
static int dir_fd = -1;    /* --dir */
static int raw;            /* --raw: objects are uncompressed chunk bytes */
static int use_arena;      /* --arena */
static uint8_t *arena;     /* --arena: one slot per chunk, as lazysnap's chunk table */
static uint8_t *in_buf;    /* a stored object, as read */
static size_t in_cap;      /* ZSTD_compressBound(chunk) + 1: room to see an oversized one */
static uint8_t *out_buf;   /* one decoded chunk: the source of UFFDIO_COPY */
static uint64_t out_chunk; /* which chunk out_buf holds, or UINT64_MAX */
static ZSTD_DCtx *dctx;

/* This handler's counters, beside the shared ones in st. */
static struct {
  uint64_t chunks_read, bytes_read, bytes_decoded, copies, bytes_copied, zero_chunks, zero_bytes, woken,
      narrowed;
} hs;

/* ---- setup: the index ---------------------------------------------------- */

static void load_index(const char *file) {
  char line[INDEX_LINE];
  unsigned long long cs, total, count;
  int version;
  FILE *f = fopen(file, "re");
  uint64_t i;

  if (!f) die(2, "--index %s: %s", file, strerror(errno));
  if (!fgets(line, sizeof(line), f) ||
      sscanf(line, HEADER_WORD " %d %llu %llu %llu", &version, &cs, &total, &count) != 4 || version != 1)
    die(2, "--index %s: expected a first line '" HEADER_WORD " 1 CHUNK_SIZE TOTAL_SIZE COUNT'", file);
  if (!cs || (cs & (cs - 1)) || cs % PAGE || cs > MAX_CHUNK)
    die(2, "--index %s: chunk size %llu is not a power of two multiple of %lu up to %lu", file, cs, PAGE,
        (unsigned long)MAX_CHUNK);
  if (!total || total % PAGE || count != (total + cs - 1) / cs || count > MAX_CHUNKS)
    die(2, "--index %s: total size %llu and chunk count %llu do not agree", file, total, count);
  chunk_size = cs;
  ref_total_size = total;
  nchunks = count;
  paths = calloc(nchunks, sizeof(*paths));
  done = calloc(nchunks, 1);
  if (!paths || !done) die(2, "index: out of memory");
  for (i = 0; i < nchunks; i++) {
    size_t n;

    if (!fgets(line, sizeof(line), f))
      die(2, "--index %s: %" PRIu64 " chunk lines, expected %" PRIu64, file, i, nchunks);
    n = strlen(line);
    if (n == 0 || line[n - 1] != '\n')
      die(2, "--index %s: line %" PRIu64 " is too long or unterminated", file, i + 2);
    line[--n] = '\0';
    if (!strcmp(line, "Z")) continue;
    /* Relative and without "..": the index names objects inside --dir only. */
    if (n == 0 || line[0] == '/' || strstr(line, ".."))
      die(2, "--index %s: line %" PRIu64 ": expected Z or a relative path, got '%s'", file, i + 2, line);
    paths[i] = strdup(line);
    if (!paths[i]) die(2, "index: out of memory");
  }
  if (fgets(line, sizeof(line), f))
    die(2, "--index %s: more lines than the %" PRIu64 " chunks", file, nchunks);
  fclose(f);
}

/*
 * The decode buffer on a transparent huge page, like ref-handler's image: the
 * kernel's copy_from_user in UFFDIO_COPY reads it, and 4 KiB TLB misses on
 * this nested VM cost more than the copy (bench/ANALYSIS.md, P2).
 */
static void alloc_buffers(void) {
  size_t out_len = (chunk_size + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  uint8_t *p = mmap(NULL, out_len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

  if (p == MAP_FAILED) die(2, "mmap decode buffer: %s", strerror(errno));
  out_buf = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1));
  if (madvise(out_buf, out_len, MADV_HUGEPAGE) < 0 && errno != EINVAL)
    die(2, "madvise(MADV_HUGEPAGE): %s", strerror(errno));
  memset(out_buf, 0, out_len); /* fault it in now, not on the first chunk */
  if (use_arena) {
    arena = mmap(NULL, ref_total_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
    if (arena == MAP_FAILED) die(2, "mmap arena: %s", strerror(errno));
    if (madvise(arena, ref_total_size, chunk_size >= HUGE_PAGE ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) < 0)
      die(2, "madvise(arena): %s", strerror(errno));
  }
  in_cap = ZSTD_compressBound(chunk_size) + 1;
  in_buf = malloc(in_cap);
  if (!in_buf) die(2, "malloc read buffer: %s", strerror(errno));
  memset(in_buf, 0, in_cap);
  dctx = ZSTD_createDCtx();
  if (!dctx) die(2, "ZSTD_createDCtx failed");
  out_chunk = UINT64_MAX;
}

/* ---- fault path: no allocation, no logging -------------------------------- */

static uint64_t chunk_len(uint64_t c) {
  uint64_t start = c * chunk_size;

  return ref_total_size - start < chunk_size ? ref_total_size - start : chunk_size;
}

/*
 * Reads (and, unless --raw, decodes) chunk c into out_buf (--arena: its
 * slot), and returns where its bytes are. A missing, unreadable or malformed
 * object is a serve error: fail closed.
 */
static const uint8_t *load_chunk(uint64_t c) {
  uint64_t want = chunk_len(c);
  uint8_t *out = arena ? arena + c * chunk_size : out_buf;
  uint8_t *dst = raw ? out : in_buf;
  size_t cap = raw ? (size_t)want + 1 : in_cap, got = 0;
  int fd;

  if (out_chunk == c) return out;
  out_chunk = UINT64_MAX;
  if (arena && madvise(out, (want + PAGE - 1) & ~(PAGE - 1), MADV_POPULATE_WRITE) < 0)
    fail_serve("madvise(MADV_POPULATE_WRITE)", errno);
  fd = openat(dir_fd, paths[c], O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_serve("open chunk object", errno);
  for (;;) {
    ssize_t n = read(fd, dst + got, cap - got);

    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_serve("read chunk object", errno);
    if (n == 0) break;
    got += (size_t)n;
    if (got == cap) fail_serve("chunk object larger than its chunk can be", EFBIG);
  }
  close(fd);
  hs.chunks_read++;
  hs.bytes_read += got;
  if (raw) {
    if (got != want) fail_serve("raw chunk object of the wrong length", EINVAL);
  } else {
    size_t n = ZSTD_decompressDCtx(dctx, out, (size_t)want, in_buf, got);

    if (ZSTD_isError(n)) {
      fprintf(stderr, REF_NAME ": chunk %" PRIu64 ": %s\n", c, ZSTD_getErrorName(n));
      fail_serve("ZSTD_decompress", EINVAL);
    }
    if (n != want) fail_serve("decoded chunk of the wrong length", EINVAL);
    hs.bytes_decoded += n;
  }
  out_chunk = c;
  return out;
}

/*
 * One UFFDIO_COPY (src != NULL) or UFFDIO_ZEROPAGE of [dst, dst + len).
 * Returns 0 or -errno; *done_bytes = what was filled before it stopped.
 */
static int fill_once(uint64_t dst, uint64_t len, const uint8_t *src, uint64_t *done_bytes) {
  if (src) {
    struct uffdio_copy cp = {.dst = dst, .src = (uintptr_t)src, .len = len, .mode = 0};
    int rc = ioctl(uffd, UFFDIO_COPY, &cp);

    *done_bytes = cp.copy > 0 ? (uint64_t)cp.copy : 0;
    return rc == 0 ? 0 : -errno;
  } else {
    struct uffdio_zeropage z = {.range = {.start = dst, .len = len}, .mode = 0};
    int rc = ioctl(uffd, UFFDIO_ZEROPAGE, &z);

    *done_bytes = z.zeropage > 0 ? (uint64_t)z.zeropage : 0;
    return rc == 0 ? 0 : -errno;
  }
}

/*
 * Fill [*pos, end) from src (the bytes for *pos at src + (*pos - start)) or
 * with zero pages, as ref-handler's copy loop (fs/userfaultfd.c,
 * mm/userfaultfd.c mfill_atomic): 0 = all filled and woken; EAGAIN with
 * progress = stopped at a present page; EEXIST = the first page is present
 * (wake it, skip it); EAGAIN without progress = mmap_changing, a REMOVE is
 * queued (DEFER, resuming at *pos); ESRCH = the client's mm is gone.
 * ENOENT = the range is not within one VMA (the client split it, e.g. by
 * mprotect or mlock): from there on fill one page at a time, which always lies
 * in one VMA, as DESIGN.md's failure rule asks ("serve the faulting page by a
 * narrower copy").
 */
static int fill(uint64_t start, uint64_t *pos, uint64_t end, const uint8_t *src) {
  uint64_t dst = *pos, wake_start = 0, wake_end = 0, step = end - dst;
  int rc = RESOLVED;

  while (dst < end) {
    uint64_t len = end - dst < step ? end - dst : step, n = 0;
    int err = fill_once(dst, len, src ? src + (dst - start) : NULL, &n);

    if (err == 0) {
      n = len;
    } else if (err == -EAGAIN && n > 0) {
      /* Stopped at a page already present: go on from there. */
    } else if (err == -EEXIST) {
      /* The page at dst is present: wake its waiters (consecutive ones share one WAKE), skip it. */
      st.eexist++;
      if (wake_end != dst) {
        if (wake_end > wake_start) wake(wake_start, wake_end - wake_start);
        wake_start = dst;
      }
      dst += PAGE;
      wake_end = dst;
      continue;
    } else if (err == -ENOENT && len > PAGE) {
      hs.narrowed++;
      step = PAGE;
      continue;
    } else if (err == -EAGAIN) {
      rc = DEFER;
      break;
    } else if (err == -ESRCH) {
      rc = -1;
      break;
    } else {
      fail_serve(src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", -err);
    }
    if (src) {
      hs.copies++;
      hs.bytes_copied += n;
    } else {
      hs.zero_bytes += n;
    }
    dst += n;
  }
  if (wake_end > wake_start) wake(wake_start, wake_end - wake_start);
  *pos = dst;
  return rc;
}

/*
 * Resolve the chunk containing the faulting page: its range is clipped to the
 * region and to the removed ranges on either side of the page, so a chunk
 * never fills a removed page with snapshot bytes (ref-handler.c does the same).
 */
static int resolve(struct fault *f) {
  uint64_t addr = f->addr;
  const struct region *r = find_region(addr);
  uint64_t page, img, c, cs, ce, dst, end;
  int whole, rc;
  size_t i;

  if (!r) fail_serve("fault outside every region", EFAULT);
  page = addr & ~(PAGE - 1);
  i = removed_after(page);
  if (i < nremoved && removed[i].start < page + PAGE) return serve_zero(r, page);

  img = r->off + (page - r->base);
  c = img / chunk_size;
  if (done[c]) {
    /* Copied whole already: this fault was queued before the copy woke it. */
    hs.woken++;
    wake(page, PAGE);
    return RESOLVED;
  }
  cs = c * chunk_size;
  ce = cs + chunk_len(c);
  whole = cs >= r->off && ce <= r->off + r->size; /* a chunk straddling two regions is done per region */
  if (cs < r->off) cs = r->off;
  if (ce > r->off + r->size) ce = r->off + r->size;
  dst = r->base + (cs - r->off);
  end = r->base + (ce - r->off);
  if (i > 0 && removed[i - 1].end > dst) dst = (removed[i - 1].end + PAGE - 1) & ~(PAGE - 1);
  if (i < nremoved && removed[i].start < end) end = removed[i].start & ~(PAGE - 1);
  if (f->resume > dst) dst = f->resume;

  if (paths[c]) {
    rc = fill(r->base + (c * chunk_size - r->off), &dst, end, load_chunk(c));
  } else {
    if (f->resume == 0) hs.zero_chunks++;
    rc = fill(0, &dst, end, NULL);
  }
  if (rc == DEFER) f->resume = dst;
  /* Clipped by a removed range: the pages beyond it fault on their own later. */
  if (rc == RESOLVED && whole && dst == r->base + (c * chunk_size + chunk_len(c) - r->off)) done[c] = 1;
  return rc;
}

/* ---- main -------------------------------------------------------------------- */

static void usage(void) {
  die(2, "usage: ref-store-handler --socket PATH --dir DIR --index FILE [--raw] [--arena]");
}

int main(int argc, char **argv) {
  const char *sock_path = NULL, *dir = NULL, *index_file = NULL;
  int i, lsock, conn;
  size_t r;

  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--raw")) {
      raw = 1;
      continue;
    }
    if (!strcmp(argv[i], "--arena")) {
      use_arena = 1; /* mapped once the index gives the size (alloc_buffers) */
      continue;
    }
    if (i + 1 >= argc) usage();
    if (!strcmp(argv[i], "--socket"))
      sock_path = argv[++i];
    else if (!strcmp(argv[i], "--dir"))
      dir = argv[++i];
    else if (!strcmp(argv[i], "--index"))
      index_file = argv[++i];
    else
      usage();
  }
  if (!sock_path || !dir || !index_file) usage();
  if (sysconf(_SC_PAGESIZE) != (long)PAGE) die(2, "expected 4 KiB pages");
  load_index(index_file);
  dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) die(2, "--dir %s: %s", dir, strerror(errno));
  alloc_buffers();
  ref_setup();

  lsock = listen_at(sock_path);
  if (printf("listening\n") < 0 || fflush(stdout) == EOF) die(2, "stdout: %s", strerror(errno));
  do conn = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
  while (conn < 0 && errno == EINTR);
  if (conn < 0) die(2, "accept: %s", strerror(errno));
  close(lsock); /* exactly one client */

  handshake(conn, chunk_size);
  for (r = 0; r < nregions; r++)
    if (regions[r].psz != PAGE) die(2, "handshake: only 4 KiB pages are supported");
  serve(conn);

  printf("{\"faults\":%" PRIu64 ",\"chunksRead\":%" PRIu64 ",\"bytesRead\":%" PRIu64
         ",\"bytesDecoded\":%" PRIu64 ",\"copies\":%" PRIu64 ",\"bytesCopied\":%" PRIu64
         ",\"zeroChunks\":%" PRIu64 ",\"zeroBytes\":%" PRIu64 ",\"woken\":%" PRIu64 ",\"eexist\":%" PRIu64
         ",\"narrowed\":%" PRIu64 ",\"removes\":%" PRIu64 ",\"zeropages\":%" PRIu64
         ",\"raw\":%s,\"arena\":%s}\n",
         st.faults, hs.chunks_read, hs.bytes_read, hs.bytes_decoded, hs.copies, hs.bytes_copied,
         hs.zero_chunks, hs.zero_bytes, hs.woken, st.eexist, hs.narrowed, st.removes, st.zeropages,
         raw ? "true" : "false", use_arena ? "true" : "false");
  if (fflush(stdout) == EOF) return 1;
  if (st.unknown || st.deferred || client_gone)
    fprintf(stderr, REF_NAME ": %" PRIu64 " deferred retries, %" PRIu64 " unknown events%s\n", st.deferred,
            st.unknown, client_gone ? ", client mm exited before its socket closed" : "");
  return 0;
}
