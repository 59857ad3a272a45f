/* A session: one userfaultfd (one restored VM or process) served by one native thread.
 *
 * The thread reads uffd events and resolves on its own every fault it can: pages removed by
 * UFFD_EVENT_REMOVE (zero), chunks the table knows are zero (UFFDIO_ZEROPAGE, or a zero copy on
 * hugetlbfs), chunks whose bytes are resident in the table (whole-chunk UFFDIO_COPY). Only the first
 * fault on an absent chunk crosses into JS, batched through a thread-safe function; JS fetches the
 * chunk, puts it in the table and asks for an install, which this thread performs (whole chunk,
 * skipping present pages, waking every waiter). All uffd ioctls of a session happen on this one
 * thread, so event processing and installs are ordered: a REMOVE is always marked before the next
 * copy, and a removed page never receives snapshot bytes (PROTOCOL.md, "UFFD_EVENT_REMOVE").
 * No policy here: what to fetch, when to give up and how to fail closed are JS decisions. */
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "napi_util.h"
#include "table.h"
#include "uffd.h"

enum { CMD_INSTALL = 1, CMD_POISON = 2 };
/* Per-session chunk state, owned by the fault thread. */
enum { CS_NONE = 0, CS_REQUESTED = 1, CS_INSTALLED = 2 };

typedef struct { uint32_t op, chunk; } cmd_t;
typedef struct { uint64_t base, size, offset; } region_t;
typedef struct { uint32_t chunk; int err; const char *syscall; } report_t;
typedef struct { uint32_t *v; size_t n, cap; } u32vec;

#define STATS(X)                                                                                      \
  X(faults) X(zeroFaults) X(residentFaults) X(removedFaults) X(forwardedFaults) X(staleFaults)        \
  X(removes) X(unknownEvents) X(installs) X(poisons) X(missing) X(bytesCopied) X(bytesZeroed)         \
  X(bytesPoisoned) X(pagesPresent) X(partialCopies) X(mmapChangingRetries) X(notifications)
enum {
#define X(n) ST_##n,
  STATS(X)
#undef X
  ST_COUNT
};
static const char *const STAT_NAMES[] = {
#define X(n) #n,
    STATS(X)
#undef X
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
  u32vec need, installed, poisoned, missing;
  report_t *errs;
  size_t nerrs, caperrs;
  bool out_exited;
  atomic_bool notify_pending;
  napi_threadsafe_function tsfn;

  _Atomic uint64_t stats[ST_COUNT];
} session_t;

static const napi_type_tag SESSION_TAG = {0x6c617a79736e6170ULL, 0x73657373696f6e01ULL};

#define STAT_ADD(s, name, v) atomic_fetch_add_explicit(&(s)->stats[ST_##name], (v), memory_order_relaxed)

/* Grows *p (n elements of size sz, capacity *cap) to hold one more. Allocation happens only when a
 * burst exceeds every earlier one, so the steady-state fault path does not allocate. */
static bool grow(void **p, size_t n, size_t *cap, size_t sz) {
  if (n < *cap) return true;
  size_t nc = *cap ? *cap * 2 : 256;
  void *np = realloc(*p, nc * sz);
  if (!np) return false;
  *p = np;
  *cap = nc;
  return true;
}
static void u32_push(u32vec *a, uint32_t x) {
  if (grow((void **)&a->v, a->n, &a->cap, sizeof *a->v)) a->v[a->n++] = x;
}

static void session_unref(session_t *s) {
  if (atomic_fetch_sub(&s->ref, 1) != 1) return;
  free(s->need.v), free(s->installed.v), free(s->poisoned.v), free(s->missing.v), free(s->errs);
  free(s->q), free(s->regions), free(s->zero_page);
  pthread_mutex_destroy(&s->qmu);
  pthread_mutex_destroy(&s->omu);
  free(s);
}

/* ---- thread → JS ------------------------------------------------------------------------------ */

static void notify(session_t *s) {
  if (!atomic_exchange(&s->notify_pending, true)) {
    STAT_ADD(s, notifications, 1);
    napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_nonblocking);
  }
}

static void out_chunk(session_t *s, u32vec *v, uint32_t chunk) {
  pthread_mutex_lock(&s->omu);
  u32_push(v, chunk);
  pthread_mutex_unlock(&s->omu);
}

