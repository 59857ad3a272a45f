/* Thin wrappers over the userfaultfd ioctls. No policy, no allocation, no logging: these run on the
 * fault path. Every function returns 0 (or a fd) on success and -errno on failure, unchanged.
 * Kernel reference: Documentation/admin-guide/mm/userfaultfd.rst, fs/userfaultfd.c, mm/userfaultfd.c.
 */
#ifndef LAZYSNAP_UFFD_H
#define LAZYSNAP_UFFD_H

#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdint.h>

/* Debian 12's headers are from Linux 6.1; the running kernel is newer. Define what came later. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON /* Linux 6.6 */
#define UFFD_FEATURE_POISON         (1 << 14)
#define _UFFDIO_POISON              (0x08)
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

typedef enum { UFFD_FILL_COPY = 0, UFFD_FILL_ZERO = 1, UFFD_FILL_POISON = 2 } uffd_fill_mode;

typedef struct {
  uint64_t bytes;        /* bytes this call made present */
  uint64_t eexist_pages; /* pages found already present and skipped */
  uint64_t partials;     /* EAGAIN-with-progress continuations */
} uffd_fill_stats;

/* /dev/userfaultfd + USERFAULTFD_IOC_NEW (Linux 6.1+, governed by the device's file mode), falling back
 * to the userfaultfd(2) syscall (governed by vm.unprivileged_userfaultfd / CAP_SYS_PTRACE), as
 * Firecracker does. flags: O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY. */
int uffd_create(int flags);
/* UFFDIO_API. On success *available holds every feature the kernel supports (the kernel reports them
 * all, whatever was requested) and *ioctls the ioctls valid on the fd. */
int uffd_api(int fd, uint64_t features, uint64_t *available, uint64_t *ioctls);
int uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls);
int uffd_unregister(int fd, uint64_t start, uint64_t len);
int uffd_wake(int fd, uint64_t start, uint64_t len);

/* Makes every page of [dst, dst+len) present: copied from src (COPY), the zero page (ZERO, not on
 * hugetlbfs), or poisoned (POISON: later access raises SIGBUS). Pages already present are skipped and
 * never overwritten. The kernel rules this loop encodes (PROTOCOL.md, mm/userfaultfd.c mfill_atomic):
 *   - the ioctl stops at the first present page: EAGAIN with a positive count → continue after it;
 *   - EEXIST (count < 0) → the page at dst is present: wake its waiters, skip exactly one page;
 *   - EAGAIN with no progress → mmap_changing: an event (REMOVE) is pending and must be read first.
 * Returns 0 when the range is done; -EAGAIN (mmap changing) or another -errno with *done = bytes
 * finished so far, so the caller can drain events and resume at dst + *done.
 * wake=false passes DONTWAKE: the caller wakes the range itself. */
int uffd_fill(int fd, uffd_fill_mode mode, uint64_t dst, const void *src, uint64_t len, uint64_t page_size,
              bool wake, uffd_fill_stats *st, uint64_t *done);

#endif
