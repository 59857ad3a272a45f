/* Small helpers shared by the binding files: argument extraction and Node-shaped errors.
 * Every helper returns false after throwing a pending JS exception, so callers write
 *   if (!arg_u64(env, v, "addr", &addr)) return NULL;
 */
#ifndef LAZYSNAP_NAPI_UTIL_H
#define LAZYSNAP_NAPI_UTIL_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NAPI_OK(env, call)                                                                                   \
  do {                                                                                                       \
    if ((call) != napi_ok) {                                                                                 \
      napi_throw_error((env), "LAZYSNAP_NATIVE", #call " failed");                                           \
      return NULL;                                                                                           \
    }                                                                                                        \
  } while (0)

/* Throws an Error shaped like Node's system errors: message "EEXIST: file exists, ioctl(UFFDIO_COPY)",
 * code 'EEXIST', errno -17 (negative, as libuv/Node report it), syscall 'ioctl(UFFDIO_COPY)'. */
void throw_errno(napi_env env, int err, const char *syscall);
napi_value make_errno_error(napi_env env, int err, const char *syscall);
/* TypeError with code ERR_INVALID_ARG_VALUE-like LAZYSNAP_INVALID_ARGUMENT. */
void throw_arg(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, napi_value *self);
bool arg_u64(napi_env env, napi_value v, const char *name, uint64_t *out); /* bigint or safe integer */
bool arg_i32(napi_env env, napi_value v, const char *name, int32_t *out);
bool arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out);
bool arg_fd(napi_env env, napi_value v, const char *name, int *out);
bool arg_bool(napi_env env, napi_value v, const char *name, bool *out);
/* Bytes of a Buffer / TypedArray / ArrayBuffer / DataView. */
bool arg_bytes(napi_env env, napi_value v, const char *name, uint8_t **data, size_t *len);
bool arg_string(napi_env env, napi_value v, const char *name, char *buf, size_t cap);
bool prop(napi_env env, napi_value obj, const char *key, napi_value *out); /* false if undefined */

napi_value make_u64(napi_env env, uint64_t v); /* a Number (counters stay below 2^53) */
napi_value make_bigint(napi_env env, uint64_t v);
napi_value make_i32(napi_env env, int32_t v);
napi_value make_undefined(napi_env env);
bool set_named(napi_env env, napi_value obj, const char *key, napi_value v);
bool export_fn(napi_env env, napi_value exports, const char *name, napi_callback fn);
bool export_int(napi_env env, napi_value exports, const char *name, int64_t v);

#endif