static void out_error(session_t *s, uint32_t chunk, int err, const char *syscall) {
  pthread_mutex_lock(&s->omu);
  if (grow((void **)&s->errs, s->nerrs, &s->caperrs, sizeof *s->errs))
    s->errs[s->nerrs++] = (report_t){.chunk = chunk, .err = err, .syscall = syscall};
  pthread_mutex_unlock(&s->omu);
}

static napi_value u32_array(napi_env env, u32vec *a) {
  napi_value ab, arr;
  void *p;
  napi_create_arraybuffer(env, a->n * 4, &p, &ab);
  if (a->n) memcpy(p, a->v, a->n * 4);
  napi_create_typedarray(env, napi_uint32_array, a->n, ab, 0, &arr);
  a->n = 0;
  return arr;
}

static void call_js(napi_env env, napi_value cb, void *context, void *data) {
  session_t *s = context;
  if (env == NULL || s->closed) return;
  /* Clear first: anything the thread adds while we drain triggers a fresh call. */
  atomic_store(&s->notify_pending, false);
  napi_value o, errs, undef;
  napi_create_object(env, &o);
  pthread_mutex_lock(&s->omu);
  set_named(env, o, "need", u32_array(env, &s->need));
  set_named(env, o, "installed", u32_array(env, &s->installed));
  set_named(env, o, "poisoned", u32_array(env, &s->poisoned));
  set_named(env, o, "missing", u32_array(env, &s->missing));
  napi_create_array_with_length(env, s->nerrs, &errs);
  for (size_t i = 0; i < s->nerrs; i++) {
    napi_value e = make_errno_error(env, s->errs[i].err, s->errs[i].syscall);
    if (s->errs[i].chunk != UINT32_MAX) set_named(env, e, "chunk", make_u64(env, s->errs[i].chunk));
    napi_set_element(env, errs, i, e);
  }
  s->nerrs = 0;
  napi_value ex;
  napi_get_boolean(env, s->out_exited, &ex);
  pthread_mutex_unlock(&s->omu);
  set_named(env, o, "errors", errs);
  set_named(env, o, "exited", ex);
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, cb, 1, &o, NULL) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
}

static void tsfn_finalize(napi_env env, void *data, void *hint) { session_unref(data); }

/* ---- address arithmetic ----------------------------------------------------------------------- */

static const region_t *region_of(const session_t *s, uint64_t addr) {
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    if (addr >= r->base && addr - r->base < r->size) return r;
  }
  return NULL;
}

static bool is_removed(const session_t *s, uint64_t off) {
  uint64_t pg = off / s->page_size;
  return s->removed && (s->removed[pg >> 3] >> (pg & 7)) & 1;
}

