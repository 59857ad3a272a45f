/*
 * lazysnap_client.h: hand a process's memory to `lazysnap serve` for lazy restore.
 *
 * Header-only, C99 + Linux. The process maps its regions (or lets this header map them), registers
 * them with a userfaultfd and sends the uffd to `lazysnap serve` over its Unix socket with the same
 * handshake Firecracker uses (docs/PROTOCOL.md: one sendmsg, a JSON array of regions, the uffd in
 * SCM_RIGHTS). From then on, the first touch of each page blocks until serve has installed the
 * snapshot's bytes there; zero pages come for free. Keep the session open for as long as the memory
 * is used: closing the socket ends the restore session.
 *
 *   struct lazysnap_region r = { .addr = NULL, .size = 64 << 20, .offset = 0 };
 *   struct lazysnap_session s;
 *   if (lazysnap_restore("/run/lazysnap/app.sock", &r, 1, 0, &s) != 0) { perror("lazysnap_restore"); ... }
 *   ... use r.addr ...
 *   lazysnap_close(&s);
 *
 * Flags: LAZYSNAP_USER_MODE_ONLY asks for a uffd that only reports faults taken in user mode, which
 * an unprivileged process may create where vm.unprivileged_userfaultfd = 0; kernel-side accesses to
 * unrestored pages (read(2) into them, process_vm_readv) then fail with EFAULT instead of waiting.
 * Errors: -1 with errno set, nothing left mapped or open.
 */
#ifndef LAZYSNAP_CLIENT_H
#define LAZYSNAP_CLIENT_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define LAZYSNAP_USER_MODE_ONLY 1u
#define LAZYSNAP_MAX_REGIONS    64

struct lazysnap_region {
  void *addr;      /* page-aligned memory to restore into, or NULL: mapped here (private anonymous) */
  size_t size;     /* bytes, a multiple of the page size */
  uint64_t offset; /* where the region starts in the snapshot image */
};

struct lazysnap_session {
  int sock; /* the connection to serve: open for the life of the restore */
  int uffd;
  struct lazysnap_region regions[LAZYSNAP_MAX_REGIONS];
  size_t nregions;
  unsigned char mapped[LAZYSNAP_MAX_REGIONS]; /* regions this header mapped (unmapped on close) */
};

static int lazysnap__uffd(unsigned flags) {
  int f = O_CLOEXEC | O_NONBLOCK | ((flags & LAZYSNAP_USER_MODE_ONLY) ? UFFD_USER_MODE_ONLY : 0);
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, f);
    close(dev);
    if (fd >= 0) return fd;
  }
  return (int)syscall(SYS_userfaultfd, f);
}

static void lazysnap_close(struct lazysnap_session *s) {
  if (s->sock >= 0) close(s->sock);
  if (s->uffd >= 0) close(s->uffd);
  for (size_t i = 0; i < s->nregions; i++)
    if (s->mapped[i]) munmap(s->regions[i].addr, s->regions[i].size);
  s->sock = s->uffd = -1;
  s->nregions = 0;
}

static int lazysnap_restore(const char *socket_path, struct lazysnap_region *regions, size_t n,
                            unsigned flags, struct lazysnap_session *s) {
  long page = sysconf(_SC_PAGESIZE);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  char json[LAZYSNAP_MAX_REGIONS * 160 + 2];
  size_t len = 0;
  int err;

  memset(s, 0, sizeof *s);
  s->sock = s->uffd = -1;
  if (n == 0 || n > LAZYSNAP_MAX_REGIONS || strlen(socket_path) >= sizeof sa.sun_path) {
    errno = EINVAL;
    return -1;
  }
  strcpy(sa.sun_path, socket_path);
  for (size_t i = 0; i < n; i++) {
    if (regions[i].size == 0 || regions[i].size % (size_t)page || regions[i].offset % (uint64_t)page ||
        (uintptr_t)regions[i].addr % (uintptr_t)page) {
      errno = EINVAL;
      return -1;
    }
  }
  s->uffd = lazysnap__uffd(flags);
  if (s->uffd < 0) goto fail;
  /* Exactly what Firecracker requests (PROTOCOL.md step 3): EVENT_REMOVE, so that MADV_DONTNEED'd
   * ranges read zero afterwards instead of the snapshot's bytes. */
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
  if (ioctl(s->uffd, UFFDIO_API, &api) != 0) goto fail;
  json[len++] = '[';
  for (size_t i = 0; i < n; i++) {
    struct lazysnap_region *r = &s->regions[i];
    *r = regions[i];
    if (r->addr == NULL) {
      void *p =
          mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) goto fail;
      r->addr = regions[i].addr = p;
      s->mapped[i] = 1;
    }
    s->nregions = i + 1;
    struct uffdio_register reg = {.range = {.start = (uintptr_t)r->addr, .len = r->size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) != 0) goto fail;
    /* The v1.12+ payload shape: page_size and page_size_kib both hold bytes (PROTOCOL.md). */
    len += (size_t)snprintf(json + len, sizeof json - len,
                            "%s{\"base_host_virt_addr\":%" PRIuPTR ",\"size\":%zu,\"offset\":%" PRIu64
                            ",\"page_size\":%ld,\"page_size_kib\":%ld}",
                            i ? "," : "", (uintptr_t)r->addr, r->size, r->offset, page, page);
  }
  json[len++] = ']';
  s->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->sock < 0 || connect(s->sock, (struct sockaddr *)&sa, sizeof sa) != 0) goto fail;
  char cbuf[CMSG_SPACE(sizeof(int))];
  memset(cbuf, 0, sizeof cbuf);
  struct iovec iov = {.iov_base = json, .iov_len = len};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &s->uffd, sizeof(int));
  ssize_t sent;
  do sent = sendmsg(s->sock, &m, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent != (ssize_t)len) {
    if (sent >= 0) errno = EPROTO;
    goto fail;
  }
  return 0;
fail:
  err = errno;
  lazysnap_close(s);
  errno = err;
  return -1;
}

#endif
