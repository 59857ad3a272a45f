/*
 * ref-uffd.h: the mechanism the C reference handlers share (bench/ref/ref-handler.c, which serves
 * from a resident image, and bench/ref/ref-store-handler.c, which reads a chunk store): Firecracker's
 * handshake (/work/shared/PROTOCOL.md), the removed-range bookkeeping UFFD_EVENT_REMOVE needs, and
 * the single-threaded event loop. Each handler supplies only the policy, resolve(), the way
 * Firecracker's examples/uffd/uffd_utils.rs carries the mechanism for its handler closures.
 *
 * A header of static functions, included by exactly one translation unit per handler, so that the
 * fault path inlines as it did when all of it lived in ref-handler.c (each handler is one gcc call).
 * The including file defines REF_NAME (its name in messages) before including this, and defines
 *
 *   static int resolve(struct fault *f);   RESOLVED, DEFER (retry after draining events), or -1
 *                                           (ESRCH: the client's mm has exited)
 *
 * Deliberate simplifications: one client, no peer authentication (the 0600 socket is the only
 * gate), removed ranges kept in a fixed-size sorted array, no UFFDIO_POISON.
 */
#ifndef REF_UFFD_H
#define REF_UFFD_H

#ifndef REF_NAME
#error "define REF_NAME (the handler's name in messages) before including ref-uffd.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_REGIONS         1024
#define MAX_REMOVED         65536       /* disjoint removed ranges (merged on insert) */
#define MAX_PENDING         65536       /* faults read but not yet resolved */
#define EVENT_BATCH         64          /* uffd_msg per read() */
#define MSG_MAX             (64 * 1024) /* handshake JSON */
#define MAX_FDS             8           /* room to see (and reject) extra fds */
#define HANDSHAKE_TIMEOUT_S 10
#define HUGE_PAGE           (2UL << 20)
#define MAX_CHUNK           (1UL << 30) /* keeps chunk arithmetic far from overflow */

struct region {
  uint64_t base; /* base_host_virt_addr */
  uint64_t size;
  uint64_t off;   /* offset of the region in the snapshot */
  uint64_t psz;   /* page_size: 4096 or 2 MiB */
  uint64_t chunk; /* max(--chunk-size, psz) */
};

struct range {
  uint64_t start, end;
};

/* A fault read but not resolved yet; resume: where a deferred copy stopped. */
struct fault {
  uint64_t addr, resume;
};

/* resolve() outcomes; -1: ESRCH, the client's mm has exited (nothing can hang). */
enum { RESOLVED = 0, DEFER = 1 };

static struct region regions[MAX_REGIONS];
static size_t nregions;
static struct range removed[MAX_REMOVED]; /* sorted by start, disjoint */
static size_t nremoved;
static struct fault pending[MAX_PENDING];
static size_t npending;

static uint64_t ref_total_size;  /* snapshot size: regions must lie within it */
static const uint8_t *zero_huge; /* 2 MiB of zeros, hugetlb only (see ref_setup) */
static int uffd = -1;
static pid_t peer_pid;

/* Counters of the shared mechanism; each handler keeps its own beside them. */
static struct {
  uint64_t faults, eexist, removes, zeropages;
  uint64_t unknown, deferred;
} st;

static int resolve(struct fault *f);