/* Marks the snapshot pages behind host range [start, end) as removed: they read as zero from now on. */
static bool mark_removed(session_t *s, uint64_t start, uint64_t end) {
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

static int do_fill(session_t *s, uffd_fill_mode mode, uint64_t dst, const void *src, uint64_t len) {
  uffd_fill_stats st = {0};
  uint64_t done = 0;
  int r = uffd_fill(s->uffd, mode, dst, src, len, s->page_size, true, &st, &done);
  if (mode == UFFD_FILL_COPY) STAT_ADD(s, bytesCopied, st.bytes);
  else if (mode == UFFD_FILL_ZERO) STAT_ADD(s, bytesZeroed, st.bytes);
  else STAT_ADD(s, bytesPoisoned, st.bytes);
  if (st.eexist_pages) STAT_ADD(s, pagesPresent, st.eexist_pages);
  if (st.partials) STAT_ADD(s, partialCopies, st.partials);
  return r;
}

static int zero_range(session_t *s, uint64_t dst, uint64_t len) {
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

/* Fills snapshot range [lo, hi) in every region it touches: from blob (bytes of the chunk starting at
 * chunk_lo), zeros (blob NULL, mode ZERO) or poison. */
static int fill_span(session_t *s, uint64_t lo, uint64_t hi, uint64_t chunk_lo, const blob_t *blob,
                     uffd_fill_mode mode) {
  for (uint32_t i = 0; i < s->nregions; i++) {
    const region_t *r = &s->regions[i];
    uint64_t a = lo > r->offset ? lo : r->offset;
    uint64_t b = hi < r->offset + r->size ? hi : r->offset + r->size;
    if (a >= b) continue;
    uint64_t dst = r->base + (a - r->offset);
    int rc;
    if (mode == UFFD_FILL_POISON) rc = do_fill(s, UFFD_FILL_POISON, dst, NULL, b - a);
    else if (blob) rc = copy_range(s, dst, blob->data + (a - chunk_lo), a, b - a);
    else rc = zero_range(s, dst, b - a);
    if (rc) return rc;
  }
  return 0;
}

static int fill_chunk(session_t *s, uint32_t c, const blob_t *blob, uffd_fill_mode mode) {
  uint64_t lo = (uint64_t)c * s->chunk_size;
  uint64_t hi = lo + s->chunk_size > s->total_size ? s->total_size : lo + s->chunk_size;
  return fill_span(s, lo, hi, lo, blob, mode);
}

/* Errors other than "retry after draining events". ESRCH: the address space is gone (the peer
 * exited); ENOENT: the range is no longer registered (unmapped). Neither is worth retrying. */
static void classify(session_t *s, int r, uint32_t chunk, const char *syscall) {
  if (r == -ESRCH) {
    if (!s->exited) {
      s->exited = true;
      pthread_mutex_lock(&s->omu);
      s->out_exited = true;
      pthread_mutex_unlock(&s->omu);
    }
    return;
  }
  out_error(s, chunk, -r, syscall);
}

/* ---- the fault path --------------------------------------------------------------------------- */

/* Resolves one fault. Returns -EAGAIN when the address space is changing (caller re-drains). */
static int resolve(session_t *s, uint64_t addr) {
  uint64_t page = addr & ~(s->page_size - 1);
  const region_t *r = region_of(s, page);
  if (!r) {
    /* The peer registered memory it did not declare in the handshake; JS decides (fail closed). */
    out_error(s, UINT32_MAX, EFAULT, "fault outside the declared regions");
    return 0;
  }
  uint64_t off = r->offset + (page - r->base);
  if (is_removed(s, off)) {
    STAT_ADD(s, removedFaults, 1);
    int rc = zero_range(s, page, s->page_size);
    if (rc && rc != -EAGAIN) classify(s, rc, (uint32_t)(off / s->chunk_size), "ioctl(UFFDIO_ZEROPAGE)");
    return rc == -EAGAIN ? rc : 0;
  }
  uint32_t c = (uint32_t)(off / s->chunk_size);
  blob_t *blob = NULL;
  int st = table_get(s->table, c, &blob);
  int rc = 0;
  if (s->cstate[c] == CS_INSTALLED) {
    /* The chunk was installed whole: this event was queued before the install woke its thread, or
     * the page was lost some other way. Resolve just this page; EEXIST (the usual case) wakes it. */
    STAT_ADD(s, staleFaults, 1);
    uint64_t plo = off, phi = off + s->page_size;
    if (st == CHUNK_RESIDENT) rc = fill_span(s, plo, phi, (uint64_t)c * s->chunk_size, blob, UFFD_FILL_COPY);
    else if (st == CHUNK_ZERO) rc = fill_span(s, plo, phi, plo, NULL, UFFD_FILL_ZERO);
    else {
      s->cstate[c] = CS_REQUESTED;
      out_chunk(s, &s->need, c);
      STAT_ADD(s, forwardedFaults, 1);
    }
  } else if (st == CHUNK_ZERO) {
    STAT_ADD(s, zeroFaults, 1);
    rc = fill_chunk(s, c, NULL, UFFD_FILL_ZERO);
    if (rc == 0) s->cstate[c] = CS_INSTALLED;
  } else if (st == CHUNK_RESIDENT) {
    STAT_ADD(s, residentFaults, 1);
    rc = fill_chunk(s, c, blob, UFFD_FILL_COPY);
    if (rc == 0) s->cstate[c] = CS_INSTALLED;
  } else if (s->cstate[c] != CS_REQUESTED) {
    /* Absent: ask JS once. The faulting thread sleeps in the kernel until the install wakes it; the
     * event itself is not kept, because the install's copy wakes every waiter in the chunk. */
    s->cstate[c] = CS_REQUESTED;
    out_chunk(s, &s->need, c);
    STAT_ADD(s, forwardedFaults, 1);
  }
  blob_unref(blob);
  if (rc && rc != -EAGAIN) classify(s, rc, c, "ioctl(UFFDIO_COPY)");
  return rc == -EAGAIN ? rc : 0;
}

static int run_command(session_t *s, cmd_t cmd) {
  uint32_t c = cmd.chunk;
  if (cmd.op == CMD_POISON) {
    int rc = fill_chunk(s, c, NULL, UFFD_FILL_POISON);
    if (rc == -EAGAIN) return rc;
    if (rc) classify(s, rc, c, "ioctl(UFFDIO_POISON)");
    else {
      STAT_ADD(s, poisons, 1);
      s->cstate[c] = CS_INSTALLED;
      out_chunk(s, &s->poisoned, c);
    }
    return 0;
  }
  if (s->cstate[c] == CS_INSTALLED) {
    out_chunk(s, &s->installed, c);
    return 0;
  }
  blob_t *blob = NULL;
  int st = table_get(s->table, c, &blob);
  int rc = 0;
  if (st == CHUNK_ABSENT) {
    /* Evicted between put and install (JS's budget policy raced its own install). JS re-puts. */
    s->cstate[c] = CS_NONE;
    STAT_ADD(s, missing, 1);
    out_chunk(s, &s->missing, c);
    return 0;
  }
  rc = fill_chunk(s, c, st == CHUNK_RESIDENT ? blob : NULL, st == CHUNK_RESIDENT ? UFFD_FILL_COPY : UFFD_FILL_ZERO);
  blob_unref(blob);
  if (rc == -EAGAIN) return rc;
  if (rc) {
    classify(s, rc, c, "ioctl(UFFDIO_COPY)");
    return 0;
  }
  s->cstate[c] = CS_INSTALLED;
  STAT_ADD(s, installs, 1);
  out_chunk(s, &s->installed, c);
  return 0;
}

/* Reads every pending event. REMOVEs are applied at once, before any ioctl, as the protocol
 * requires; page faults are queued for resolve(). Returns 0 or -errno from read(). */
static int drain_events(session_t *s) {
  struct uffd_msg msgs[64];
  for (;;) {
    ssize_t n = read(s->uffd, msgs, sizeof msgs);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN ? 0 : -errno;
    }
    size_t cnt = (size_t)n / sizeof msgs[0];
    for (size_t i = 0; i < cnt; i++) {
      const struct uffd_msg *m = &msgs[i];
      switch (m->event) {
        case UFFD_EVENT_PAGEFAULT:
          STAT_ADD(s, faults, 1);
          if (grow((void **)&s->faults, s->nfaults, &s->capfaults, sizeof *s->faults))
            s->faults[s->nfaults++] = m->arg.pagefault.address;
          else out_error(s, UINT32_MAX, ENOMEM, "realloc(fault queue)");
          break;
        case UFFD_EVENT_REMOVE:
          STAT_ADD(s, removes, 1);
          if (!mark_removed(s, m->arg.remove.start, m->arg.remove.end))
            out_error(s, UINT32_MAX, ENOMEM, "calloc(removed bitmap)");
          break;
        case UFFD_EVENT_FORK:
          /* Not requested by Firecracker; a client that asked for it hands us a new uffd: close it
           * rather than leak it. */
          close((int)m->arg.fork.ufd);
          STAT_ADD(s, unknownEvents, 1);
          break;
        default:
          STAT_ADD(s, unknownEvents, 1);
          break;
      }
    }
    if (cnt < sizeof msgs / sizeof msgs[0]) return 0;
  }
}

static void take_commands(session_t *s) {
  pthread_mutex_lock(&s->qmu);
  for (size_t i = 0; i < s->nq; i++)
    if (grow((void **)&s->work, s->nwork, &s->capwork, sizeof *s->work)) s->work[s->nwork++] = s->q[i];
  s->nq = 0;
  pthread_mutex_unlock(&s->qmu);
}

/* Runs queued commands then queued faults; stops at the first -EAGAIN and keeps what is left. */
static int process(session_t *s) {
  size_t i = 0;
  int rc = 0;
  for (; i < s->nwork && !s->exited; i++)
    if ((rc = run_command(s, s->work[i])) == -EAGAIN) break;
  memmove(s->work, s->work + i, (s->nwork - i) * sizeof *s->work);
  s->nwork = s->exited ? 0 : s->nwork - i;
  if (rc) return rc;
  for (i = 0; i < s->nfaults && !s->exited; i++)
    if ((rc = resolve(s, s->faults[i])) == -EAGAIN) break;
  memmove(s->faults, s->faults + i, (s->nfaults - i) * sizeof *s->faults);
  s->nfaults = s->exited ? 0 : s->nfaults - i;
  return rc;
}

static bool has_output(session_t *s) {
  pthread_mutex_lock(&s->omu);
  bool any = s->need.n || s->installed.n || s->poisoned.n || s->missing.n || s->nerrs || s->out_exited;
  pthread_mutex_unlock(&s->omu);
  return any;
}

static void *run(void *arg) {
  session_t *s = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are Node's business, not this thread's */
  struct pollfd p[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->efd, .events = POLLIN}};
  bool again = false;
  bool reported_exit = false;
  while (!atomic_load(&s->stop)) {
    /* After an EAGAIN the REMOVE that caused it is about to be queued: wake up as soon as it is,
     * or after 1 ms at most. */
    int n = poll(p, 2, again ? 1 : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      out_error(s, UINT32_MAX, errno, "poll");
      notify(s);
      break;
    }
    if (p[1].revents & POLLIN) {
      uint64_t v;
      if (read(s->efd, &v, sizeof v) < 0 && errno != EAGAIN) out_error(s, UINT32_MAX, errno, "read(eventfd)");
    }
    if (p[0].revents & (POLLERR | POLLNVAL)) {
      /* POLLERR: UFFDIO_API was never done on this uffd; nothing can be served. */
      out_error(s, UINT32_MAX, p[0].revents & POLLNVAL ? EBADF : EINVAL, "poll(uffd)");
      notify(s);
      break;
    }
    int rc = drain_events(s);
    if (rc < 0) {
      out_error(s, UINT32_MAX, -rc, "read(uffd)");
      notify(s);
      break;
    }
    take_commands(s);
    again = process(s) == -EAGAIN;
    if (again) STAT_ADD(s, mmapChangingRetries, 1);
    if (s->exited && !reported_exit) reported_exit = true;
    if (has_output(s)) notify(s);
    if (s->exited) p[0].events = 0; /* nothing more can be served; wait for close() */
  }
  return NULL;
}

