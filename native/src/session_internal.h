/* Internal to the session: the state shared by the fault thread (session_thread.c), the fill helpers
 * (session_fill.c), the shared state region (session_state.c) and the JS bindings (session.c,
 * session_events.c). See session.c for the design. */
#ifndef LAZYSNAP_SESSION_INTERNAL_H
#define LAZYSNAP_SESSION_INTERNAL_H

#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "session_state.h"
#include "table.h"
#include "uffd.h"

enum { CMD_INSTALL = 1, CMD_POISON = 2, CMD_WAKE = 3 };
/* Per-session chunk state, owned by the fault thread. */
enum { CS_NONE = 0, CS_REQUESTED = 1, CS_INSTALLED = 2 };

/* What failed, for JS to decide on (runtime/native-failure.ts). The native side never decides what a
 * failure means: it serves what the kernel allows and reports the rest. Keep in step with
 * FAILURE_KINDS in native/addon.ts. */
typedef enum {
  FAIL_COPY = 1,        /* UFFDIO_COPY refused a page (after narrowing) */
  FAIL_ZEROPAGE,        /* UFFDIO_ZEROPAGE refused a page (after narrowing) */
  FAIL_WAKE,            /* UFFDIO_WAKE failed: waiters may stay asleep */
  FAIL_POISON,          /* UFFDIO_POISON refused a page */
  FAIL_EVENT_READ,      /* read(uffd) failed: the thread stopped serving */
  FAIL_THREAD_EXIT,     /* the fault thread stopped (poll error, invalid uffd) */
  FAIL_OUT_OF_MEMORY,   /* an output could not be recorded: some report is lost */
  FAIL_OUTSIDE_REGIONS, /* a fault on memory the handshake did not declare */
  FAIL_INJECTED,        /* test builds only (LAZYSNAP_FAULT_INJECTION) */
} fail_kind;

typedef struct {
  uint32_t op, chunk;
} cmd_t;
typedef struct {
  uint64_t base, size, offset;
} region_t;
typedef struct {
  uint8_t kind;
  int err;          /* positive errno */
  uint32_t chunk;   /* UINT32_MAX when not about one chunk */
  uint64_t addr;    /* first byte concerned in the peer, 0 when none */
  uint64_t len;     /* bytes concerned from addr (coalesced runs of pages) */
  const char *what; /* the syscall or step, for messages */
} failure_t;
typedef struct {
  uint32_t *v;
  /* need and installed only: CLOCK_MONOTONIC ns of each entry (when the fault was read, when the
   * install woke the peer), for JS's stall accounting. NULL for the others. */
  uint64_t *t;
  size_t n, cap;
} u32vec;

/* Fixed sizes: the fault path never allocates. */
#define FAULTQ_CAP 4096 /* pending fault addresses; beyond it, every region is woken instead */
#define FAILQ_CAP  256  /* failures between two deliveries to JS; beyond it, FAIL_OUT_OF_MEMORY */

