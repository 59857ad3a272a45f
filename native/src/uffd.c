#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int uffd_create(int flags) {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    int err = errno;
    close(dev);
    if (fd >= 0) return fd;
    /* EINVAL: flags the device does not know; fall through to the syscall which reports the same. */
    if (err != EPERM && err != EACCES && err != ENOTTY && err != EINVAL) return -err;
  }
  long fd = syscall(SYS_userfaultfd, flags);
  return fd >= 0 ? (int)fd : -errno;
}

int uffd_api(int fd, uint64_t features, uint64_t *available, uint64_t *ioctls) {
  struct uffdio_api api = {.api = UFFD_API, .features = features};
  if (ioctl(fd, UFFDIO_API, &api) != 0) return -errno;
  if (available) *available = api.features;
  if (ioctls) *ioctls = api.ioctls;
  return 0;
}

int uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls) {
  struct uffdio_register r = {.range = {.start = start, .len = len}, .mode = mode};
  if (ioctl(fd, UFFDIO_REGISTER, &r) != 0) return -errno;
  if (ioctls) *ioctls = r.ioctls;
  return 0;
}

int uffd_unregister(int fd, uint64_t start, uint64_t len) {
  struct uffdio_range r = {.start = start, .len = len};
  return ioctl(fd, UFFDIO_UNREGISTER, &r) == 0 ? 0 : -errno;
}

int uffd_wake(int fd, uint64_t start, uint64_t len) {
  struct uffdio_range r = {.start = start, .len = len};
  return ioctl(fd, UFFDIO_WAKE, &r) == 0 ? 0 : -errno;
}

/* One ioctl over [dst, dst+len). Returns 0 when all of it was done, else -errno with *count set to
 * what the kernel reported (bytes done, or a negative errno when nothing was). */
static int fill_once(int fd, uffd_fill_mode mode, uint64_t dst, const void *src, uint64_t len, bool wake,
                     int64_t *count) {
  int r;
  switch (mode) {
    case UFFD_FILL_COPY: {
      struct uffdio_copy c = {.dst = dst,
                              .src = (uint64_t)(uintptr_t)src,
                              .len = len,
                              .mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE};
      r = ioctl(fd, UFFDIO_COPY, &c);
      *count = c.copy;
      break;
    }
    case UFFD_FILL_ZERO: {
      struct uffdio_zeropage z = {.range = {.start = dst, .len = len},
                                  .mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE};
      r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
      *count = z.zeropage;
      break;
    }
    default: {
      struct uffdio_poison p = {.range = {.start = dst, .len = len},
                                .mode = wake ? 0 : UFFDIO_POISON_MODE_DONTWAKE};
      r = ioctl(fd, UFFDIO_POISON, &p);
      *count = p.updated;
      break;
    }
  }
  return r == 0 ? 0 : -errno;
}

int uffd_fill(int fd, uffd_fill_mode mode, uint64_t dst, const void *src, uint64_t len, uint64_t page_size,
              bool wake, uffd_fill_stats *st, uint64_t *done) {
  uint64_t off = 0;
  while (off < len) {
    /* The kernel leaves the count field untouched when it bails out early (mmap_changing), so a zero
     * start value reads as "no progress". */
    int64_t count = 0;
    const void *s = mode == UFFD_FILL_COPY ? (const uint8_t *)src + off : NULL;
    int r = fill_once(fd, mode, dst + off, s, len - off, wake, &count);
    if (r == 0) {
      st->bytes += len - off;
      off = len;
      break;
    }
    if (count > 0) {
      /* Partial: the kernel stopped at a present page (or was interrupted) after count bytes. */
      off += (uint64_t)count;
      st->bytes += (uint64_t)count;
      st->partials++;
      continue;
    }
    if (r == -EEXIST) {
      /* dst+off is present already: whoever installed it woke its waiters, but a waiter may have
       * queued in between; waking an idle range is harmless. Never retry the same page. */
      if (wake) uffd_wake(fd, dst + off, page_size);
      st->eexist_pages++;
      off += page_size;
      continue;
    }
    *done = off;
    return r; /* -EAGAIN: mmap changing (drain events, resume); anything else is the caller's to classify */
  }
  *done = off;
  return 0;
}