/* ---- JS bindings ------------------------------------------------------------------------------ */

static session_t *session_from_js(napi_env env, napi_value v) {
  bool ok = false;
  void *p = NULL;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_external || napi_check_object_type_tag(env, v, &SESSION_TAG, &ok) != napi_ok || !ok ||
      napi_get_value_external(env, v, &p) != napi_ok) {
    throw_arg(env, "session must be a handle returned by sessionCreate()");
    return NULL;
  }
  return p;
}

static void session_stop(session_t *s) {
  if (s->closed) return;
  s->closed = true;
  if (s->started) {
    atomic_store(&s->stop, true);
    uint64_t one = 1;
    (void)!write(s->efd, &one, sizeof one);
    pthread_join(s->thread, NULL);
  }
  close(s->uffd);
  close(s->efd);
  free(s->cstate), free(s->removed), free(s->faults), free(s->work);
  s->cstate = NULL, s->removed = NULL, s->faults = NULL, s->work = NULL;
  table_unref(s->table);
  s->table = NULL;
  if (s->tsfn) napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
}

static void session_finalize(napi_env env, void *data, void *hint) {
  session_t *s = data;
  session_stop(s);
  session_unref(s);
}

static bool parse_regions(napi_env env, napi_value arr, session_t *s) {
  bool is;
  uint32_t n;
  if (napi_is_array(env, arr, &is) != napi_ok || !is || napi_get_array_length(env, arr, &n) != napi_ok || n == 0 ||
      n > 1024) {
    throw_arg(env, "regions must be an array of 1 to 1024 {base, size, offset} objects");
    return false;
  }
  s->regions = calloc(n, sizeof *s->regions);
  if (!s->regions) {
    throw_errno(env, ENOMEM, "calloc");
    return false;
  }
  s->nregions = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value o, b, sz, off;
    region_t *r = &s->regions[i];
    napi_get_element(env, arr, i, &o);
    if (!prop(env, o, "base", &b) || !prop(env, o, "size", &sz) || !prop(env, o, "offset", &off)) {
      throw_arg(env, "regions[%u] must have base, size and offset", i);
      return false;
    }
    if (!arg_u64(env, b, "regions[].base", &r->base) || !arg_u64(env, sz, "regions[].size", &r->size) ||
        !arg_u64(env, off, "regions[].offset", &r->offset))
      return false;
    uint64_t m = s->page_size - 1;
    /* Memory safety, not policy: a copy reads blob bytes at (offset - chunk start), so every region
     * must lie inside the snapshot and on page boundaries. */
    if (r->size == 0 || (r->base & m) || (r->size & m) || (r->offset & m) || r->offset > s->total_size ||
        r->size > s->total_size - r->offset || r->base + r->size < r->base) {
      throw_arg(env, "regions[%u] must be page-aligned, non-empty and inside the snapshot (%llu bytes)", i,
                (unsigned long long)s->total_size);
      return false;
    }
  }
  return true;
}

