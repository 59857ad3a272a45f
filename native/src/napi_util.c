#include "napi_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

napi_value make_errno_error(napi_env env, int err, const char *syscall) {
  /* libuv knows the canonical E-names and messages for every errno, and Node's own errors use them. */
  const char *name = uv_err_name(-err);
  const char *desc = uv_strerror(-err);
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s, %s", name, desc, syscall);
  napi_value m, code, e, errno_v, sc;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, m, &e);
  napi_create_int32(env, -err, &errno_v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, e, "errno", errno_v);
  napi_set_named_property(env, e, "syscall", sc);
  return e;
}

void throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, make_errno_error(env, err, syscall));
}

void throw_arg(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, "LAZYSNAP_INVALID_ARGUMENT", msg);
}

bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, napi_value *self) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok) {
    napi_throw_error(env, "LAZYSNAP_NATIVE", "napi_get_cb_info failed");
    return false;
  }
  napi_value undef;
  napi_get_undefined(env, &undef);
  for (size_t i = argc; i < want; i++) argv[i] = undef;
  return true;
}

static napi_valuetype type_of(napi_env env, napi_value v) {
  napi_valuetype t = napi_undefined;
  napi_typeof(env, v, &t);
  return t;
}

bool arg_u64(napi_env env, napi_value v, const char *name, uint64_t *out) {
  napi_valuetype t = type_of(env, v);
  if (t == napi_bigint) {
    bool lossless = false;
    if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok || !lossless) {
      throw_arg(env, "%s must be a non-negative bigint below 2^64", name);
      return false;
    }
    return true;
  }
  if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    /* 2^53: beyond it a double cannot name every integer, so an address would silently round. */
    if (!(d >= 0 && d <= 9007199254740991.0) || d != (double)(uint64_t)d) {
      throw_arg(env, "%s must be a non-negative safe integer, received %g", name, d);
      return false;
    }
    *out = (uint64_t)d;
    return true;
  }
  throw_arg(env, "%s must be a number or bigint", name);
  return false;
}

bool arg_i32(napi_env env, napi_value v, const char *name, int32_t *out) {
  double d;
  /* Range first: converting an out-of-range double to int32_t is undefined behaviour in C. */
  if (type_of(env, v) != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
      !(d >= -2147483648.0) || !(d <= 2147483647.0) || d != (double)(int32_t)d) {
    throw_arg(env, "%s must be a 32-bit integer", name);
    return false;
  }
  *out = (int32_t)d;
  return true;
}

bool arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out) {
  double d;
  if (type_of(env, v) != napi_number || napi_get_value_double(env, v, &d) != napi_ok || d < 0 ||
      d > 4294967295.0 || d != (double)(uint32_t)d) {
    throw_arg(env, "%s must be an unsigned 32-bit integer", name);
    return false;
  }
  *out = (uint32_t)d;
  return true;
}

bool arg_fd(napi_env env, napi_value v, const char *name, int *out) {
  int32_t fd;
  if (!arg_i32(env, v, name, &fd)) return false;
  if (fd < 0) {
    throw_arg(env, "%s must be a file descriptor (>= 0), received %d", name, fd);
    return false;
  }
  *out = fd;
  return true;
}

bool arg_bool(napi_env env, napi_value v, const char *name, bool *out) {
  napi_valuetype t = type_of(env, v);
  if (t == napi_undefined) {
    *out = false;
    return true;
  }
  if (t != napi_boolean) {
    throw_arg(env, "%s must be a boolean", name);
    return false;
  }
  napi_get_value_bool(env, v, out);
  return true;
}

bool arg_bytes(napi_env env, napi_value v, const char *name, uint8_t **data, size_t *len) {
  bool is;
  void *p = NULL;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type tt;
    size_t n, off;
    napi_value ab;
    napi_get_typedarray_info(env, v, &tt, &n, &p, &ab, &off);
    size_t elt = 1;
    switch (tt) {
      case napi_int16_array:
      case napi_uint16_array: elt = 2; break;
      case napi_int32_array:
      case napi_uint32_array:
      case napi_float32_array: elt = 4; break;
      case napi_float64_array:
      case napi_bigint64_array:
      case napi_biguint64_array: elt = 8; break;
      default: break;
    }
    *data = p;
    *len = n * elt;
    return true;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    napi_get_dataview_info(env, v, len, &p, NULL, NULL);
    *data = p;
    return true;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    napi_get_arraybuffer_info(env, v, &p, len);
    *data = p;
    return true;
  }
  throw_arg(env, "%s must be a Buffer, TypedArray, DataView or ArrayBuffer", name);
  return false;
}

bool arg_string(napi_env env, napi_value v, const char *name, char *buf, size_t cap) {
  size_t n;
  if (type_of(env, v) != napi_string) {
    throw_arg(env, "%s must be a string", name);
    return false;
  }
  napi_get_value_string_utf8(env, v, NULL, 0, &n);
  if (n + 1 > cap) {
    throw_arg(env, "%s is too long (%zu bytes, at most %zu)", name, n, cap - 1);
    return false;
  }
  napi_get_value_string_utf8(env, v, buf, cap, &n);
  if (strlen(buf) != n) {
    throw_arg(env, "%s must not contain NUL bytes", name);
    return false;
  }
  return true;
}

bool prop(napi_env env, napi_value obj, const char *key, napi_value *out) {
  if (napi_get_named_property(env, obj, key, out) != napi_ok) return false;
  return type_of(env, *out) != napi_undefined;
}

napi_value make_u64(napi_env env, uint64_t v) {
  napi_value r = NULL; /* NULL where the call is refused (a terminating env) */
  napi_create_double(env, (double)v, &r);
  return r;
}
napi_value make_bigint(napi_env env, uint64_t v) {
  napi_value r = NULL; /* NULL where the call is refused (a terminating env) */
  napi_create_bigint_uint64(env, v, &r);
  return r;
}
napi_value make_i32(napi_env env, int32_t v) {
  napi_value r = NULL; /* NULL where the call is refused (a terminating env) */
  napi_create_int32(env, v, &r);
  return r;
}
napi_value make_undefined(napi_env env) {
  napi_value r = NULL; /* NULL where the call is refused (a terminating env) */
  napi_get_undefined(env, &r);
  return r;
}
bool set_named(napi_env env, napi_value obj, const char *key, napi_value v) {
  return napi_set_named_property(env, obj, key, v) == napi_ok;
}
bool export_fn(napi_env env, napi_value exports, const char *name, napi_callback fn) {
  napi_value f;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f) == napi_ok &&
         set_named(env, exports, name, f);
}
bool export_int(napi_env env, napi_value exports, const char *name, int64_t v) {
  napi_value n;
  return napi_create_int64(env, v, &n) == napi_ok && set_named(env, exports, name, n);
}