/* An X-macro list of the fault thread's counters. */
// clang-format off
#define STATS(X) \
  X(faults) X(zeroFaults) X(residentFaults) X(removedFaults) X(forwardedFaults) X(staleFaults) \
  X(removes) X(unknownEvents) X(installs) X(poisons) X(missing) X(bytesCopied) X(bytesZeroed) \
  X(bytesPoisoned) X(pagesPresent) X(partialCopies) X(mmapChangingRetries) X(notifications) \
  X(firstServedNs) X(narrowedFills) X(failedPages) X(wakeAlls) X(adoptedRemoves) X(adoptedFaults) \
  X(directFaults)
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
  bool started, joined, closed;
  uint64_t shared_id; /* sessionShare(): other threads may queue installs by this id; 0 when not */
  /* sessionCreate's `direct` option: the shared id under which absent chunks go to the table's direct
   * queue; 0 when they go to JS. Set before the thread starts, cleared with the share. */
  _Atomic uint64_t direct_id;
  atomic_bool stop;
  table_t *table;
  uint64_t page_size, chunk_size, total_size;
  uint32_t nchunks;
  uint32_t nregions;
  region_t *regions;
  uint8_t *zero_page; /* hugetlb only: UFFDIO_ZEROPAGE does not exist there, so zeros are copied */
  /* The removed-page bitmap, the installed-chunk bitmap and the event buffer, in a memfd that can
   * outlive this process (session_state.h). */
  session_state_t state;
  bool adopted; /* the state came from an earlier server: re-apply its events, wake every region */
  /* Counting faults that waited across a handover: 1 until the adoption's wake of every region, 2 for
   * the read right after it (the threads the wake sent back), then 0. Fault thread only. */
  uint8_t adopt_phase;

  /* Owned by the fault thread. */
  uint8_t *cstate;  /* CS_* per chunk */
  uint64_t *faults; /* fault addresses read but not yet resolved: FAULTQ_CAP entries */
  size_t nfaults;
  bool wake_all; /* a fault was dropped (queue full): wake every region once the queue is served */
  cmd_t *work;   /* commands taken from q, run in order */
  size_t nwork, iwork, capwork;
  bool exited;

  /* JS → thread, double-buffered with work: the thread swaps the arrays, so it never allocates. */
  pthread_mutex_t qmu;
  cmd_t *q;
  size_t nq, capq;

  /* Thread → JS. */
  pthread_mutex_t omu;
  u32vec need, installed, poisoned, missing, touched;
  /* Absent chunks handed to the loaders through the table's direct queue (direct.h) rather than asked of
   * JS: reported all the same, as faults JS has not to fetch for. Stamped like need. */
  u32vec claimed;
  bool report_touches; /* working-set recording: report first faults served from resident chunks */
  failure_t fails[FAILQ_CAP];
  size_t nfails;
  bool fails_lost;  /* FAILQ_CAP overflowed, or an output vector could not grow */
  failure_t fatal;  /* the thread stopped: reported once, kind 0 while running */
  bool out_exited;  /* the address space is gone (ESRCH) */
  bool out_stopped; /* the thread has exited; nothing more will be served */
  atomic_bool notify_pending;
  napi_threadsafe_function tsfn; /* NULL once Node finalized it */

  _Atomic uint64_t stats[ST_COUNT];
  uint64_t created_ns; /* CLOCK_MONOTONIC at creation, for firstServedNs */
#ifdef LAZYSNAP_FAULT_INJECTION
  atomic_int inject_kind;  /* 0 none; FAIL_EVENT_READ or FAIL_OUT_OF_MEMORY */
  atomic_int inject_after; /* events (reads) before the injected failure */
#endif
} session_t;

#define STAT_ADD(s, name, v) atomic_fetch_add_explicit(&(s)->stats[ST_##name], (v), memory_order_relaxed)

/* Grows *p (n elements of size sz, capacity *cap) to hold one more. */
static inline bool grow(void **p, size_t n, size_t *cap, size_t sz) {
  if (n < *cap) return true;
  size_t nc = *cap ? *cap * 2 : 256;
  void *np = realloc(*p, nc * sz);
  if (!np) return false;
  *p = np;
  *cap = nc;
  return true;
}

/* Records the first time a page was made present for the peer (a fault or an install). */
void mark_served(session_t *s);
uint64_t monotonic_ns(void);

/* session_thread.c: thread → JS outputs (omu taken inside). */
void out_chunk(session_t *s, u32vec *v, uint32_t chunk);
void out_failure(session_t *s, fail_kind kind, int err, uint32_t chunk, uint64_t addr, uint64_t len,
                 const char *what);

/* session_fill.c */
const region_t *region_of(const session_t *s, uint64_t addr);
bool is_removed(const session_t *s, uint64_t off);
void mark_removed(session_t *s, uint64_t start, uint64_t end);
int zero_range(session_t *s, uint64_t dst, uint64_t len, uint32_t chunk);
int fill_span(session_t *s, uint64_t lo, uint64_t hi, uint64_t chunk_lo, const uint8_t *src,
              uffd_fill_mode mode, uint32_t chunk);
int fill_chunk(session_t *s, uint32_t c, const uint8_t *src, uffd_fill_mode mode);
int wake_chunk(session_t *s, uint32_t c);
int wake_regions(session_t *s);

/* session_events.c: the thread-safe function's call_js, and the outbox as one event object (sessionDrain) */
void session_call_js(napi_env env, napi_value cb, void *context, void *data);
napi_value session_take_event(napi_env env, session_t *s);

/* session_thread.c */
void *session_thread_main(void *arg);

#endif