/* sessionCreate(uffd, {table, pageSize, regions}, onEvent) → handle. Takes ownership of uffd. */
static napi_value js_create(napi_env env, napi_callback_info info) {
  napi_value argv[3], v;
  int uffd;
  if (!get_args(env, info, 3, argv, NULL) || !arg_fd(env, argv[0], "uffd", &uffd)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) {
    throw_arg(env, "onEvent must be a function");
    return NULL;
  }
  if (!prop(env, argv[1], "table", &v)) {
    throw_arg(env, "options.table is required");
    return NULL;
  }
  table_t *table = table_from_js(env, v);
  if (!table) return NULL;
  uint64_t ps = 4096;
  if (prop(env, argv[1], "pageSize", &v) && !arg_u64(env, v, "pageSize", &ps)) return NULL;
  if (ps != 4096 && ps != 2097152) {
    throw_arg(env, "pageSize must be 4096 or 2097152, received %llu", (unsigned long long)ps);
    return NULL;
  }
  if (table->chunk_size % ps) {
    throw_arg(env, "the table's chunk size (%llu) must be a multiple of pageSize (%llu)",
              (unsigned long long)table->chunk_size, (unsigned long long)ps);
    return NULL;
  }
  if (table->total_size % ps) {
    throw_arg(env, "the snapshot size (%llu) must be a multiple of pageSize", (unsigned long long)table->total_size);
    return NULL;
  }
  session_t *s = calloc(1, sizeof *s);
  if (!s) {
    throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  atomic_init(&s->ref, 1);
  pthread_mutex_init(&s->qmu, NULL);
  pthread_mutex_init(&s->omu, NULL);
  s->uffd = -1;
  s->efd = -1;
  s->page_size = ps;
  s->chunk_size = table->chunk_size;
  s->total_size = table->total_size;
  if (!prop(env, argv[1], "regions", &v)) {
    throw_arg(env, "options.regions is required");
    goto fail;
  }
  if (!parse_regions(env, v, s)) goto fail;
  s->cstate = calloc(table->nchunks, 1);
  if (ps != 4096) s->zero_page = aligned_alloc(4096, ps), s->zero_page && memset(s->zero_page, 0, ps);
  if (!s->cstate || (ps != 4096 && !s->zero_page)) {
    throw_errno(env, ENOMEM, "calloc");
    goto fail;
  }
  /* Firecracker creates the uffd O_NONBLOCK; a client that did not would make read() block and the
   * thread deaf to close(). The flag lives on the shared open file description, which the client
   * never reads from, so setting it is invisible to the client. */
  int fl = fcntl(uffd, F_GETFL);
  if (fl < 0 || fcntl(uffd, F_SETFL, fl | O_NONBLOCK) < 0) {
    throw_errno(env, errno, "fcntl(uffd, O_NONBLOCK)");
    goto fail;
  }
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->efd < 0) {
    throw_errno(env, errno, "eventfd");
    goto fail;
  }
  napi_value name;
  napi_create_string_utf8(env, "lazysnap.session", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, s, tsfn_finalize, s, call_js, &s->tsfn) !=
      napi_ok) {
    throw_errno(env, EAGAIN, "napi_create_threadsafe_function");
    goto fail;
  }
  atomic_fetch_add(&s->ref, 1); /* held by the tsfn until tsfn_finalize */
  s->table = table;
  table_ref(table);
  s->uffd = uffd;
  int err = pthread_create(&s->thread, NULL, run, s);
  if (err) {
    s->uffd = -1; /* the caller keeps ownership when creation fails */
    session_stop(s);
    session_unref(s);
    throw_errno(env, err, "pthread_create");
    return NULL;
  }
  pthread_setname_np(s->thread, "lazysnap-uffd");
  s->started = true;
  napi_value ext;
  NAPI_OK(env, napi_create_external(env, s, session_finalize, NULL, &ext));
  NAPI_OK(env, napi_type_tag_object(env, ext, &SESSION_TAG));
  return ext;
