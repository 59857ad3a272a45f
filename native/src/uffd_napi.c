/* JS bindings for the uffd primitives in uffd.c: the process that owns memory uses create / api /
 * register (in-process restore, tests, the C-equivalent of Firecracker's side); the handler side
 * uses copy / zeropage / wake / poison directly when it does not go through a session. */
#include <errno.h>
#include <fcntl.h>

#include "napi_util.h"
#include "uffd.h"

/* uffdCreate({nonBlocking = true, userModeOnly = false}) → fd (always close-on-exec). */
static napi_value js_create(napi_env env, napi_callback_info info) {
  napi_value argv[1], v;
  bool nonblock = true, umo = false;
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  if (t == napi_object) {
    if (prop(env, argv[0], "nonBlocking", &v) && !arg_bool(env, v, "nonBlocking", &nonblock)) return NULL;
    if (prop(env, argv[0], "userModeOnly", &v) && !arg_bool(env, v, "userModeOnly", &umo)) return NULL;
  }
  int fd = uffd_create(O_CLOEXEC | (nonblock ? O_NONBLOCK : 0) | (umo ? UFFD_USER_MODE_ONLY : 0));
  if (fd < 0) return throw_errno(env, -fd, "userfaultfd"), NULL;
  return make_i32(env, fd);
}

/* uffdApi(fd, features: bigint) → {features: bigint (all the kernel supports), ioctls: bigint}. */
static napi_value js_api(napi_env env, napi_callback_info info) {
  napi_value argv[2], o;
  int fd;
  uint64_t feat, avail = 0, ioctls = 0;
  if (!get_args(env, info, 2, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_u64(env, argv[1], "features", &feat))
    return NULL;
  int r = uffd_api(fd, feat, &avail, &ioctls);
  if (r) return throw_errno(env, -r, "ioctl(UFFDIO_API)"), NULL;
  NAPI_OK(env, napi_create_object(env, &o));
  set_named(env, o, "features", make_bigint(env, avail));
  set_named(env, o, "ioctls", make_bigint(env, ioctls));
  return o;
}

static bool range_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv, int *fd,
                       uint64_t *a, uint64_t *len) {
  return get_args(env, info, n, argv, NULL) && arg_fd(env, argv[0], "fd", fd) &&
         arg_u64(env, argv[1], "address", a) && arg_u64(env, argv[2], "length", len);
}

/* uffdRegister(fd, address, length, mode) → ioctls bitmask (bigint) valid on the range. */
static napi_value js_register(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  uint64_t a, len, mode, ioctls = 0;
  if (!range_args(env, info, 4, argv, &fd, &a, &len) || !arg_u64(env, argv[3], "mode", &mode)) return NULL;
  int r = uffd_register(fd, a, len, mode, &ioctls);
  if (r) return throw_errno(env, -r, "ioctl(UFFDIO_REGISTER)"), NULL;
  return make_bigint(env, ioctls);
}

static napi_value js_unregister(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint64_t a, len;
  if (!range_args(env, info, 3, argv, &fd, &a, &len)) return NULL;
  int r = uffd_unregister(fd, a, len);
  if (r) return throw_errno(env, -r, "ioctl(UFFDIO_UNREGISTER)"), NULL;
  return make_undefined(env);
}

static napi_value js_wake(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint64_t a, len;
  if (!range_args(env, info, 3, argv, &fd, &a, &len)) return NULL;
  int r = uffd_wake(fd, a, len);
  if (r) return throw_errno(env, -r, "ioctl(UFFDIO_WAKE)"), NULL;
  return make_undefined(env);
}

static napi_value fill_result(napi_env env, const uffd_fill_stats *st) {
  napi_value o;
  napi_create_object(env, &o);
  set_named(env, o, "bytes", make_u64(env, st->bytes));
  set_named(env, o, "pagesPresent", make_u64(env, st->eexist_pages));
  return o;
}

