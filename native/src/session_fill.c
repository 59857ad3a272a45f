/* Filling a session's memory: address arithmetic (fault address → region → snapshot offset), the
 * removed-page bitmap, and whole-chunk copy / zero / poison that never puts snapshot bytes on a
 * removed page. Runs only on the session's fault thread.
 *
 * Narrowing: UFFDIO_COPY and UFFDIO_ZEROPAGE act on one VMA (mm/userfaultfd.c, mfill_atomic: the
 * whole destination range must lie in one registered VMA, else ENOENT; hugetlb VMAs also want huge-page
 * alignment, else EINVAL). A peer may legally split its registered memory into several VMAs
 * (mprotect of a guard page, mlock, madvise(MADV_DONTFORK)), and then every whole-chunk fill fails.
 * So a fill refused with ENOENT or EINVAL is retried as two halves, recursively: the pieces that lie
 * in one VMA are served at full speed, and only a single page the kernel refuses on its own is
 * reported (out_failure), for JS to decide on. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "session_internal.h"

/* ---- address arithmetic ----------------------------------------------------------------------- */

const region_t *region_of(const session_t *s, uint64_t addr) {
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    if (addr >= r->base && addr - r->base < r->size) return r;
  }
  return NULL;
}

bool is_removed(const session_t *s, uint64_t off) {
  return state_bit(s->state.removed, off / s->page_size);
}

/* Marks the snapshot pages behind host range [start, end) as removed: they read as zero from now on.
 * The bitmap was allocated with the session, so this cannot fail. */
void mark_removed(session_t *s, uint64_t start, uint64_t end) {
  start &= ~(s->page_size - 1);
  end = (end + s->page_size - 1) & ~(s->page_size - 1);
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    uint64_t a = start > r->base ? start : r->base;
    uint64_t b = end < r->base + r->size ? end : r->base + r->size;
    for (uint64_t p = a; p < b; p += s->page_size)
      state_set(s->state.removed, (r->offset + (p - r->base)) / s->page_size);
  }
}

/* ---- filling ---------------------------------------------------------------------------------- */

uint64_t monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mark_served(session_t *s) {
  if (atomic_load_explicit(&s->stats[ST_firstServedNs], memory_order_relaxed) == 0)
    atomic_store_explicit(&s->stats[ST_firstServedNs], monotonic_ns() - s->created_ns + 1,
                          memory_order_relaxed);
}

static fail_kind kind_of(uffd_fill_mode m) {
  return m == UFFD_FILL_COPY ? FAIL_COPY : m == UFFD_FILL_ZERO ? FAIL_ZEROPAGE : FAIL_POISON;
}
static const char *what_of(uffd_fill_mode m) {
  return m == UFFD_FILL_COPY   ? "ioctl(UFFDIO_COPY)"
         : m == UFFD_FILL_ZERO ? "ioctl(UFFDIO_ZEROPAGE)"
                               : "ioctl(UFFDIO_POISON)";
}

static int fill_raw(session_t *s, uffd_fill_mode mode, uint64_t dst, const void *src, uint64_t len,
                    uint64_t *done) {
  uffd_fill_stats st = {0};
  int r = uffd_fill(s->uffd, mode, dst, src, len, s->page_size, true, &st, done);
  if (st.bytes && mode != UFFD_FILL_POISON) mark_served(s);
  if (mode == UFFD_FILL_COPY)
    STAT_ADD(s, bytesCopied, st.bytes);
  else if (mode == UFFD_FILL_ZERO)
    STAT_ADD(s, bytesZeroed, st.bytes);
  else
    STAT_ADD(s, bytesPoisoned, st.bytes);
  if (st.eexist_pages) STAT_ADD(s, pagesPresent, st.eexist_pages);
  if (st.partials) STAT_ADD(s, partialCopies, st.partials);
  return r;
}

/* Fills [dst, dst+len) as far as the kernel allows (see "Narrowing" above). Returns 0 when done (pages
 * refused are reported, the rest filled), -EAGAIN when the address space is changing (a REMOVE is
 * pending: the caller drains events and runs the whole fill again; pages done stay done and are
 * skipped), or -ESRCH when the peer's address space is gone. */
