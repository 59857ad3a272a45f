/* Process plumbing for the supervisor and its worker (runtime/supervisor/): the socketpair between them,
 * memfds they share, a shared mapping, the worker's no-new-privileges bit, sd_notify with file
 * descriptors (systemd's fd store), and a thread's scheduling class (the cache writer's). Mechanism only:
 * what is sent and when is decided in TypeScript. */
#define _GNU_SOURCE 1
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "napi_util.h"
#include "sock.h"
#include "session_state.h"

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif

/* socketPair() → [a, b]: SOCK_SEQPACKET (message boundaries, and SCM_RIGHTS), close-on-exec and
 * non-blocking, so that neither side can ever block the other's event loop. */
static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0)
    return throw_errno(env, errno, "socketpair"), NULL;
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, make_i32(env, sv[0]));
  napi_set_element(env, arr, 1, make_i32(env, sv[1]));
  return arr;
}

/* memfdCreate(name) → fd (close-on-exec, empty). */
static napi_value js_memfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char name[64];
  if (!get_args(env, info, 1, argv, NULL) || !arg_string(env, argv[0], "name", name, sizeof name))
    return NULL;
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "memfd_create"), NULL;
  return make_i32(env, fd);
}

static void unmap_finalize(napi_env env, void *data, void *hint) {
  munmap(data, (size_t)(uintptr_t)hint);
}

/* mapShared(fd, length) → ArrayBuffer over the first `length` bytes of fd, MAP_SHARED (grown to length
 * first when shorter): writes are seen by every process mapping the same file, and survive the writer. */
static napi_value js_map_shared(napi_env env, napi_callback_info info) {
  napi_value argv[2], ab;
  int fd;
  uint64_t len;
  if (!get_args(env, info, 2, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_u64(env, argv[1], "length", &len))
    return NULL;
  if (len == 0 || len > (1ull << 30)) return throw_arg(env, "length must be 1 byte to 1 GiB"), NULL;
  struct stat sb;
  if (fstat(fd, &sb) != 0) return throw_errno(env, errno, "fstat"), NULL;
  if ((uint64_t)sb.st_size < len && ftruncate(fd, (off_t)len) != 0)
    return throw_errno(env, errno, "ftruncate"), NULL;
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return throw_errno(env, errno, "mmap"), NULL;
  if (napi_create_external_arraybuffer(env, p, len, unmap_finalize, (void *)(uintptr_t)len, &ab) != napi_ok) {
    munmap(p, len);
    return throw_errno(env, ENOMEM, "napi_create_external_arraybuffer"), NULL;
  }
  return ab;
}

/* setNoNewPrivs(): execve can never grant this process (or its children) privileges again. */
static napi_value js_no_new_privs(napi_env env, napi_callback_info info) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return throw_errno(env, errno, "prctl(PR_SET_NO_NEW_PRIVS)"), NULL;
  return make_undefined(env);
}

#if defined(__x86_64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* seccompDeny(numbers, errno): from now on the system calls `numbers` (this architecture's) fail with
 * `errno` in every thread of the process (TSYNC), and so does any call through another ABI (x32, i386 on
 * x86_64), whose numbers differ. Which calls is the caller's decision; needs NO_NEW_PRIVS first. */
static napi_value js_seccomp_deny(napi_env env, napi_callback_info info) {
#ifndef NATIVE_AUDIT_ARCH
  return throw_errno(env, ENOSYS, "seccomp (no architecture constant for this build)"), NULL;
#else
  napi_value argv[2];
  uint32_t n = 0, err;
  bool is;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  if (napi_is_array(env, argv[0], &is) != napi_ok || !is ||
      napi_get_array_length(env, argv[0], &n) != napi_ok || n == 0 || n > 200)
    return throw_arg(env, "numbers must be an array of 1 to 200 system call numbers"), NULL;
  if (!arg_u32(env, argv[1], "errno", &err)) return NULL;
  if (err == 0 || err > 4095) return throw_arg(env, "errno must be 1 to 4095"), NULL;
  struct sock_filter prog[200 + 8];
  size_t k = 0;
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_AUDIT_ARCH, 1, 0);
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err);
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
  /* x32 calls carry this bit and number the calls differently. */
  prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1);
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err);
#endif
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    uint32_t nr;
    if (napi_get_element(env, argv[0], i, &e) != napi_ok || !arg_u32(env, e, "numbers[]", &nr)) return NULL;
    prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err);
  }
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog fprog = {.len = (unsigned short)k, .filter = prog};
  /* With TSYNC, a positive result is a thread that could not be synchronized: nothing was installed. */
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
  if (r != 0)
    return throw_errno(env, r < 0 ? errno : EAGAIN, "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)"), NULL;
  return make_undefined(env);
#endif
}

