/* The fault thread of a session: reads uffd events, applies REMOVEs first, runs queued installs and
 * poisons, resolves faults in C where it can and forwards the first fault on an absent chunk to JS, or in
 * direct mode to the loader threads (direct.h), reporting it to JS as claimed.
 * All uffd ioctls of a session happen here, so events and installs are ordered (see session.c).
 *
 * Nothing on this path allocates: the fault queue and the failure list have fixed sizes, commands
 * arrive in a buffer swapped with JS's, events are read into the session's state region. When an
 * output cannot be recorded the session says so (FAIL_OUT_OF_MEMORY), because a lost report would
 * leave a thread of the peer asleep with nobody to decide about it. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "direct.h"
#include "session_internal.h"

/* The longest a report that nothing waits on (an install done) is held back before JS is woken for it. */
#define INFO_DEFER_MS 2

/* ---- thread → JS ------------------------------------------------------------------------------ */

static void notify(session_t *s) {
  if (!atomic_exchange(&s->notify_pending, true)) {
    STAT_ADD(s, notifications, 1);
    napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_nonblocking);
  }
}

#ifdef LAZYSNAP_FAULT_INJECTION
/* Test builds only: true when the armed injection of this kind fires now. */
static bool injected(session_t *s, int kind) {
  if (atomic_load(&s->inject_kind) != kind) return false;
  if (atomic_fetch_sub(&s->inject_after, 1) > 1) return false;
  atomic_store(&s->inject_kind, 0);
  return true;
}
/* Test builds only: with LAZYSNAP_TEST_DIE_ON_REMOVE set, the process dies (SIGKILL) right after the
 * kernel handed it a REMOVE and before applying it: the window a supervised restart must cover from the
 * event buffer in the state memfd alone (test/unit/supervisor.test.ts). */
static void die_on_remove(const struct uffd_msg *msgs, size_t cnt) {
  static int armed = -1;
  if (armed < 0) armed = getenv("LAZYSNAP_TEST_DIE_ON_REMOVE") != NULL;
  if (!armed) return;
  for (size_t i = 0; i < cnt; i++)
    if (msgs[i].event == UFFD_EVENT_REMOVE) raise(SIGKILL);
}
#else
#define injected(s, kind)        false
#define die_on_remove(msgs, cnt) ((void)0)
#endif

/* Room for one more entry in v (and its time stamp): both arrays grow together. */
static bool grow_timed(u32vec *v) {
  if (v->n < v->cap) return true;
  size_t cap = v->cap;
  if (!grow((void **)&v->v, v->n, &cap, sizeof *v->v)) return false;
  if (v->t) {
    uint64_t *t = realloc(v->t, cap * sizeof *t);
    if (!t) return false; /* v->v grew; cap stays, so the next try grows t again */
    v->t = t;
  }
  v->cap = cap;
  return true;
}

void out_chunk(session_t *s, u32vec *v, uint32_t chunk) {
  /* Only need and installed are stamped (a vDSO clock read), before the lock is taken. */
  uint64_t now = v->t ? monotonic_ns() : 0;
  pthread_mutex_lock(&s->omu);
  if (!injected(s, FAIL_OUT_OF_MEMORY) && grow_timed(v)) {
    if (v->t) v->t[v->n] = now;
    v->v[v->n++] = chunk;
  } else {
    s->fails_lost = true;
  }
  pthread_mutex_unlock(&s->omu);
}

void out_failure(session_t *s, fail_kind kind, int err, uint32_t chunk, uint64_t addr, uint64_t len,
                 const char *what) {
  pthread_mutex_lock(&s->omu);
  failure_t *last = s->nfails ? &s->fails[s->nfails - 1] : NULL;
  if (last && last->kind == kind && last->err == err && last->chunk == chunk && addr &&
      last->addr + last->len == addr)
    last->len += len; /* one report for a run of refused pages */
  else if (s->nfails < FAILQ_CAP)
    s->fails[s->nfails++] =
        (failure_t){.kind = kind, .err = err, .chunk = chunk, .addr = addr, .len = len, .what = what};
  else
    s->fails_lost = true;
  pthread_mutex_unlock(&s->omu);
}

/* The thread is about to stop serving: reported once, with why. */
static void stop_with(session_t *s, fail_kind kind, int err, const char *what) {
  pthread_mutex_lock(&s->omu);
  if (!s->fatal.kind) s->fatal = (failure_t){.kind = kind, .err = err, .chunk = UINT32_MAX, .what = what};
  s->out_stopped = true;
  pthread_mutex_unlock(&s->omu);
  notify(s);
}

