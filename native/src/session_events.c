/* Delivering a session's output to JS: the fault thread fills the outbox (need, installed,
 * poisoned, missing, touched, errors, exited) and pokes the thread-safe function; this runs on the JS
 * thread, drains the outbox into one event object and calls the session's callback. */
#include <string.h>

#include "napi_util.h"
#include "session_internal.h"

static napi_value u32_array(napi_env env, u32vec *a) {
  napi_value ab, arr;
  void *p;
  napi_create_arraybuffer(env, a->n * 4, &p, &ab);
  if (a->n) memcpy(p, a->v, a->n * 4);
  napi_create_typedarray(env, napi_uint32_array, a->n, ab, 0, &arr);
  a->n = 0;
  return arr;
}

void session_call_js(napi_env env, napi_value cb, void *context, void *data) {
  session_t *s = context;
  if (env == NULL || s->closed) return;
  /* Clear first: anything the thread adds while we drain triggers a fresh call. */
  atomic_store(&s->notify_pending, false);
  napi_value o, errs, undef;
  napi_create_object(env, &o);
  pthread_mutex_lock(&s->omu);
  set_named(env, o, "need", u32_array(env, &s->need));
  set_named(env, o, "installed", u32_array(env, &s->installed));
  set_named(env, o, "poisoned", u32_array(env, &s->poisoned));
  set_named(env, o, "missing", u32_array(env, &s->missing));
  set_named(env, o, "touched", u32_array(env, &s->touched));
  napi_create_array_with_length(env, s->nerrs, &errs);
  for (size_t i = 0; i < s->nerrs; i++) {
    napi_value e = make_errno_error(env, s->errs[i].err, s->errs[i].syscall);
    if (s->errs[i].chunk != UINT32_MAX) set_named(env, e, "chunk", make_u64(env, s->errs[i].chunk));
    napi_set_element(env, errs, i, e);
  }
  s->nerrs = 0;
  napi_value ex;
  napi_get_boolean(env, s->out_exited, &ex);
  pthread_mutex_unlock(&s->omu);
  set_named(env, o, "errors", errs);
  set_named(env, o, "exited", ex);
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, cb, 1, &o, NULL) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
}
