/* The direct demand path (direct.h). Why: on a virtualized host every cross-thread wake-up costs tens of
 * microseconds of CPU on both sides, and a chunk served through the event loop took about five of them
 * (fault thread → event loop → loader → fault thread, and the replies), against none in a one-thread
 * handler (bench/ANALYSIS.md, L1). Through this queue a fault costs one wake-up to reach a loader.
 *
 * A loader thread attaches a waker (a thread-safe function of its own environment) once it knows how to
 * load the table's chunks; the fault thread wakes one waker per item, preferring one not already woken,
 * and a woken loader takes items until the queue is empty. A waker whose environment is torn down (a
 * loader that stopped) is detached by its finalizer, under the queue's lock, so the fault thread never
 * calls a freed function. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "direct.h"
#include "napi_util.h"
#include "table.h"

/* Items waiting for a loader: beyond it, faults go through JS as before. */
#define DIRECT_CAP 4096
/* Loader threads attached to one table. */
#define DIRECT_MAX_WAKERS 16

typedef struct {
  uint64_t session;
  uint32_t chunk;
} item_t;

struct direct_q;
typedef struct {
  struct direct_q *q;
  table_t *table; /* referenced while attached */
  /* Held while the function is called, and by its finalizer: the call, a system call that can take tens
   * of microseconds, is made outside the queue's lock, so that a loader taking items never waits for it. */
  pthread_mutex_t mu;
  napi_threadsafe_function tsfn; /* NULL when the slot is free; written under both locks */
  atomic_bool pending;           /* woken and not yet run: another wake would be wasted */
} waker_t;

typedef struct direct_q {
  pthread_mutex_t mu;
  item_t ring[DIRECT_CAP];
  size_t head, n;
  waker_t w[DIRECT_MAX_WAKERS];
  unsigned rr; /* where the next wake starts looking: spreads items over the loaders */
} direct_q;

static direct_q *queue_of(table_t *t, bool create) {
  pthread_mutex_lock(&t->mu);
  if (!t->direct && create) {
    direct_q *q = calloc(1, sizeof *q);
    if (q) {
      pthread_mutex_init(&q->mu, NULL);
      for (unsigned i = 0; i < DIRECT_MAX_WAKERS; i++) pthread_mutex_init(&q->w[i].mu, NULL);
    }
    t->direct = q;
  }
  direct_q *q = t->direct;
  pthread_mutex_unlock(&t->mu);
  return q;
}

bool direct_push(table_t *t, uint64_t session, uint32_t chunk) {
  direct_q *q = t->direct; /* set once, before any waker exists, and freed with the table */
  if (!q) return false;
  pthread_mutex_lock(&q->mu);
  bool any = false;
  for (unsigned i = 0; i < DIRECT_MAX_WAKERS && !any; i++) any = q->w[i].tsfn != NULL;
  bool queued = any && q->n < DIRECT_CAP;
  waker_t *wake = NULL;
  if (queued) {
    q->ring[(q->head + q->n) % DIRECT_CAP] = (item_t){session, chunk};
    q->n++;
    /* One loader not yet woken, if any: a woken one takes every item there is when it runs. */
    for (unsigned k = 0; k < DIRECT_MAX_WAKERS && !wake; k++) {
      waker_t *w = &q->w[(q->rr + k) % DIRECT_MAX_WAKERS];
      if (w->tsfn && !atomic_exchange(&w->pending, true)) {
        wake = w;
        q->rr = (q->rr + k + 1) % DIRECT_MAX_WAKERS;
      }
    }
  }
  pthread_mutex_unlock(&q->mu);
  if (wake) {
    pthread_mutex_lock(&wake->mu);
    /* NULL: its loader stopped meanwhile; another loader takes the item when it next runs (each drains
     * the queue after every job), and JS asks again for what a stopped loader took (directLost). */
    if (!wake->tsfn || napi_call_threadsafe_function(wake->tsfn, NULL, napi_tsfn_nonblocking) != napi_ok)
      atomic_store(&wake->pending, false);
    pthread_mutex_unlock(&wake->mu);
  }
  return queued;
}