static int fill_narrow(session_t *s, uffd_fill_mode mode, uint64_t dst, const uint8_t *src, uint64_t len,
                       uint32_t chunk) {
  uint64_t done = 0;
  int r = fill_raw(s, mode, dst, src, len, &done);
  if (r == 0 || r == -EAGAIN || r == -ESRCH) return r;
  dst += done;
  src = src ? src + done : NULL;
  len -= done;
  if ((r == -ENOENT || r == -EINVAL) && len > s->page_size) {
    STAT_ADD(s, narrowedFills, 1);
    uint64_t half = len / s->page_size / 2 * s->page_size;
    int a = fill_narrow(s, mode, dst, src, half, chunk);
    if (a == -EAGAIN || a == -ESRCH) return a;
    return fill_narrow(s, mode, dst + half, src ? src + half : NULL, len - half, chunk);
  }
  /* One page refused on its own (ENOENT: no longer registered; EINVAL: the VMA wants another page
   * size), or an error that is not about VMA boundaries (ENOMEM: the peer's memory cgroup cannot be
   * charged; EFAULT): the rest of this range is reported, nothing retried. */
  uint64_t n = (r == -ENOENT || r == -EINVAL) ? s->page_size : len;
  STAT_ADD(s, failedPages, n / s->page_size);
  out_failure(s, kind_of(mode), -r, chunk, dst, n, what_of(mode));
  return 0;
}

int zero_range(session_t *s, uint64_t dst, uint64_t len, uint32_t chunk) {
  if (!s->zero_page) return fill_narrow(s, UFFD_FILL_ZERO, dst, NULL, len, chunk);
  for (uint64_t o = 0; o < len; o += s->page_size) {
    int r = fill_narrow(s, UFFD_FILL_COPY, dst + o, s->zero_page, s->page_size, chunk);
    if (r) return r;
  }
  return 0;
}

/* [off, off+len) of the snapshot (inside one region) to dst: removed pages get zeros, the others src's
 * bytes (COPY) or poison (POISON). A removed page must read zero, whatever else happens to its chunk. */
static int fill_run(session_t *s, uffd_fill_mode mode, uint64_t dst, const uint8_t *src, uint64_t off,
                    uint64_t len, uint32_t chunk) {
  uint64_t i = 0;
  while (i < len) {
    bool rm = is_removed(s, off + i);
    uint64_t j = i + s->page_size;
    while (j < len && is_removed(s, off + j) == rm) j += s->page_size;
    int r = rm ? zero_range(s, dst + i, j - i, chunk)
               : fill_narrow(s, mode, dst + i, src ? src + i : NULL, j - i, chunk);
    if (r) return r;
    i = j;
  }
  return 0;
}

/* Fills snapshot range [lo, hi) in every region it touches: from src (the bytes of the chunk that
 * starts at chunk_lo), zeros (src NULL, mode ZERO) or poison. */
int fill_span(session_t *s, uint64_t lo, uint64_t hi, uint64_t chunk_lo, const uint8_t *src,
              uffd_fill_mode mode, uint32_t chunk) {
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    uint64_t a = lo > r->offset ? lo : r->offset;
    uint64_t b = hi < r->offset + r->size ? hi : r->offset + r->size;
    if (a >= b) continue;
    uint64_t dst = r->base + (a - r->offset);
    int rc = mode == UFFD_FILL_ZERO
                 ? zero_range(s, dst, b - a, chunk)
                 : fill_run(s, mode, dst, src ? src + (a - chunk_lo) : NULL, a, b - a, chunk);
    if (rc) return rc;
  }
  return 0;
}

static uint64_t chunk_end(const session_t *s, uint32_t c) {
  uint64_t hi = (uint64_t)c * s->chunk_size + s->chunk_size;
  return hi > s->total_size ? s->total_size : hi;
}

int fill_chunk(session_t *s, uint32_t c, const uint8_t *src, uffd_fill_mode mode) {
  uint64_t lo = (uint64_t)c * s->chunk_size;
  return fill_span(s, lo, chunk_end(s, c), lo, src, mode, c);
}

static int wake_range(session_t *s, uint64_t dst, uint64_t len, uint32_t chunk) {
  int r = uffd_wake(s->uffd, dst, len);
  if (r && r != -ESRCH) out_failure(s, FAIL_WAKE, -r, chunk, dst, len, "ioctl(UFFDIO_WAKE)");
  return r;
}

/* Wakes every thread waiting on a page of chunk c: present pages resume, missing ones fault again. */
int wake_chunk(session_t *s, uint32_t c) {
  uint64_t lo = (uint64_t)c * s->chunk_size, hi = chunk_end(s, c);
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    uint64_t a = lo > r->offset ? lo : r->offset;
    uint64_t b = hi < r->offset + r->size ? hi : r->offset + r->size;
    if (a < b && wake_range(s, r->base + (a - r->offset), b - a, c) == -ESRCH) return -ESRCH;
  }
  return 0;
}

/* Wakes every region: used after faults were dropped (queue full) or never read (a server that took
 * the session over cannot know which faults its predecessor read). A woken thread whose page is still
 * missing faults again, and this time the fault is read. */
int wake_regions(session_t *s) {
  STAT_ADD(s, wakeAlls, 1);
  for (uint32_t i = 0; i < s->nregions; i++)
    if (wake_range(s, s->regions[i].base, s->regions[i].size, UINT32_MAX) == -ESRCH) return -ESRCH;
  return 0;
}