static void die(int status, const char *fmt, ...) {
  va_list ap;

  fputs(REF_NAME ": ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(status);
}

/*
 * A serve error leaves the client's faulting threads blocked forever (its own
 * uffd reference keeps the context alive), and faults taken inside KVM_RUN
 * cannot be interrupted: fail closed with SIGKILL, as Firecracker's example
 * handlers do (examples/uffd/uffd_utils.rs, install_panic_hook).
 */
static void fail_serve(const char *what, int err) {
  fprintf(stderr, REF_NAME ": %s: %s\n", what, strerror(err));
  if (peer_pid > 0 && kill(peer_pid, SIGKILL) == 0)
    fprintf(stderr, REF_NAME ": killed client pid %d\n", (int)peer_pid);
  exit(1);
}

/* ---- handshake: JSON regions + one uffd over SCM_RIGHTS ----------------- */

struct cursor {
  const char *p, *end;
  const char *err;
};

static void ws(struct cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int expect(struct cursor *c, char ch) {
  ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return 1;
  }
  return 0;
}

/* Keys are plain ASCII in Firecracker's payload: escapes are rejected. */
static int parse_key(struct cursor *c, char *out, size_t cap) {
  size_t n = 0;

  if (!expect(c, '"')) return 0;
  while (c->p < c->end && *c->p != '"') {
    if (*c->p == '\\' || n + 1 >= cap) return 0;
    out[n++] = *c->p++;
  }
  if (c->p >= c->end) return 0;
  c->p++;
  out[n] = '\0';
  return 1;
}

static int parse_u64(struct cursor *c, uint64_t *out) {
  char *end;
  unsigned long long v;

  ws(c);
  if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
  errno = 0;
  v = strtoull(c->p, &end, 10);
  if (errno || end > c->end || (end < c->end && strchr(".eE", *end))) return 0;
  c->p = end;
  *out = v;
  return 1;
}

/* Unknown keys: skip a scalar (number, string, literal); nesting is malformed. */
static int skip_scalar(struct cursor *c) {
  ws(c);
  if (c->p >= c->end) return 0;
  if (*c->p == '"') {
    for (c->p++; c->p < c->end && *c->p != '"'; c->p++)
      if (*c->p == '\\' && ++c->p >= c->end) return 0;
    if (c->p >= c->end) return 0;
    c->p++;
    return 1;
  }
  if (*c->p == '{' || *c->p == '[' || *c->p == ',' || *c->p == '}' || *c->p == ']') return 0;
  while (c->p < c->end && !strchr(",}] \t\r\n", *c->p)) c->p++;
  return 1;
}

#define F_BASE 1u
#define F_SIZE 2u
#define F_OFF  4u
#define F_PS   8u
#define F_PSK  16u

static int parse_region(struct cursor *c, struct region *r) {
  unsigned seen = 0;
  uint64_t ps = 0, psk = 0;
  char key[64];

  if (!expect(c, '{')) return c->err = "expected '{'", 0;
  if (!expect(c, '}')) {
    do {
      uint64_t *dst = NULL;
      unsigned bit = 0;

      if (!parse_key(c, key, sizeof(key)) || !expect(c, ':')) return c->err = "expected \"key\":", 0;
      if (!strcmp(key, "base_host_virt_addr"))
        dst = &r->base, bit = F_BASE;
      else if (!strcmp(key, "size"))
        dst = &r->size, bit = F_SIZE;
      else if (!strcmp(key, "offset"))
        dst = &r->off, bit = F_OFF;
      else if (!strcmp(key, "page_size"))
        dst = &ps, bit = F_PS;
      else if (!strcmp(key, "page_size_kib"))
        dst = &psk, bit = F_PSK;
      if (!dst) {
        if (!skip_scalar(c)) return c->err = "bad value of an unknown key", 0;
        continue;
      }
      if (seen & bit) return c->err = "duplicate key", 0;
      if (!parse_u64(c, dst)) return c->err = "expected an unsigned integer", 0;
      seen |= bit;
    } while (expect(c, ','));
    if (!expect(c, '}')) return c->err = "expected '}'", 0;
  }
  if ((seen & (F_BASE | F_SIZE | F_OFF)) != (F_BASE | F_SIZE | F_OFF))
    return c->err = "region lacks base_host_virt_addr, size or offset", 0;
  /*
   * page_size (Firecracker v1.12+) and the deprecated page_size_kib (v1.7+)
   * both hold bytes despite the name; v1.1-v1.6 sent neither (4 KiB).
   */
  if ((seen & F_PS) && (seen & F_PSK) && ps != psk) return c->err = "page_size and page_size_kib disagree", 0;
  r->psz = (seen & F_PS) ? ps : (seen & F_PSK) ? psk : 4096;
  return 1;
}

static int cmp_region(const void *a, const void *b) {
  const struct region *x = a, *y = b;

  return x->base < y->base ? -1 : x->base > y->base;
}

static const char *parse_regions(const char *buf, size_t len, uint64_t chunk) {
  struct cursor c = {buf, buf + len, NULL};
  size_t i;

  if (!expect(&c, '[')) return "payload is not a JSON array";
  if (expect(&c, ']')) return "no regions";
  do {
    if (nregions == MAX_REGIONS) return "too many regions";
    if (!parse_region(&c, &regions[nregions])) return c.err;
    nregions++;
  } while (expect(&c, ','));
  if (!expect(&c, ']')) return "truncated or malformed array";
  ws(&c);
  if (c.p != c.end) return "trailing bytes after the array";

  for (i = 0; i < nregions; i++) {
    struct region *r = &regions[i];

    if (r->psz != 4096 && r->psz != HUGE_PAGE) return "page size is neither 4 KiB nor 2 MiB";
    if (!r->size || r->size % r->psz || r->base % r->psz || r->off % r->psz)
      return "region size, base or offset is zero or not page aligned";
    if (r->base + r->size < r->base || r->off + r->size < r->off) return "region wraps around";
    if (r->off + r->size > ref_total_size) return "region extends past the end of the snapshot";
    r->chunk = chunk > r->psz ? chunk : r->psz;
  }
  qsort(regions, nregions, sizeof(regions[0]), cmp_region);
  for (i = 1; i < nregions; i++)
    if (regions[i - 1].base + regions[i - 1].size > regions[i].base) return "regions overlap";
  return NULL;
}

static int is_userfaultfd(int fd) {
  char path[64], link[64];
  ssize_t n;

  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  n = readlink(path, link, sizeof(link) - 1);
  if (n < 0) return 0;
  link[n] = '\0';
  return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

static void handshake(int conn, uint64_t chunk) {
  static char buf[MSG_MAX + 1];
  union {
    struct cmsghdr hdr;
    char space[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } ctl;
  struct iovec iov = {buf, MSG_MAX};
  struct msghdr msg = {0};
  struct timeval tv = {HANDSHAKE_TIMEOUT_S, 0};
  struct ucred cred;
  socklen_t credlen = sizeof(cred);
  struct cmsghdr *cm;
  const char *err;
  ssize_t n;
  int nfds = 0, flags;

  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) < 0)
    die(2, "getsockopt(SO_PEERCRED): %s", strerror(errno));
  peer_pid = cred.pid;
  if (setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
    die(2, "setsockopt(SO_RCVTIMEO): %s", strerror(errno));

  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.space;
  msg.msg_controllen = sizeof(ctl.space);
  do n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    die(2, "handshake: nothing received within %d s", HANDSHAKE_TIMEOUT_S);
  if (n < 0) die(2, "handshake: recvmsg: %s", strerror(errno));
  if (n == 0) die(2, "handshake: client closed the connection");

  for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    int *fds = (int *)CMSG_DATA(cm);
    size_t i, k;

    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (i = 0; i < k; i++) {
      int fd;

      memcpy(&fd, &fds[i], sizeof(fd));
      if (nfds++ == 0)
        uffd = fd;
      else
        close(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) die(2, "handshake: control data truncated (too many fds)");
  if (nfds != 1) die(2, "handshake: expected exactly one fd over SCM_RIGHTS, got %d", nfds);
  if (!is_userfaultfd(uffd)) die(2, "handshake: the fd received is not a userfaultfd");
  if ((size_t)n == MSG_MAX) die(2, "handshake: payload of %d bytes or more is too large", MSG_MAX);
  buf[n] = '\0';
  err = parse_regions(buf, (size_t)n, chunk);
  if (err) die(2, "handshake: %s: %.200s", err, buf);

  /* Firecracker sets O_NONBLOCK; make sure, since we read until EAGAIN. */
  flags = fcntl(uffd, F_GETFL);
  if (flags < 0 || fcntl(uffd, F_SETFL, flags | O_NONBLOCK) < 0)
    die(2, "fcntl(uffd, O_NONBLOCK): %s", strerror(errno));
}

/* ---- removed ranges ------------------------------------------------------ */

/* Index of the first removed range whose end lies above addr. */
static size_t removed_after(uint64_t addr) {
  size_t lo = 0, hi = nremoved;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (removed[mid].end <= addr)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/*
 * UFFD_EVENT_REMOVE (madvise(MADV_DONTNEED), balloon inflation): the range
 * must read as zero from now on, never as the snapshot's bytes
 * (Documentation/admin-guide/mm/userfaultfd.rst, "Non-cooperative
 * userfaultfd"). Merged into the sorted array so lookups stay O(log n).
 */
static void record_removed(uint64_t start, uint64_t end) {
  size_t i, j;

  if (start >= end) return;
  i = removed_after(start);
  if (i > 0 && removed[i - 1].end == start) i--; /* adjacent on the left: merge */
  j = i;
  while (j < nremoved && removed[j].start <= end) {
    if (removed[j].start < start) start = removed[j].start;
    if (removed[j].end > end) end = removed[j].end;
    j++;
  }
  if (j == i) {
    if (nremoved == MAX_REMOVED) fail_serve("too many removed ranges", ENOSPC);
    memmove(&removed[i + 1], &removed[i], (nremoved - i) * sizeof(removed[0]));
    nremoved++;
  } else if (j > i + 1) {
    memmove(&removed[i + 1], &removed[j], (nremoved - j) * sizeof(removed[0]));
    nremoved -= j - i - 1;
  }
  removed[i].start = start;
  removed[i].end = end;
}

/* ---- fault path helpers: no allocation, no logging ------------------------ */

static const struct region *find_region(uint64_t addr) {
  static size_t last;
  size_t i;

  if (addr - regions[last].base < regions[last].size) return &regions[last];
  for (i = 0; i < nregions; i++)
    if (addr - regions[i].base < regions[i].size) return &regions[last = i];
  return NULL;
}

static void wake(uint64_t start, uint64_t len) {
  struct uffdio_range r = {.start = start, .len = len};

  if (ioctl(uffd, UFFDIO_WAKE, &r) < 0) fail_serve("UFFDIO_WAKE", errno);
}

/* A removed page reads as zero: ZEROPAGE, or a zero copy on hugetlbfs. */
static int serve_zero(const struct region *r, uint64_t page) {
  if (r->psz == 4096) {
    struct uffdio_zeropage z = {.range = {page, 4096}, .mode = 0};

    if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) {
      st.zeropages++;
      return RESOLVED;
    }
    if (errno == EAGAIN) return DEFER;
    if (errno == ESRCH) return -1;
    if (errno != EEXIST) fail_serve("UFFDIO_ZEROPAGE", errno);
  } else {
    /* UFFDIO_ZEROPAGE is not supported on hugetlbfs. */
    struct uffdio_copy cp = {
        .dst = page,
        .src = (uintptr_t)zero_huge,
        .len = r->psz,
        .mode = 0,
    };

    if (ioctl(uffd, UFFDIO_COPY, &cp) == 0) {
      st.zeropages++;
      return RESOLVED;
    }
    if (errno == EAGAIN) return DEFER;
    if (errno == ESRCH) return -1;
    if (errno != EEXIST) fail_serve("UFFDIO_COPY (zero)", errno);
  }
  st.eexist++;
  wake(page, r->psz);
  return RESOLVED;
}

/* ---- event loop ------------------------------------------------------------ */

static int client_gone;

/* One read() of up to EVENT_BATCH events. Returns events read, -1 if drained. */
static int read_events(int *saw_remove) {
  static struct uffd_msg msgs[EVENT_BATCH];
  ssize_t n, i;

  do n = read(uffd, msgs, sizeof(msgs));
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return -1;
    fail_serve("read(uffd)", errno);
  }
  if (n % (ssize_t)sizeof(msgs[0])) fail_serve("read(uffd): partial uffd_msg", EIO);
  n /= (ssize_t)sizeof(msgs[0]);
  for (i = 0; i < n; i++) {
    switch (msgs[i].event) {
      case UFFD_EVENT_PAGEFAULT:
        st.faults++;
        if (npending == MAX_PENDING) fail_serve("too many outstanding faults", ENOSPC);
        pending[npending].addr = msgs[i].arg.pagefault.address;
        pending[npending++].resume = 0;
        break;
      case UFFD_EVENT_REMOVE:
        st.removes++;
        record_removed(msgs[i].arg.remove.start, msgs[i].arg.remove.end);
        *saw_remove = 1;
        break;
      default:
        st.unknown++; /* Firecracker requests no other event */
        break;
    }
  }
  return (int)n;
}

static int drain_events(void) {
  int total = 0, n, saw = 0;

  while ((n = read_events(&saw)) >= 0) total += n;
  return total;
}

/*
 * Resolve every pending fault. While a REMOVE is queued every uffd ioctl
 * fails with EAGAIN, and a fault can be read before the REMOVE that
 * logically preceded it: deferred faults are retried only after all queued
 * events have been read, so the retry sees the new removed ranges.
 */
static void resolve_pending(void) {
  while (npending && !client_gone) {
    size_t i, m = 0;

    for (i = 0; i < npending; i++) {
      int rc = resolve(&pending[i]);

      if (rc == DEFER)
        pending[m++] = pending[i];
      else if (rc < 0)
        client_gone = 1;
    }
    npending = m;
    if (!m || client_gone) break;
    st.deferred += m;
    /* The REMOVE may not be queued yet (mmap_changing is raised first). */
    if (drain_events() == 0) sched_yield();
  }
  if (client_gone) npending = 0;
}

/* True once the client has closed its end (EOF or error on the socket). */
static int conn_closed(int conn) {
  char buf[256];
  ssize_t n = recv(conn, buf, sizeof(buf), MSG_DONTWAIT);

  if (n > 0) return 0; /* nothing is ever sent after the handshake; discard */
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
  return 1;
}

static void serve(int conn) {
  struct pollfd pfd[2] = {
      {.fd = uffd, .events = POLLIN},
      {.fd = conn, .events = POLLIN | POLLRDHUP},
  };

  for (;;) {
    if (poll(pfd, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fail_serve("poll", errno);
    }
    if (pfd[0].revents & (POLLERR | POLLNVAL)) fail_serve("poll(uffd)", EBADF);
    if ((pfd[0].revents & POLLIN) && !client_gone) {
      int saw_remove = 0;

      if (read_events(&saw_remove) > 0) {
        if (saw_remove) drain_events();
        resolve_pending();
      }
    }
    if (pfd[1].revents && conn_closed(conn)) return;
    if (client_gone) pfd[0].fd = -1; /* nothing left to serve; wait for EOF */
  }
}

/* ---- setup ------------------------------------------------------------------- */

static int listen_at(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  struct stat sb;
  mode_t old;
  int s;

  if (strlen(path) >= sizeof(sa.sun_path)) die(2, "--socket %s: path too long", path);
  strcpy(sa.sun_path, path);
  if (lstat(path, &sb) == 0) {
    if (!S_ISSOCK(sb.st_mode)) die(2, "--socket %s: exists and is not a socket", path);
    if (unlink(path) < 0) die(2, "--socket %s: unlink stale socket: %s", path, strerror(errno));
  } else if (errno != ENOENT) {
    die(2, "--socket %s: %s", path, strerror(errno));
  }
  s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die(2, "socket: %s", strerror(errno));
  old = umask(0177); /* no window in which the socket is wider than 0600 */
  if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) die(2, "--socket %s: bind: %s", path, strerror(errno));
  umask(old);
  if (chmod(path, 0600) < 0) die(2, "--socket %s: chmod: %s", path, strerror(errno));
  if (listen(s, 1) < 0) die(2, "listen: %s", strerror(errno));
  return s;
}

/* The zero source for removed pages on hugetlbfs, where UFFDIO_ZEROPAGE does not work. */
static void ref_setup(void) {
  zero_huge = mmap(NULL, HUGE_PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (zero_huge == MAP_FAILED) die(2, "mmap zero buffer: %s", strerror(errno));
}

#endif /* REF_UFFD_H */
