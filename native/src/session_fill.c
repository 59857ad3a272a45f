/* Filling a session's memory: address arithmetic (fault address → region → snapshot offset), the
 * removed-page bitmap, and whole-chunk copy / zero / poison that never puts snapshot bytes on a
 * removed page. Runs only on the session's fault thread. */
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
  uint64_t pg = off / s->page_size;
  return s->removed && (s->removed[pg >> 3] >> (pg & 7)) & 1;
}

/* Marks the snapshot pages behind host range [start, end) as removed: they read as zero from now on. */
bool mark_removed(session_t *s, uint64_t start, uint64_t end) {
  if (!s->removed) {
    s->removed = calloc((s->total_size / s->page_size + 7) / 8, 1);
    if (!s->removed) return false;
  }
  start &= ~(s->page_size - 1);
  end = (end + s->page_size - 1) & ~(s->page_size - 1);
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    uint64_t a = start > r->base ? start : r->base;
    uint64_t b = end < r->base + r->size ? end : r->base + r->size;
    for (uint64_t p = a; p < b; p += s->page_size) {
      uint64_t pg = (r->offset + (p - r->base)) / s->page_size;
      s->removed[pg >> 3] |= (uint8_t)(1u << (pg & 7));
    }
  }
  return true;
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

static int do_fill(session_t *s, uffd_fill_mode mode, uint64_t dst, const void *src, uint64_t len) {
  uffd_fill_stats st = {0};
  uint64_t done = 0;
  int r = uffd_fill(s->uffd, mode, dst, src, len, s->page_size, true, &st, &done);
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

int zero_range(session_t *s, uint64_t dst, uint64_t len) {
  if (!s->zero_page) return do_fill(s, UFFD_FILL_ZERO, dst, NULL, len);
  for (uint64_t o = 0; o < len; o += s->page_size) {
    int r = do_fill(s, UFFD_FILL_COPY, dst + o, s->zero_page, s->page_size);
    if (r) return r;
  }
  return 0;
}

/* Copies [off, off+len) of the snapshot (one region) to dst; removed pages get zeros instead. */
static int copy_range(session_t *s, uint64_t dst, const uint8_t *src, uint64_t off, uint64_t len) {
  if (!s->removed) return do_fill(s, UFFD_FILL_COPY, dst, src, len);
  uint64_t i = 0;
  while (i < len) {
    bool rm = is_removed(s, off + i);
    uint64_t j = i + s->page_size;
    while (j < len && is_removed(s, off + j) == rm) j += s->page_size;
    int r = rm ? zero_range(s, dst + i, j - i) : do_fill(s, UFFD_FILL_COPY, dst + i, src + i, j - i);
    if (r) return r;
    i = j;
  }
  return 0;
}

/* Fills snapshot range [lo, hi) in every region it touches: from src (the bytes of the chunk that
 * starts at chunk_lo), zeros (src NULL, mode ZERO) or poison. */
int fill_span(session_t *s, uint64_t lo, uint64_t hi, uint64_t chunk_lo, const uint8_t *src,
              uffd_fill_mode mode) {
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    uint64_t a = lo > r->offset ? lo : r->offset;
    uint64_t b = hi < r->offset + r->size ? hi : r->offset + r->size;
    if (a >= b) continue;
    uint64_t dst = r->base + (a - r->offset);
    int rc;
    if (mode == UFFD_FILL_POISON)
      rc = do_fill(s, UFFD_FILL_POISON, dst, NULL, b - a);
    else if (src)
      rc = copy_range(s, dst, src + (a - chunk_lo), a, b - a);
    else
      rc = zero_range(s, dst, b - a);
    if (rc) return rc;
  }
  return 0;
}

int fill_chunk(session_t *s, uint32_t c, const uint8_t *src, uffd_fill_mode mode) {
  uint64_t lo = (uint64_t)c * s->chunk_size;
  uint64_t hi = lo + s->chunk_size > s->total_size ? s->total_size : lo + s->chunk_size;
  return fill_span(s, lo, hi, lo, src, mode);
}
