/* Delivering a session's output to JS: the fault thread fills the outbox (need, installed, poisoned,
 * missing, touched, failures, exited, stopped) and pokes the thread-safe function; this runs on the JS
 * thread, drains the outbox into one event object and calls the session's callback.
 *
 * Failures are typed (kind, errno name, chunk, address, length) and carry no advice: what each means is
 * decided in one place, runtime/native-failure.ts. */
#include <string.h>
#include <uv.h>

#include "napi_util.h"
#include "session_internal.h"

static const char *const KIND_NAMES[] = {
    [FAIL_COPY] = "copy",
    [FAIL_ZEROPAGE] = "zeropage",
    [FAIL_WAKE] = "wake",
    [FAIL_POISON] = "poison",
    [FAIL_EVENT_READ] = "event-read",
    [FAIL_THREAD_EXIT] = "thread-exit",
    [FAIL_OUT_OF_MEMORY] = "out-of-memory",
    [FAIL_OUTSIDE_REGIONS] = "outside-regions",
    [FAIL_INJECTED] = "injected",
};

/* The time stamps of a timed output (need, installed), in CLOCK_MONOTONIC milliseconds: the clock of
 * process.hrtime() in JS. Read before u32_array() empties the vector. */
static napi_value time_array(napi_env env, const u32vec *a, napi_value *empty) {
  if (a->n == 0 && *empty) return *empty;
  napi_value ab, arr;
  double *p;
  napi_create_arraybuffer(env, a->n * sizeof(double), (void **)&p, &ab);
  for (size_t i = 0; i < a->n; i++) p[i] = (double)a->t[i] / 1e6;
  napi_create_typedarray(env, napi_float64_array, a->n, ab, 0, &arr);
  if (a->n == 0) *empty = arr;
  return arr;
}

/* Most outputs of a batch are empty: they share one empty array (JS only reads them), so that a batch
 * costs an allocation per output that has something in it, not per output. */
static napi_value u32_array(napi_env env, u32vec *a, napi_value *empty) {
  if (a->n == 0 && *empty) return *empty;
  napi_value ab, arr;
  void *p;
  napi_create_arraybuffer(env, a->n * 4, &p, &ab);
  if (a->n) memcpy(p, a->v, a->n * 4);
  napi_create_typedarray(env, napi_uint32_array, a->n, ab, 0, &arr);
  if (a->n == 0) *empty = arr;
  a->n = 0;
  return arr;
}

static napi_value failure_object(napi_env env, const failure_t *f) {
  napi_value o, v;
  napi_create_object(env, &o);
  unsigned k = f->kind < sizeof KIND_NAMES / sizeof *KIND_NAMES && KIND_NAMES[f->kind] ? f->kind : 0;
  napi_create_string_utf8(env, k ? KIND_NAMES[k] : "unknown", NAPI_AUTO_LENGTH, &v);
  set_named(env, o, "kind", v);
  napi_create_string_utf8(env, uv_err_name(-f->err), NAPI_AUTO_LENGTH, &v);
  set_named(env, o, "code", v);
  set_named(env, o, "errno", make_i32(env, -f->err));
  napi_create_string_utf8(env, f->what ? f->what : "", NAPI_AUTO_LENGTH, &v);
  set_named(env, o, "syscall", v);
  if (f->chunk != UINT32_MAX) set_named(env, o, "chunk", make_u64(env, f->chunk));
  if (f->addr) set_named(env, o, "address", make_bigint(env, f->addr));
  set_named(env, o, "length", make_u64(env, f->len));
  return o;
}

void session_call_js(napi_env env, napi_value cb, void *context, void *data) {
  session_t *s = context;
  if (env == NULL || s->closed) return;
  /* Clear first: anything the thread adds while we drain triggers a fresh call. */
  atomic_store(&s->notify_pending, false);
  napi_value o, fails, undef, flag;
  napi_create_object(env, &o);
  napi_create_array(env, &fails);
  uint32_t nf = 0;
  pthread_mutex_lock(&s->omu);
  napi_value no_u32 = NULL, no_f64 = NULL;
  set_named(env, o, "needAt", time_array(env, &s->need, &no_f64));
  set_named(env, o, "need", u32_array(env, &s->need, &no_u32));
  set_named(env, o, "installedAt", time_array(env, &s->installed, &no_f64));
  set_named(env, o, "installed", u32_array(env, &s->installed, &no_u32));
  set_named(env, o, "poisoned", u32_array(env, &s->poisoned, &no_u32));
  set_named(env, o, "missing", u32_array(env, &s->missing, &no_u32));
  set_named(env, o, "touched", u32_array(env, &s->touched, &no_u32));
  for (size_t i = 0; i < s->nfails; i++)
    napi_set_element(env, fails, nf++, failure_object(env, &s->fails[i]));
  s->nfails = 0;
  if (s->fails_lost) {
    /* Some report (a need, an install, a failure) is gone: nobody can tell which peer thread waits for
     * what any more. Reported as its own kind so that policy can only fail closed. */
    failure_t lost = {.kind = FAIL_OUT_OF_MEMORY,
                      .err = 12 /* ENOMEM */,
                      .chunk = UINT32_MAX,
                      .what = "recording an output"};
    napi_set_element(env, fails, nf++, failure_object(env, &lost));
    s->fails_lost = false;
  }
  if (s->fatal.kind) {
    napi_set_element(env, fails, nf++, failure_object(env, &s->fatal));
    s->fatal.kind = 0;
  }
  napi_get_boolean(env, s->out_exited, &flag);
  set_named(env, o, "exited", flag);
  napi_get_boolean(env, s->out_stopped, &flag);
  set_named(env, o, "stopped", flag);
  pthread_mutex_unlock(&s->omu);
  set_named(env, o, "failures", fails);
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, cb, 1, &o, NULL) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
}