fail:
  if (s->efd >= 0) close(s->efd);
  free(s->cstate), free(s->zero_page), free(s->regions);
  pthread_mutex_destroy(&s->qmu), pthread_mutex_destroy(&s->omu);
  free(s);
  return NULL;
}

/* sessionInstall(session, chunk | Uint32Array) / sessionPoison(...): queue work for the thread. */
static napi_value push_commands(napi_env env, napi_callback_info info, uint32_t op) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  if (s->closed) {
    throw_errno(env, EBADF, "session closed");
    return NULL;
  }
  uint32_t one, *list = &one;
  size_t n = 1;
  bool is_ta = false;
  napi_is_typedarray(env, argv[1], &is_ta);
  if (is_ta) {
    napi_typedarray_type tt;
    void *p;
    napi_get_typedarray_info(env, argv[1], &tt, &n, &p, NULL, NULL);
    if (tt != napi_uint32_array) {
      throw_arg(env, "chunks must be a Uint32Array");
      return NULL;
    }
    list = p;
  } else if (!arg_u32(env, argv[1], "chunkIndex", &one)) {
    return NULL;
  }
  uint32_t nchunks = (uint32_t)((s->total_size + s->chunk_size - 1) / s->chunk_size);
  for (size_t i = 0; i < n; i++) {
    if (list[i] >= nchunks) {
      throw_arg(env, "chunkIndex must be below %u, received %u", nchunks, list[i]);
      return NULL;
    }
  }
  pthread_mutex_lock(&s->qmu);
  for (size_t i = 0; i < n; i++)
    if (grow((void **)&s->q, s->nq, &s->capq, sizeof *s->q)) s->q[s->nq++] = (cmd_t){op, list[i]};
  pthread_mutex_unlock(&s->qmu);
  uint64_t v = 1;
  if (write(s->efd, &v, sizeof v) < 0 && errno != EAGAIN) {
    throw_errno(env, errno, "write(eventfd)");
    return NULL;
  }
  return make_undefined(env);
}
static napi_value js_install(napi_env env, napi_callback_info info) { return push_commands(env, info, CMD_INSTALL); }
static napi_value js_poison(napi_env env, napi_callback_info info) { return push_commands(env, info, CMD_POISON); }

static napi_value js_stats(napi_env env, napi_callback_info info) {
  napi_value argv[1], o;
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  NAPI_OK(env, napi_create_object(env, &o));
  for (int i = 0; i < ST_COUNT; i++)
    set_named(env, o, STAT_NAMES[i], make_u64(env, atomic_load_explicit(&s->stats[i], memory_order_relaxed)));
  return o;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  session_stop(s);
  return make_undefined(env);
}

napi_value session_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "sessionCreate", js_create) || !export_fn(env, exports, "sessionInstall", js_install) ||
      !export_fn(env, exports, "sessionPoison", js_poison) || !export_fn(env, exports, "sessionStats", js_stats) ||
      !export_fn(env, exports, "sessionClose", js_close))
    return NULL;
  return exports;
}
