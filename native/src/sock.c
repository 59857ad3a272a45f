/* Unix-socket primitives for the UFFD handshake. Node's `net` cannot receive file descriptors
 * (SCM_RIGHTS) nor create a socket with a chosen mode, so these are native. No policy: how many fds
 * are acceptable, how long to wait, whom to trust are decided in JS. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "napi_util.h"
#include "sock.h"

#ifndef SO_PEERPIDFD /* Linux 6.5 */
#define SO_PEERPIDFD 77
#endif

static bool unix_addr(napi_env env, napi_value v, struct sockaddr_un *a) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  return arg_string(env, v, "path", a->sun_path, sizeof a->sun_path);
}

/* A socket type argument: true for SOCK_SEQPACKET (message boundaries: the supervisor's control
 * socket), anything else SOCK_STREAM (what Firecracker connects to). */
static int sock_type(napi_env env, napi_value v) {
  bool b = false;
  return napi_get_value_bool(env, v, &b) == napi_ok && b ? SOCK_SEQPACKET : SOCK_STREAM;
}

/* sockListen(path, backlog, seqpacket?) → fd. Non-blocking, close-on-exec, the socket file chmod 0600
 * right after bind: the caller puts it in a 0700 directory so nobody can connect in between. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct sockaddr_un a;
  int32_t backlog;
  if (!get_args(env, info, 3, argv, NULL) || !unix_addr(env, argv[0], &a) ||
      !arg_i32(env, argv[1], "backlog", &backlog))
    return NULL;
  int fd = socket(AF_UNIX, sock_type(env, argv[2]) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket"), NULL;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "bind"), NULL;
  }
  if (chmod(a.sun_path, 0600) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    unlink(a.sun_path);
    return throw_errno(env, e, "listen"), NULL;
  }
  return make_i32(env, fd);
}

/* sockAccept(fd) → fd, or -1 when no connection is pending. */
static napi_value js_accept(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  for (;;) {
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0) return make_i32(env, c);
    if (errno == EINTR) continue;
    /* ECONNABORTED: the client gave up before we accepted; nothing to hand out. */
    if (errno == EAGAIN || errno == ECONNABORTED) return make_i32(env, -1);
    return throw_errno(env, errno, "accept4"), NULL;
  }
}

/* sockConnect(path, seqpacket?) → fd (blocking connect; the fd is close-on-exec). */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct sockaddr_un a;
  if (!get_args(env, info, 2, argv, NULL) || !unix_addr(env, argv[0], &a)) return NULL;
  int fd = socket(AF_UNIX, sock_type(env, argv[1]) | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket"), NULL;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "connect"), NULL;
  }
  return make_i32(env, fd);
}

/* sockRecv(fd, maxBytes, maxFds) → null when nothing is pending, else
 * {data: Buffer, fds: number[], truncated, fdsTruncated}. data.length 0 means EOF. Up to maxFds of
 * the fds that arrived are returned (close-on-exec) for the caller to keep or close; any beyond
 * that are closed here and fdsTruncated is set, so a peer can never make us leak descriptors. */
static napi_value js_recv(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint32_t max_bytes, max_fds;
  if (!get_args(env, info, 3, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_u32(env, argv[1], "maxBytes", &max_bytes) || !arg_u32(env, argv[2], "maxFds", &max_fds))
    return NULL;
  if (max_bytes == 0 || max_bytes > (16u << 20) || max_fds > 253 /* SCM_MAX_FD */) {
    throw_arg(env, "maxBytes must be 1..16 MiB and maxFds 0..253");
    return NULL;
  }
  void *buf;
  napi_value data;
  NAPI_OK(env, napi_create_buffer(env, max_bytes, &buf, &data));
  size_t clen = CMSG_SPACE(sizeof(int) * (max_fds ? max_fds : 1));
  char *cbuf = calloc(1, clen);
  if (!cbuf) return throw_errno(env, ENOMEM, "calloc"), NULL;
  struct iovec iov = {.iov_base = buf, .iov_len = max_bytes};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = clen};
  ssize_t n;
  do n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    int e = errno;
    free(cbuf);
    if (e == EAGAIN) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
    return throw_errno(env, e, "recvmsg"), NULL;
  }
  napi_value fds, o, sliced, b;
  napi_create_array(env, &fds);
  uint32_t nf = 0;
  bool over = false;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      /* CMSG_SPACE rounds up, so one more fd than asked for can fit: close it rather than leak it. */
      if (nf >= max_fds) {
        close(f);
        over = true;
        continue;
      }
      napi_set_element(env, fds, nf++, make_i32(env, f));
    }
  }
  free(cbuf);
  /* Return a right-sized copy; the big receive buffer goes back to the GC. */
  void *dst;
  NAPI_OK(env, napi_create_buffer_copy(env, (size_t)n, buf, &dst, &sliced));
  NAPI_OK(env, napi_create_object(env, &o));
  set_named(env, o, "data", sliced);
  set_named(env, o, "fds", fds);
  napi_get_boolean(env, (m.msg_flags & MSG_TRUNC) != 0, &b);
  set_named(env, o, "truncated", b);
  napi_get_boolean(env, over || (m.msg_flags & MSG_CTRUNC) != 0, &b);
  set_named(env, o, "fdsTruncated", b);
  (void)data;
  return o;
}

