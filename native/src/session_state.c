/* The shared state region of a session: see session_state.h. */
#include "session_state.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MADV_POPULATE_WRITE /* Linux 5.14 */
#define MADV_POPULATE_WRITE 23
#endif

_Static_assert(sizeof(state_header_t) <= STATE_META_OFF, "the header must end before the metadata");

static uint64_t round_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

static void layout(state_header_t *h, uint64_t page_size, uint64_t chunk_size, uint64_t total_size) {
  h->page_size = page_size;
  h->chunk_size = chunk_size;
  h->total_size = total_size;
  h->nchunks = (uint32_t)(total_size / chunk_size + (total_size % chunk_size != 0));
  h->header_size = sizeof *h;
  h->meta_off = STATE_META_OFF;
  h->meta_len = STATE_META_MAX;
  h->removed_off = STATE_META_OFF + STATE_META_MAX;
  h->removed_len = round_up((total_size / page_size + 7) / 8, 64);
  h->installed_off = h->removed_off + h->removed_len;
  h->installed_len = round_up(((uint64_t)h->nchunks + 7) / 8, 64);
}

int state_open(session_state_t *st, int fd, uint64_t page_size, uint64_t chunk_size, uint64_t total_size) {
  memset(st, 0, sizeof *st);
  st->fd = -1;
  state_header_t want = {0};
  layout(&want, page_size, chunk_size, total_size);
  uint64_t len = round_up(want.installed_off + want.installed_len, 4096);
  bool adopt = false;
  int mfd;
  if (fd >= 0) {
    mfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (mfd < 0) return -errno;
    struct stat sb;
    if (fstat(mfd, &sb) != 0) {
      int e = errno;
      close(mfd);
      return -e;
    }
    adopt = sb.st_size != 0;
    if (!adopt && ftruncate(mfd, (off_t)len) != 0) {
      int e = errno;
      close(mfd);
      return -e;
    }
    if (adopt && (uint64_t)sb.st_size < sizeof(state_header_t)) {
      close(mfd);
      return -EPROTO;
    }
    if (adopt && (uint64_t)sb.st_size != len) {
      close(mfd);
      return -EINVAL;
    }
  } else {
    mfd = memfd_create("lazysnap-session", MFD_CLOEXEC);
    if (mfd < 0) return -errno;
    if (ftruncate(mfd, (off_t)len) != 0) {
      int e = errno;
      close(mfd);
      return -e;
    }
  }
  uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    close(mfd);
    return -e;
  }
  /* Allocate every page now: recording a REMOVE later must not be the write that finds no memory
   * (a SIGBUS in the fault thread). EINVAL: a kernel before 5.14, where touching each page does it. */
  if (madvise(p, len, MADV_POPULATE_WRITE) != 0) {
    if (errno != EINVAL) {
      int e = errno;
      munmap(p, len);
      close(mfd);
      return -e;
    }
    for (uint64_t o = 0; o < len; o += 4096) __atomic_fetch_add(&p[o], 0, __ATOMIC_RELAXED);
  }
  state_header_t *h = (state_header_t *)p;
  if (adopt) {
    if (h->magic != STATE_MAGIC || h->version != STATE_VERSION || h->header_size != sizeof *h) {
      munmap(p, len);
      close(mfd);
      return -EPROTO;
    }
    if (h->page_size != want.page_size || h->chunk_size != want.chunk_size ||
        h->total_size != want.total_size || h->removed_off != want.removed_off ||
        h->installed_off != want.installed_off) {
      munmap(p, len);
      close(mfd);
      return -EINVAL;
    }
    h->adoptions++;
  } else {
    *h = want;
    h->magic = STATE_MAGIC;
    h->version = STATE_VERSION;
  }
  st->adopted = adopt;
  st->fd = mfd;
  st->base = p;
  st->len = len;
  st->hdr = h;
  st->removed = p + h->removed_off;
  st->installed = p + h->installed_off;
  return 0;
}

void state_close(session_state_t *st) {
  if (st->base) munmap(st->base, st->len);
  if (st->fd >= 0) close(st->fd);
  memset(st, 0, sizeof *st);
  st->fd = -1;
}
