/* Delivering a session's output to JS: the fault thread fills the outbox (need, installed, poisoned,
 * missing, touched, claimed, failures, exited, stopped) and pokes the thread-safe function; this runs on
 * the JS thread, drains the outbox into one event object and calls the session's callback (or, for a
 * session about to close, returns it: sessionDrain).
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

/* Every napi call here can refuse: once a worker thread's environment is being terminated (which another
 * thread decides at any moment), calls that could run JS return napi_pending_exception and fill no out
 * parameter. Nothing is written through a pointer a refused call did not set, and the outbox is emptied
 * only once the whole event object exists, so a refused delivery loses nothing: the next call, if the
 * environment has one, delivers it. */

/* The time stamps of a timed output (need, installed), in CLOCK_MONOTONIC milliseconds: the clock of
 * process.hrtime() in JS. */
static bool time_array(napi_env env, const u32vec *a, napi_value *empty, napi_value *out) {
  if (a->n == 0 && *empty) return (*out = *empty), true;
  napi_value ab;
  double *p = NULL;
  if (napi_create_arraybuffer(env, a->n * sizeof(double), (void **)&p, &ab) != napi_ok || (a->n && !p))
    return false;
  for (size_t i = 0; i < a->n; i++) p[i] = (double)a->t[i] / 1e6;
  if (napi_create_typedarray(env, napi_float64_array, a->n, ab, 0, out) != napi_ok) return false;
  if (a->n == 0) *empty = *out;
  return true;
}

/* Most outputs of a batch are empty: they share one empty array (JS only reads them), so that a batch
 * costs an allocation per output that has something in it, not per output. */
static bool u32_array(napi_env env, const u32vec *a, napi_value *empty, napi_value *out) {
  if (a->n == 0 && *empty) return (*out = *empty), true;
  napi_value ab;
  void *p = NULL;
  if (napi_create_arraybuffer(env, a->n * 4, &p, &ab) != napi_ok || (a->n && !p)) return false;
  if (a->n) memcpy(p, a->v, a->n * 4);
  if (napi_create_typedarray(env, napi_uint32_array, a->n, ab, 0, out) != napi_ok) return false;
  if (a->n == 0) *empty = *out;
  return true;
}

static napi_value failure_object(napi_env env, const failure_t *f) {
  napi_value o = NULL, v;
  if (napi_create_object(env, &o) != napi_ok) return NULL;
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

/* Drains the outbox into one event object; NULL when a call was refused (the outbox stays whole). */
napi_value session_take_event(napi_env env, session_t *s) {
  napi_value o, fails, flag, no_u32 = NULL, no_f64 = NULL;
  if (napi_create_object(env, &o) != napi_ok || napi_create_array(env, &fails) != napi_ok) return NULL;
  pthread_mutex_lock(&s->omu);
  u32vec *const outs[] = {&s->need, &s->installed, &s->poisoned, &s->missing, &s->touched, &s->claimed};
  static const char *const names[] = {"need", "installed", "poisoned", "missing", "touched", "claimed"};
  enum { NOUTS = sizeof outs / sizeof *outs };
  napi_value arrs[NOUTS], need_at, installed_at, claimed_at;
  bool ok = time_array(env, &s->need, &no_f64, &need_at) &&
            time_array(env, &s->installed, &no_f64, &installed_at) &&
            time_array(env, &s->claimed, &no_f64, &claimed_at);
  for (size_t i = 0; ok && i < NOUTS; i++) ok = u32_array(env, outs[i], &no_u32, &arrs[i]);
  uint32_t nf = 0;
  for (size_t i = 0; ok && i < s->nfails; i++) {
    napi_value f = failure_object(env, &s->fails[i]);
    ok = f && napi_set_element(env, fails, nf++, f) == napi_ok;
  }
  /* Some report (a need, an install, a failure) is gone: nobody can tell which peer thread waits for
   * what any more. Reported as its own kind so that policy can only fail closed. */
  const failure_t lost = {
      .kind = FAIL_OUT_OF_MEMORY, .err = 12 /* ENOMEM */, .chunk = UINT32_MAX, .what = "recording an output"};
  const failure_t *const extra[] = {s->fails_lost ? &lost : NULL, s->fatal.kind ? &s->fatal : NULL};
  for (size_t i = 0; ok && i < 2; i++) {
    if (!extra[i]) continue;
    napi_value f = failure_object(env, extra[i]);
    ok = f && napi_set_element(env, fails, nf++, f) == napi_ok;
  }
  if (!ok) {
    pthread_mutex_unlock(&s->omu); /* refused: the outbox stays whole for a later delivery */
    return NULL;
  }
  set_named(env, o, "needAt", need_at);
  set_named(env, o, "installedAt", installed_at);
  set_named(env, o, "claimedAt", claimed_at);
  for (size_t i = 0; i < NOUTS; i++) {
    set_named(env, o, names[i], arrs[i]);
    outs[i]->n = 0;
  }
  s->nfails = 0;
  s->fails_lost = false;
  s->fatal.kind = 0;
  napi_get_boolean(env, s->out_exited, &flag);
  set_named(env, o, "exited", flag);
  napi_get_boolean(env, s->out_stopped, &flag);
  set_named(env, o, "stopped", flag);
  pthread_mutex_unlock(&s->omu);
  set_named(env, o, "failures", fails);
  return o;
}

void session_call_js(napi_env env, napi_value cb, void *context, void *data) {
  session_t *s = context;
  if (env == NULL || s->closed) return;
  /* Clear first: anything the thread adds while we drain triggers a fresh call. */
  atomic_store(&s->notify_pending, false);
  napi_value o = session_take_event(env, s), undef;
  if (!o) return;
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, cb, 1, &o, NULL) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
}
