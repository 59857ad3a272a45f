/* The fault thread of a session: reads uffd events, applies REMOVEs first, runs queued installs and
 * poisons, resolves faults in C where it can and forwards the first fault on an absent chunk to JS.
 * All uffd ioctls of a session happen here, so events and installs are ordered (see session.c). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "session_internal.h"

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
    int rc = zero_range(s, page, s->page_size);
    /* Counted once resolved: an EAGAIN (mmap changing) retries the same fault later. */
    if (rc == 0) STAT_ADD(s, removedFaults, 1);
    if (rc && rc != -EAGAIN) classify(s, rc, (uint32_t)(off / s->chunk_size), "ioctl(UFFDIO_ZEROPAGE)");
    return rc == -EAGAIN ? rc : 0;
  }
  uint32_t c = (uint32_t)(off / s->chunk_size);
  const uint8_t *data = NULL;
  int st = table_acquire(s->table, c, &data);
  int rc = 0;
  if (s->cstate[c] == CS_INSTALLED) {
    /* The chunk was installed whole: this event was queued before the install woke its thread, or
     * the page was lost some other way. Resolve just this page; EEXIST (the usual case) wakes it. */
    STAT_ADD(s, staleFaults, 1);
    uint64_t plo = off, phi = off + s->page_size;
    if (st == CHUNK_RESIDENT)
      rc = fill_span(s, plo, phi, (uint64_t)c * s->chunk_size, data, UFFD_FILL_COPY);
    else if (st == CHUNK_ZERO)
      rc = fill_span(s, plo, phi, plo, NULL, UFFD_FILL_ZERO);
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
    }
  } else if (st == CHUNK_RESIDENT) {
    rc = fill_chunk(s, c, data, UFFD_FILL_COPY);
    if (rc == 0) {
      STAT_ADD(s, residentFaults, 1);
      s->cstate[c] = CS_INSTALLED;
      /* A first touch JS would not otherwise see (absent chunks arrive as `need`). */
      if (s->report_touches) out_chunk(s, &s->touched, c);
    }
  } else if (s->cstate[c] != CS_REQUESTED) {
    /* Absent: ask JS once. The faulting thread sleeps in the kernel until the install wakes it; the
     * event itself is not kept, because the install's copy wakes every waiter in the chunk. */
    s->cstate[c] = CS_REQUESTED;
    out_chunk(s, &s->need, c);
    STAT_ADD(s, forwardedFaults, 1);
  }
  if (data) table_release(s->table, c);
  if (rc && rc != -EAGAIN) classify(s, rc, c, "ioctl(UFFDIO_COPY)");
  return rc == -EAGAIN ? rc : 0;
}

static int run_command(session_t *s, cmd_t cmd) {
  uint32_t c = cmd.chunk;
  if (cmd.op == CMD_POISON) {
    int rc = fill_chunk(s, c, NULL, UFFD_FILL_POISON);
    if (rc == -EAGAIN) return rc;
    if (rc)
      classify(s, rc, c, "ioctl(UFFDIO_POISON)");
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
  const uint8_t *data = NULL;
  int st = table_acquire(s->table, c, &data);
  int rc = 0;
  if (st == CHUNK_ABSENT) {
    /* Evicted between put and install (JS's budget policy raced its own install). JS re-puts. */
    s->cstate[c] = CS_NONE;
    STAT_ADD(s, missing, 1);
    out_chunk(s, &s->missing, c);
    return 0;
  }
  rc = fill_chunk(s, c, data, st == CHUNK_RESIDENT ? UFFD_FILL_COPY : UFFD_FILL_ZERO);
  if (data) table_release(s->table, c);
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
          else
            out_error(s, UINT32_MAX, ENOMEM, "realloc(fault queue)");
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
        default: STAT_ADD(s, unknownEvents, 1); break;
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
  bool any = s->need.n || s->installed.n || s->poisoned.n || s->missing.n || s->touched.n || s->nerrs ||
             s->out_exited;
  pthread_mutex_unlock(&s->omu);
  return any;
}

void *session_thread_main(void *arg) {
  session_t *s = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are Node's business, not this thread's */
  struct pollfd p[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->efd, .events = POLLIN}};
  bool again = false;
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
    if (has_output(s)) notify(s);
    if (s->exited) p[0].events = 0; /* nothing more can be served; wait for close() */
  }
  return NULL;
}
