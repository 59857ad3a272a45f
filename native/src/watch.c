/* watchStart(fd, events, callback): readiness notifications for a raw fd on Node's own event loop
 * (uv_poll), so the accept loop and handshakes need no extra thread. The fd stays the caller's; stop
 * the watcher before closing the fd (libuv requires it). events: 1 readable, 2 writable,
 * 4 disconnect (peer hung up). callback(error | null, events). */
#include <stdlib.h>
#include <uv.h>

#include "napi_util.h"

typedef struct watch {
  uv_poll_t handle;
  napi_env env;
  napi_ref cb;
  napi_async_context actx;
} watch_t;

typedef struct {
  watch_t *w; /* NULL once stopped */
} box_t;

static const napi_type_tag WATCH_TAG = {0x6c617a79736e6170ULL, 0x7761746368000001ULL};

/* Only frees: the close may complete while a worker's environment is being torn down, when no
 * N-API call is safe any more (the references were released synchronously in box_stop). */
static void on_closed(uv_handle_t *h) {
  free(h);
}

static void on_event(uv_poll_t *h, int status, int events) {
  watch_t *w = (watch_t *)h;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, argv[2], global, res;
  napi_get_reference_value(env, w->cb, &cb);
  if (status < 0)
    argv[0] = make_errno_error(env, -status, "uv_poll");
  else
    napi_get_null(env, &argv[0]);
  argv[1] = make_i32(env, events);
  napi_get_global(env, &global);
  /* make_callback, not call_function: it runs the microtask queue afterwards, as any I/O callback. */
  if (cb && napi_make_callback(env, w->actx, global, cb, 2, argv, &res) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
  napi_close_handle_scope(env, scope);
}

static void box_stop(box_t *b) {
  watch_t *w = b->w;
  if (!w) return;
  b->w = NULL;
  napi_delete_reference(w->env, w->cb);
  napi_async_destroy(w->env, w->actx);
  uv_poll_stop(&w->handle);
  uv_close((uv_handle_t *)&w->handle, on_closed);
}

static void box_finalize(napi_env env, void *data, void *hint) {
  box_stop(data);
  free(data);
}

static napi_value js_start(napi_env env, napi_callback_info info) {
  napi_value argv[3], ext, name;
  int fd;
  uint32_t ev;
  if (!get_args(env, info, 3, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_u32(env, argv[1], "events", &ev))
    return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function || ev == 0 || ev > 7) {
    throw_arg(env,
              "watchStart(fd, events 1..7, callback) needs a callback and readable|writable|disconnect bits");
    return NULL;
  }
  uv_loop_t *loop;
  NAPI_OK(env, napi_get_uv_event_loop(env, &loop));
  watch_t *w = calloc(1, sizeof *w);
  box_t *b = calloc(1, sizeof *b);
  if (!w || !b) {
    free(w), free(b);
    return throw_errno(env, 12, "calloc"), NULL;
  }
  int r = uv_poll_init(loop, &w->handle, fd);
  if (r < 0) {
    free(w), free(b);
    return throw_errno(env, -r, "uv_poll_init"), NULL;
  }
  w->env = env;
  napi_create_reference(env, argv[2], 1, &w->cb);
  napi_create_string_utf8(env, "lazysnap.watch", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->actx);
  b->w = w;
  int uvev = ((ev & 1) ? UV_READABLE : 0) | ((ev & 2) ? UV_WRITABLE : 0) | ((ev & 4) ? UV_DISCONNECT : 0);
  r = uv_poll_start(&w->handle, uvev, on_event);
  if (r < 0) {
    box_stop(b);
    free(b);
    return throw_errno(env, -r, "uv_poll_start"), NULL;
  }
  NAPI_OK(env, napi_create_external(env, b, box_finalize, NULL, &ext));
  NAPI_OK(env, napi_type_tag_object(env, ext, &WATCH_TAG));
  return ext;
}

static napi_value js_stop(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  void *p;
  bool ok = false;
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  if (napi_check_object_type_tag(env, argv[0], &WATCH_TAG, &ok) != napi_ok || !ok ||
      napi_get_value_external(env, argv[0], &p) != napi_ok) {
    throw_arg(env, "watchStop needs a handle returned by watchStart()");
    return NULL;
  }
  box_stop(p);
  return make_undefined(env);
}

napi_value watch_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "watchStart", js_start) || !export_fn(env, exports, "watchStop", js_stop))
    return NULL;
  return exports;
}