bool arg_fd_array(napi_env env, napi_value v, int *fdv, uint32_t *nf) {
  bool is;
  if (napi_is_array(env, v, &is) != napi_ok || !is || napi_get_array_length(env, v, nf) != napi_ok ||
      *nf > MAX_PASSED_FDS) {
    throw_arg(env, "fds must be an array of at most 253 file descriptors");
    return false;
  }
  for (uint32_t i = 0; i < *nf; i++) {
    napi_value e;
    napi_get_element(env, v, i, &e);
    if (!arg_fd(env, e, "fds[]", &fdv[i])) return false;
  }
  return true;
}

ssize_t send_with_fds(int s, const struct sockaddr_un *to, socklen_t tolen, const void *data, size_t len,
                      const int *fdv, uint32_t nf) {
  char cbuf[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
  memset(cbuf, 0, sizeof cbuf);
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  struct msghdr m = {.msg_name = (void *)to, .msg_namelen = to ? tolen : 0, .msg_iov = &iov, .msg_iovlen = 1};
  if (nf) {
    m.msg_control = cbuf;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * nf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nf);
    memcpy(CMSG_DATA(c), fdv, sizeof(int) * nf);
  }
  ssize_t n;
  do n = sendmsg(s, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

/* sockSend(fd, data, fds: number[]) → bytes sent, in ONE sendmsg (the handshake is one message). */
static napi_value js_send(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint8_t *data;
  size_t len;
  uint32_t nf = 0;
  int fdv[MAX_PASSED_FDS];
  if (!get_args(env, info, 3, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_bytes(env, argv[1], "data", &data, &len) || !arg_fd_array(env, argv[2], fdv, &nf))
    return NULL;
  ssize_t n = send_with_fds(fd, NULL, 0, data, len, fdv, nf);
  if (n < 0) return throw_errno(env, errno, "sendmsg"), NULL;
  return make_u64(env, (uint64_t)n);
}

/* sockPeerCred(fd) → {pid, uid, gid} of the process that connected (as of connect()). */
static napi_value js_peercred(napi_env env, napi_callback_info info) {
  napi_value argv[1], o;
  int fd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct ucred cr;
  socklen_t l = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) != 0)
    return throw_errno(env, errno, "getsockopt(SO_PEERCRED)"), NULL;
  NAPI_OK(env, napi_create_object(env, &o));
  set_named(env, o, "pid", make_i32(env, cr.pid));
  set_named(env, o, "uid", make_u64(env, cr.uid));
  set_named(env, o, "gid", make_u64(env, cr.gid));
  return o;
}

/* sockPeerPidfd(fd) → a pidfd for the peer (Linux 6.5+); immune to PID reuse, unlike kill(pid). */
static napi_value js_peerpidfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd, pidfd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  socklen_t l = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &l) != 0)
    return throw_errno(env, errno, "getsockopt(SO_PEERPIDFD)"), NULL;
  return make_i32(env, pidfd);
}

static napi_value js_pidfd_open(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t pid;
  if (!get_args(env, info, 1, argv, NULL) || !arg_i32(env, argv[0], "pid", &pid)) return NULL;
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return throw_errno(env, errno, "pidfd_open"), NULL;
  return make_i32(env, (int)fd);
}

static napi_value js_pidfd_signal(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int32_t sig;
  if (!get_args(env, info, 2, argv, NULL) || !arg_fd(env, argv[0], "pidfd", &fd) ||
      !arg_i32(env, argv[1], "signal", &sig))
    return NULL;
  if (syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0) != 0)
    return throw_errno(env, errno, "pidfd_send_signal"), NULL;
  return make_undefined(env);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  /* Linux always releases the fd, even on EINTR: never retry close. */
  if (close(fd) != 0 && errno != EINTR) return throw_errno(env, errno, "close"), NULL;
  return make_undefined(env);
}

napi_value sock_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "sockListen", js_listen) ||
      !export_fn(env, exports, "sockAccept", js_accept) ||
      !export_fn(env, exports, "sockConnect", js_connect) || !export_fn(env, exports, "sockRecv", js_recv) ||
      !export_fn(env, exports, "sockSend", js_send) ||
      !export_fn(env, exports, "sockPeerCred", js_peercred) ||
      !export_fn(env, exports, "sockPeerPidfd", js_peerpidfd) ||
      !export_fn(env, exports, "pidfdOpen", js_pidfd_open) ||
      !export_fn(env, exports, "pidfdSendSignal", js_pidfd_signal) ||
      !export_fn(env, exports, "closeFd", js_close))
    return NULL;
  return exports;
}