void direct_free(table_t *t) {
  if (!t->direct) return;
  for (unsigned i = 0; i < DIRECT_MAX_WAKERS; i++) pthread_mutex_destroy(&t->direct->w[i].mu);
  pthread_mutex_destroy(&t->direct->mu);
  free(t->direct);
  t->direct = NULL;
}

static void waker_call_js(napi_env env, napi_value cb, void *context, void *data) {
  waker_t *w = context;
  if (env == NULL) return;
  atomic_store(&w->pending, false); /* first: an item pushed while the callback runs wakes it again */
  napi_value undef;
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, cb, 0, NULL, NULL) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
}

/* The loader's environment released the function (it stopped): the slot is free again. */
static void waker_finalize(napi_env env, void *data, void *hint) {
  waker_t *w = data;
  direct_q *q = w->q;
  table_t *t = w->table;
  pthread_mutex_lock(&q->mu);
  pthread_mutex_lock(&w->mu);
  w->tsfn = NULL;
  w->table = NULL;
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_unlock(&q->mu);
  table_unref(t);
}

/* tableDirectAttach(table, onWork): this thread's onWork() is called when items wait. */
static napi_value js_attach(napi_env env, napi_callback_info info) {
  napi_value argv[2], name;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  direct_q *q = queue_of(t, true);
  if (!q) return throw_errno(env, ENOMEM, "tableDirectAttach"), NULL;
  pthread_mutex_lock(&q->mu);
  waker_t *w = NULL;
  for (unsigned i = 0; i < DIRECT_MAX_WAKERS && !w; i++)
    if (!q->w[i].tsfn && !q->w[i].table) w = &q->w[i];
  if (!w) {
    pthread_mutex_unlock(&q->mu);
    return throw_errno(env, ENFILE, "tableDirectAttach (too many loader threads)"), NULL;
  }
  napi_create_string_utf8(env, "lazysnap-direct", NAPI_AUTO_LENGTH, &name);
  napi_threadsafe_function tsfn;
  napi_status st = napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, w, waker_finalize, w,
                                                   waker_call_js, &tsfn);
  if (st == napi_ok) {
    /* A loader's event loop must be free to end: the queue does not keep its thread alive. */
    napi_unref_threadsafe_function(env, tsfn);
    table_ref(t);
    w->q = q;
    w->table = t;
    atomic_store(&w->pending, false);
    pthread_mutex_lock(&w->mu);
    w->tsfn = tsfn;
    pthread_mutex_unlock(&w->mu);
  }
  pthread_mutex_unlock(&q->mu);
  if (st != napi_ok)
    return throw_errno(env, ENOMEM, "tableDirectAttach (napi_create_threadsafe_function)"), NULL;
  return make_undefined(env);
}

/* tableDirectTake(table) → [session, chunk], or undefined when none waits. */
static napi_value js_take(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  direct_q *q = queue_of(t, false);
  item_t it;
  bool got = false;
  if (q) {
    pthread_mutex_lock(&q->mu);
    if (q->n) {
      it = q->ring[q->head];
      q->head = (q->head + 1) % DIRECT_CAP;
      q->n--;
      got = true;
    }
    pthread_mutex_unlock(&q->mu);
  }
  if (!got) return make_undefined(env);
  napi_value arr;
  NAPI_OK(env, napi_create_array_with_length(env, 2, &arr));
  NAPI_OK(env, napi_set_element(env, arr, 0, make_u64(env, it.session)));
  NAPI_OK(env, napi_set_element(env, arr, 1, make_u64(env, it.chunk)));
  return arr;
}

napi_value direct_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "tableDirectAttach", js_attach) ||
      !export_fn(env, exports, "tableDirectTake", js_take))
    return NULL;
  return exports;
}