/* dupFd(fd) → a new descriptor of the same open file (close-on-exec). */
static napi_value js_dup(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (d < 0) return throw_errno(env, errno, "fcntl(F_DUPFD_CLOEXEC)"), NULL;
  return make_i32(env, d);
}

/* datagramSend(path, data, fds): one datagram on a new AF_UNIX SOCK_DGRAM socket to `path` ('@' first:
 * the abstract namespace), with the fds in SCM_RIGHTS. What sd_notify(3) does, FDSTORE=1 included. */
static napi_value js_dgram_send(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char path[108];
  uint8_t *data;
  size_t len;
  uint32_t nf = 0;
  int fdv[MAX_PASSED_FDS];
  if (!get_args(env, info, 3, argv, NULL) || !arg_string(env, argv[0], "path", path, sizeof path) ||
      !arg_bytes(env, argv[1], "data", &data, &len) || !arg_fd_array(env, argv[2], fdv, &nf))
    return NULL;
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  size_t plen = strlen(path);
  if (plen == 0 || plen >= sizeof a.sun_path) return throw_arg(env, "path must be 1..107 bytes"), NULL;
  memcpy(a.sun_path, path, plen);
  if (path[0] == '@') a.sun_path[0] = '\0';
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return throw_errno(env, errno, "socket"), NULL;
  ssize_t n = send_with_fds(s, &a, alen, data, len, fdv, nf);
  int e = errno;
  close(s);
  if (n < 0) return throw_errno(env, e, "sendmsg(datagram)"), NULL;
  return make_undefined(env);
}

/* stateLayout(fd) → {version, metaOffset, metaMax, installedOffset, installedLength, chunks} of a session
 * state memfd (session_state.h), read from its header; throws EPROTO for another layout or version. */
static napi_value js_state_layout(napi_env env, napi_callback_info info) {
  napi_value argv[1], o;
  int fd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  state_header_t h;
  ssize_t n = pread(fd, &h, sizeof h, 0);
  if (n < 0) return throw_errno(env, errno, "pread(session state)"), NULL;
  if ((size_t)n != sizeof h || h.magic != STATE_MAGIC || h.version != STATE_VERSION ||
      h.header_size != sizeof h)
    return throw_errno(env, EPROTO, "session state (unknown layout or version)"), NULL;
  NAPI_OK(env, napi_create_object(env, &o));
  set_named(env, o, "version", make_u64(env, h.version));
  set_named(env, o, "metaOffset", make_u64(env, h.meta_off));
  set_named(env, o, "metaMax", make_u64(env, h.meta_len));
  set_named(env, o, "installedOffset", make_u64(env, h.installed_off));
  set_named(env, o, "installedLength", make_u64(env, h.installed_len));
  set_named(env, o, "chunks", make_u64(env, h.nchunks));
  set_named(env, o, "adoptions", make_u64(env, h.adoptions));
  return o;
}

/*
 * The calling thread (not the process: Linux schedules threads) to SCHED_IDLE, so that it runs only on a
 * CPU nothing else wants. Returns the thread's id. Unprivileged threads may always lower their own class.
 */
static napi_value js_sched_idle_thread(napi_env env, napi_callback_info info) {
  (void)info;
  struct sched_param p = {.sched_priority = 0};
  if (sched_setscheduler(0, SCHED_IDLE, &p) != 0)
    return throw_errno(env, errno, "sched_setscheduler(SCHED_IDLE)"), NULL;
  return make_i32(env, (int32_t)syscall(SYS_gettid));
}

#ifdef LAZYSNAP_FAULT_INJECTION
/* Test builds only: testCrash() dies as a decoder bug would (SIGSEGV), for the crash-recovery tests. */
static napi_value js_test_crash(napi_env env, napi_callback_info info) {
  raise(SIGSEGV);
  return make_undefined(env);
}
#endif

napi_value proc_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "socketPair", js_socketpair) ||
      !export_fn(env, exports, "memfdCreate", js_memfd) ||
      !export_fn(env, exports, "mapShared", js_map_shared) ||
      !export_fn(env, exports, "setNoNewPrivs", js_no_new_privs) ||
      !export_fn(env, exports, "seccompDeny", js_seccomp_deny) || !export_fn(env, exports, "dupFd", js_dup) ||
      !export_fn(env, exports, "datagramSend", js_dgram_send) ||
      !export_fn(env, exports, "stateLayout", js_state_layout) ||
      !export_fn(env, exports, "schedIdleThread", js_sched_idle_thread) ||
#ifdef LAZYSNAP_FAULT_INJECTION
      !export_fn(env, exports, "testCrash", js_test_crash) ||
#endif
      !export_int(env, exports, "STATE_VERSION", STATE_VERSION))
    return NULL;
  return exports;
}