/* ESRCH from any ioctl: the address space is gone (the peer exited). Nothing more to serve. */
static int settle(session_t *s, int rc) {
  if (rc == -ESRCH && !s->exited) {
    s->exited = true;
    pthread_mutex_lock(&s->omu);
    s->out_exited = true;
    pthread_mutex_unlock(&s->omu);
  }
  return rc == -EAGAIN ? rc : 0;
}

/* ---- the fault path --------------------------------------------------------------------------- */

/* Resolves one fault. Returns -EAGAIN when the address space is changing (caller re-drains). */
static int resolve(session_t *s, uint64_t addr) {
  uint64_t page = addr & ~(s->page_size - 1);
  const region_t *r = region_of(s, page);
  if (!r) {
    /* The peer registered memory it did not declare in the handshake; JS decides (fail closed). */
    out_failure(s, FAIL_OUTSIDE_REGIONS, EFAULT, UINT32_MAX, page, s->page_size,
                "fault outside the declared regions");
    return 0;
  }
  uint64_t off = r->offset + (page - r->base);
  uint32_t c = (uint32_t)(off / s->chunk_size);
  if (is_removed(s, off)) {
    int rc = zero_range(s, page, s->page_size, c);
    /* Counted once resolved: an EAGAIN (mmap changing) retries the same fault later. */
    if (rc == 0) STAT_ADD(s, removedFaults, 1);
    return settle(s, rc);
  }
  const uint8_t *data = NULL;
  int st = table_acquire(s->table, c, &data);
  int rc = 0;
  if (s->cstate[c] == CS_INSTALLED) {
    /* The chunk was installed whole: this event was queued before the install woke its thread, or
     * the page was lost some other way. Resolve just this page; EEXIST (the usual case) wakes it. */
    STAT_ADD(s, staleFaults, 1);
    uint64_t plo = off, phi = off + s->page_size;
    if (st == CHUNK_RESIDENT)
      rc = fill_span(s, plo, phi, (uint64_t)c * s->chunk_size, data, UFFD_FILL_COPY, c);
    else if (st == CHUNK_ZERO)
      rc = fill_span(s, plo, phi, plo, NULL, UFFD_FILL_ZERO, c);
    else {
      s->cstate[c] = CS_REQUESTED;
      out_chunk(s, &s->need, c);
      STAT_ADD(s, forwardedFaults, 1);
    }
  } else if (st == CHUNK_ZERO) {
    rc = fill_chunk(s, c, NULL, UFFD_FILL_ZERO);
    if (rc == 0) {
      STAT_ADD(s, zeroFaults, 1);
      s->cstate[c] = CS_INSTALLED;
      state_set(s->state.installed, c);
    }
  } else if (st == CHUNK_RESIDENT) {
    rc = fill_chunk(s, c, data, UFFD_FILL_COPY);
    if (rc == 0) {
      STAT_ADD(s, residentFaults, 1);
      s->cstate[c] = CS_INSTALLED;
      state_set(s->state.installed, c);
      /* A first touch JS would not otherwise see (absent chunks arrive as `need`). */
      if (s->report_touches) out_chunk(s, &s->touched, c);
    }
  } else if (s->cstate[c] != CS_REQUESTED) {
    /* Absent: ask once, the loaders directly when JS said so (direct.h), else JS. The faulting thread
     * sleeps in the kernel until the install wakes it; the event itself is not kept, because the
     * install's copy wakes every waiter in the chunk. */
    s->cstate[c] = CS_REQUESTED;
    uint64_t direct = atomic_load_explicit(&s->direct_id, memory_order_relaxed);
    if (direct && direct_push(s->table, direct, c)) {
      out_chunk(s, &s->claimed, c);
      STAT_ADD(s, directFaults, 1);
    } else {
      out_chunk(s, &s->need, c);
    }
    STAT_ADD(s, forwardedFaults, 1);
  }
  if (data) table_release(s->table, c, data);
  return settle(s, rc);
}