/* Shared by copy / zeropage / poison: (fd, address, length | source, pageSize) → {bytes, pagesPresent}. */
static napi_value fill(napi_env env, napi_callback_info info, uffd_fill_mode mode, const char *syscall) {
  napi_value argv[4];
  int fd;
  uint64_t a, len = 0, ps = 4096;
  uint8_t *src = NULL;
  size_t slen;
  if (!get_args(env, info, 4, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_u64(env, argv[1], "address", &a))
    return NULL;
  if (mode == UFFD_FILL_COPY) {
    if (!arg_bytes(env, argv[2], "source", &src, &slen)) return NULL;
    len = slen;
  } else if (!arg_u64(env, argv[2], "length", &len)) {
    return NULL;
  }
  napi_valuetype t;
  napi_typeof(env, argv[3], &t);
  if (t != napi_undefined && !arg_u64(env, argv[3], "pageSize", &ps)) return NULL;
  if ((ps != 4096 && ps != 2097152) || (a % ps) || (len % ps) || len == 0) {
    throw_arg(env, "address and length must be non-zero multiples of pageSize (4096 or 2097152)");
    return NULL;
  }
  uffd_fill_stats st = {0};
  uint64_t done = 0;
  int r;
  /* This synchronous form has no events to drain, so EAGAIN (mmap changing) is reported to the
   * caller along with how far it got. */
  r = uffd_fill(fd, mode, a, src, len, ps, true, &st, &done);
  if (r) {
    napi_value e = make_errno_error(env, -r, syscall);
    set_named(env, e, "bytesDone", make_u64(env, done));
    napi_throw(env, e);
    return NULL;
  }
  return fill_result(env, &st);
}
static napi_value js_copy(napi_env env, napi_callback_info info) {
  return fill(env, info, UFFD_FILL_COPY, "ioctl(UFFDIO_COPY)");
}
static napi_value js_zero(napi_env env, napi_callback_info info) {
  return fill(env, info, UFFD_FILL_ZERO, "ioctl(UFFDIO_ZEROPAGE)");
}
static napi_value js_poison(napi_env env, napi_callback_info info) {
  return fill(env, info, UFFD_FILL_POISON, "ioctl(UFFDIO_POISON)");
}

napi_value uffd_napi_init(napi_env env, napi_value exports) {
#define C(n) export_int(env, exports, #n, (int64_t)(n))
  if (!export_fn(env, exports, "uffdCreate", js_create) || !export_fn(env, exports, "uffdApi", js_api) ||
      !export_fn(env, exports, "uffdRegister", js_register) ||
      !export_fn(env, exports, "uffdUnregister", js_unregister) ||
      !export_fn(env, exports, "uffdWake", js_wake) || !export_fn(env, exports, "uffdCopy", js_copy) ||
      !export_fn(env, exports, "uffdZeropage", js_zero) ||
      !export_fn(env, exports, "uffdPoison", js_poison) || !C(UFFD_FEATURE_EVENT_REMOVE) ||
      !C(UFFD_FEATURE_EVENT_FORK) || !C(UFFD_FEATURE_EVENT_UNMAP) || !C(UFFD_FEATURE_MISSING_HUGETLBFS) ||
      !C(UFFD_FEATURE_SIGBUS) || !C(UFFD_FEATURE_THREAD_ID) || !C(UFFD_FEATURE_EXACT_ADDRESS) ||
      !C(UFFD_FEATURE_POISON) || !C(UFFDIO_REGISTER_MODE_MISSING) || !C(UFFDIO_REGISTER_MODE_WP) ||
      !C(UFFDIO_REGISTER_MODE_MINOR) || !C(_UFFDIO_COPY) || !C(_UFFDIO_ZEROPAGE) || !C(_UFFDIO_WAKE) ||
      !C(_UFFDIO_POISON))
    return NULL;
#undef C
  return exports;
}
