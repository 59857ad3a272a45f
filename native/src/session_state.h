/* A session's state that must outlive the process serving it (docs/RELIABILITY.md, "Crash and
 * upgrade"): which snapshot pages the peer removed (UFFD_EVENT_REMOVE: they read as zero from then on),
 * which chunks were installed whole, and the last batch of uffd events, read() straight into this
 * memory so that a REMOVE the kernel handed over is never only in a dead process's stack.
 *
 * It lives in a memfd mapped MAP_SHARED and populated at creation (MADV_POPULATE_WRITE), so recording
 * an event never allocates and never faults on new memory. A supervisor holds a duplicate of the memfd;
 * a successor maps it again and continues (state_open with adopt). The layout is versioned: a
 * successor that does not know the version refuses to adopt rather than misread it. */
#ifndef LAZYSNAP_SESSION_STATE_H
#define LAZYSNAP_SESSION_STATE_H

#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdint.h>

#define STATE_MAGIC   0x317370616e737a6cULL /* "lzsnaps1" little-endian */
#define STATE_VERSION 2u
#define STATE_EVBUF   64 /* uffd_msg per read() */
/* The session's description for whoever adopts it (regions, peer, restore id: JSON written by the
 * runtime, a 4-byte little-endian length first), so that the descriptors alone are enough to adopt. */
#define STATE_META_OFF 4096u
#define STATE_META_MAX 65536u

typedef struct {
  uint64_t magic;
  uint32_t version, header_size;
  uint64_t page_size, chunk_size, total_size;
  uint32_t nchunks, pad;
  uint64_t meta_off, meta_len;           /* STATE_META_OFF, STATE_META_MAX */
  uint64_t removed_off, removed_len;     /* one bit per snapshot page */
  uint64_t installed_off, installed_len; /* one bit per chunk */
  uint64_t adoptions;                    /* how many servers took this session over */
  /* Messages of the latest read(): a crash between read() and applying them leaves them here. Slots
   * are cleared before each read, so only real messages are found again. */
  struct uffd_msg evbuf[STATE_EVBUF];
} state_header_t;

typedef struct {
  int fd;       /* the memfd, -1 when none */
  bool adopted; /* the state was there already (a predecessor's) */
  uint8_t *base;
  uint64_t len;
  state_header_t *hdr;
  uint8_t *removed;
  uint8_t *installed;
} session_state_t;

/* Creates the state of a session with this geometry: in a new memfd (fd < 0), or in an empty one the
 * caller made (fd >= 0 of size 0: a supervisor that must hold it from the start); or adopts an existing
 * one (fd >= 0, not empty). The fd is duplicated; the caller keeps its own. Returns 0 or -errno; -EPROTO
 * when an adopted state is not this layout or version, -EINVAL when its geometry differs. */
int state_open(session_state_t *st, int fd, uint64_t page_size, uint64_t chunk_size, uint64_t total_size);
void state_close(session_state_t *st);

static inline bool state_bit(const uint8_t *bits, uint64_t i) {
  return (bits[i >> 3] >> (i & 7)) & 1;
}
static inline void state_set(uint8_t *bits, uint64_t i) {
  __atomic_fetch_or(&bits[i >> 3], (uint8_t)(1u << (i & 7)), __ATOMIC_RELAXED);
}

#endif