static int run_command(session_t *s, cmd_t cmd) {
  uint32_t c = cmd.chunk;
  if (cmd.op == CMD_WAKE) return settle(s, wake_chunk(s, c));
  if (cmd.op == CMD_POISON) {
    /* Pages already present stay as they are; removed pages get zeros (session_fill.c). */
    int rc = fill_chunk(s, c, NULL, UFFD_FILL_POISON);
    if (rc == 0) {
      STAT_ADD(s, poisons, 1);
      s->cstate[c] = CS_INSTALLED;
      out_chunk(s, &s->poisoned, c);
    }
    return settle(s, rc);
  }
  if (s->cstate[c] == CS_INSTALLED) {
    out_chunk(s, &s->installed, c);
    return 0;
  }
  const uint8_t *data = NULL;
  int st = table_acquire(s->table, c, &data);
  if (st == CHUNK_ABSENT) {
    /* Evicted between put and install: JS decides whether anyone still needs it. */
    if (s->cstate[c] != CS_REQUESTED) s->cstate[c] = CS_NONE;
    STAT_ADD(s, missing, 1);
    out_chunk(s, &s->missing, c);
    return 0;
  }
  int rc = fill_chunk(s, c, data, st == CHUNK_RESIDENT ? UFFD_FILL_COPY : UFFD_FILL_ZERO);
  if (data) table_release(s->table, c, data);
  if (rc == 0) {
    s->cstate[c] = CS_INSTALLED;
    state_set(s->state.installed, c);
    STAT_ADD(s, installs, 1);
    out_chunk(s, &s->installed, c);
  }
  return settle(s, rc);
}

static void apply_event(session_t *s, const struct uffd_msg *m) {
  switch (m->event) {
    case UFFD_EVENT_PAGEFAULT:
      STAT_ADD(s, faults, 1);
      if (s->adopt_phase) STAT_ADD(s, adoptedFaults, 1);
      if (s->nfaults < FAULTQ_CAP)
        s->faults[s->nfaults++] = m->arg.pagefault.address;
      else
        s->wake_all = true; /* its thread faults again once woken */
      break;
    case UFFD_EVENT_REMOVE:
      STAT_ADD(s, removes, 1);
      mark_removed(s, m->arg.remove.start, m->arg.remove.end);
      break;
    case UFFD_EVENT_FORK:
      /* Not requested by Firecracker; a client that asked for it hands us a new uffd: close it
       * rather than leak it. */
      close((int)m->arg.fork.ufd);
      STAT_ADD(s, unknownEvents, 1);
      break;
    default: STAT_ADD(s, unknownEvents, 1); break;
  }
}

/* Reads every pending event straight into the state region (so a REMOVE the kernel handed over survives
 * this process), applies REMOVEs at once, before any ioctl, as the protocol requires, and queues page
 * faults for resolve(); then clears the slots. Returns 0 or -errno from read(). */
static int drain_events(session_t *s) {
  struct uffd_msg *msgs = s->state.hdr->evbuf;
  for (;;) {
    if (injected(s, FAIL_EVENT_READ)) return -EIO;
    ssize_t n = read(s->uffd, msgs, sizeof(struct uffd_msg) * STATE_EVBUF);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN ? 0 : -errno;
    }
    size_t cnt = (size_t)n / sizeof msgs[0];
    die_on_remove(msgs, cnt);
    for (size_t i = 0; i < cnt; i++) apply_event(s, &msgs[i]);
    memset(msgs, 0, cnt * sizeof msgs[0]);
    if (cnt < STATE_EVBUF) return 0;
  }
}

/* Messages a predecessor read but may not have applied (it died in between). Only REMOVEs matter:
 * re-marking a page removed is idempotent, and every faulting thread is woken after adoption. */
static void apply_adopted_events(session_t *s) {
  struct uffd_msg *msgs = s->state.hdr->evbuf;
  for (size_t i = 0; i < STATE_EVBUF; i++) {
    if (msgs[i].event == UFFD_EVENT_REMOVE) {
      STAT_ADD(s, adoptedRemoves, 1);
      mark_removed(s, msgs[i].arg.remove.start, msgs[i].arg.remove.end);
    }
  }
  memset(msgs, 0, sizeof(struct uffd_msg) * STATE_EVBUF);
}

/* Takes JS's queued commands by swapping buffers; keeps an unfinished batch (EAGAIN) first. */
static void take_commands(session_t *s) {
  if (s->iwork < s->nwork) return;
  pthread_mutex_lock(&s->qmu);
  cmd_t *w = s->work;
  size_t wc = s->capwork;
  s->work = s->q, s->nwork = s->nq, s->capwork = s->capq;
  s->q = w, s->capq = wc, s->nq = 0;
  s->iwork = 0;
  pthread_mutex_unlock(&s->qmu);
}

