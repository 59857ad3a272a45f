/* Internal to the session: the state shared by the fault thread (session_thread.c), the fill
 * helpers (session_fill.c) and the JS bindings (session.c). See session.c for the design. */
#ifndef LAZYSNAP_SESSION_INTERNAL_H
#define LAZYSNAP_SESSION_INTERNAL_H

#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "table.h"
#include "uffd.h"

enum { CMD_INSTALL = 1, CMD_POISON = 2 };
/* Per-session chunk state, owned by the fault thread. */
enum { CS_NONE = 0, CS_REQUESTED = 1, CS_INSTALLED = 2 };

typedef struct {
  uint32_t op, chunk;
} cmd_t;
typedef struct {
  uint64_t base, size, offset;
} region_t;
typedef struct {
  uint32_t chunk;
  int err;
  const char *syscall;
} report_t;
typedef struct {
  uint32_t *v;
  size_t n, cap;
} u32vec;

/* An X-macro list of the fault thread's counters. */
// clang-format off
#define STATS(X) \
  X(faults) X(zeroFaults) X(residentFaults) X(removedFaults) X(forwardedFaults) X(staleFaults) \
  X(removes) X(unknownEvents) X(installs) X(poisons) X(missing) X(bytesCopied) X(bytesZeroed) \
  X(bytesPoisoned) X(pagesPresent) X(partialCopies) X(mmapChangingRetries) X(notifications) \
  X(firstServedNs)
// clang-format on
enum {
#define X(n) ST_##n,
  STATS(X)
#undef X
      ST_COUNT
};
typedef struct session {
  atomic_uint ref; /* the JS handle + the thread-safe function */
  int uffd, efd;
  pthread_t thread;
  bool started, closed;
  atomic_bool stop;
  table_t *table;
  uint64_t page_size, chunk_size, total_size;
  uint32_t nregions;
  region_t *regions;
  uint8_t *zero_page; /* hugetlb only: UFFDIO_ZEROPAGE does not exist there, so zeros are copied */

  /* Owned by the fault thread. */
  uint8_t *cstate;  /* CS_* per chunk */
  uint8_t *removed; /* one bit per page of the snapshot; NULL until the first REMOVE */
  uint64_t *faults; /* fault addresses read but not yet resolved */
  size_t nfaults, capfaults;
  cmd_t *work;
  size_t nwork, capwork;
  bool exited;

  /* JS → thread. */
  pthread_mutex_t qmu;
  cmd_t *q;
  size_t nq, capq;

  /* Thread → JS. */
  pthread_mutex_t omu;
  u32vec need, installed, poisoned, missing, touched;
  bool report_touches; /* working-set recording: report first faults served from resident chunks */
  report_t *errs;
  size_t nerrs, caperrs;
  bool out_exited;
  atomic_bool notify_pending;
  napi_threadsafe_function tsfn;

  _Atomic uint64_t stats[ST_COUNT];
  uint64_t created_ns; /* CLOCK_MONOTONIC at creation, for firstServedNs */
} session_t;

#define STAT_ADD(s, name, v) atomic_fetch_add_explicit(&(s)->stats[ST_##name], (v), memory_order_relaxed)

/* Grows *p (n elements of size sz, capacity *cap) to hold one more. Allocation happens only when a
 * burst exceeds every earlier one, so the steady-state fault path does not allocate. */
static inline bool grow(void **p, size_t n, size_t *cap, size_t sz) {
  if (n < *cap) return true;
  size_t nc = *cap ? *cap * 2 : 256;
  void *np = realloc(*p, nc * sz);
  if (!np) return false;
  *p = np;
  *cap = nc;
  return true;
}
static inline void u32_push(u32vec *a, uint32_t x) {
  if (grow((void **)&a->v, a->n, &a->cap, sizeof *a->v)) a->v[a->n++] = x;
}

/* Records the first time a page was made present for the peer (a fault or an install). */
void mark_served(session_t *s);
uint64_t monotonic_ns(void);

/* session_fill.c */
const region_t *region_of(const session_t *s, uint64_t addr);
bool is_removed(const session_t *s, uint64_t off);
bool mark_removed(session_t *s, uint64_t start, uint64_t end);
int zero_range(session_t *s, uint64_t dst, uint64_t len);
int fill_span(session_t *s, uint64_t lo, uint64_t hi, uint64_t chunk_lo, const uint8_t *src,
              uffd_fill_mode mode);
int fill_chunk(session_t *s, uint32_t c, const uint8_t *src, uffd_fill_mode mode);

/* session_events.c: the thread-safe function's call_js */
void session_call_js(napi_env env, napi_value cb, void *context, void *data);

/* session_thread.c */
void *session_thread_main(void *arg);

#endif