/* Runs queued commands then queued faults; stops at the first -EAGAIN and keeps what is left. */
static int process(session_t *s) {
  int rc = 0;
  for (; s->iwork < s->nwork && !s->exited; s->iwork++)
    if ((rc = run_command(s, s->work[s->iwork])) == -EAGAIN) break;
  if (s->exited) s->iwork = s->nwork;
  if (rc) return rc;
  size_t i = 0;
  for (; i < s->nfaults && !s->exited; i++)
    if ((rc = resolve(s, s->faults[i])) == -EAGAIN) break;
  memmove(s->faults, s->faults + i, (s->nfaults - i) * sizeof *s->faults);
  s->nfaults = s->exited ? 0 : s->nfaults - i;
  if (rc == 0 && s->nfaults == 0 && s->wake_all && !s->exited) {
    s->wake_all = false;
    settle(s, wake_regions(s));
    if (s->adopt_phase == 1) s->adopt_phase = 2;
  }
  return rc;
}

/* What the outbox holds: OUT_URGENT when JS must act on it (a fault waits for a fetch, a failure to decide
 * on, the peer gone), OUT_INFO when it only reports (installs done, first touches). */
enum { OUT_NONE = 0, OUT_INFO = 1, OUT_URGENT = 2 };
static int pending_output(session_t *s) {
  pthread_mutex_lock(&s->omu);
  int out = s->need.n || s->missing.n || s->poisoned.n || s->nfails || s->fails_lost || s->out_exited
                ? OUT_URGENT
            : s->installed.n || s->touched.n || s->claimed.n ? OUT_INFO
                                                             : OUT_NONE;
  pthread_mutex_unlock(&s->omu);
  return out;
}

void *session_thread_main(void *arg) {
  session_t *s = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are Node's business, not this thread's */
  struct pollfd p[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->efd, .events = POLLIN}};
  /* Taking over from a server that stopped: its last events first, then everything pending, then a
   * wake of every region, since faults it read and never served are asleep in the kernel. */
  bool again = false;
  /* When reports only (OUT_INFO) started waiting, 0 when none wait: JS is told INFO_DEFER_MS after that
   * at the latest, or with the next urgent output. */
  uint64_t info_since = 0;
  if (s->adopted) {
    apply_adopted_events(s);
    s->wake_all = true;
    s->adopt_phase = 1;
    again = true; /* the first poll must not block: the wake is due whether or not events are pending */
  }
  while (!atomic_load(&s->stop)) {
    /* After an EAGAIN the REMOVE that caused it is about to be queued: wake up as soon as it is,
     * or after 1 ms at most. */
    int n = poll(p, 2, again ? 1 : info_since ? INFO_DEFER_MS : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      stop_with(s, FAIL_THREAD_EXIT, errno, "poll");
      break;
    }
    if (p[1].revents & POLLIN) {
      uint64_t v;
      (void)!read(s->efd, &v, sizeof v); /* EAGAIN: another wakeup already consumed it */
    }
    if (p[0].revents & (POLLERR | POLLNVAL)) {
      /* POLLERR: UFFDIO_API was never done on this uffd; nothing can be served. */
      stop_with(s, FAIL_THREAD_EXIT, p[0].revents & POLLNVAL ? EBADF : EINVAL, "poll(uffd)");
      break;
    }
    int rc = drain_events(s);
    if (s->adopt_phase == 2) s->adopt_phase = 0; /* the faults the wake sent back are counted */
    if (rc < 0) {
      stop_with(s, FAIL_EVENT_READ, -rc, "read(uffd)");
      break;
    }
    take_commands(s);
    again = process(s) == -EAGAIN;
    if (again) STAT_ADD(s, mmapChangingRetries, 1);
    int out = pending_output(s);
    /* Each notification wakes the event loop, a system call here and a wake-up there: on a virtualized
     * host each costs tens of microseconds of CPU the peer's own threads want (bench/ANALYSIS.md, L1).
     * A report of an install is not waited on by anyone, so it waits for company or for the deadline. */
    if (out == OUT_INFO && !info_since) info_since = monotonic_ns();
    if (out == OUT_URGENT || (out == OUT_INFO && monotonic_ns() - info_since >= INFO_DEFER_MS * 1000000ull)) {
      notify(s);
      info_since = 0;
    } else if (out == OUT_NONE) {
      info_since = 0; /* JS took it meanwhile, with an earlier notification */
    }
    if (s->exited) p[0].events = 0; /* nothing more can be served; wait for close() */
  }
  return NULL;
}
