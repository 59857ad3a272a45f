/* A session: one userfaultfd (one restored VM or process) served by one native thread.
 *
 * The thread reads uffd events and resolves on its own every fault it can: pages removed by
 * UFFD_EVENT_REMOVE (zero), chunks the table knows are zero (UFFDIO_ZEROPAGE, or a zero copy on
 * hugetlbfs), chunks whose bytes are resident in the table (whole-chunk UFFDIO_COPY). Only the first
 * fault on an absent chunk crosses into JS, batched through a thread-safe function; JS fetches the
 * chunk, puts it in the table and asks for an install (or the loader thread that verified it does, for
 * the sessions JS named: sessionInstallShared), which this thread performs (whole chunk,
 * skipping present pages, waking every waiter). All uffd ioctls of a session happen on this one
 * thread, so event processing and installs are ordered: a REMOVE is always marked before the next
 * copy, and a removed page never receives snapshot bytes (PROTOCOL.md, "UFFD_EVENT_REMOVE").
 * No policy here: what to fetch, when to give up and how to fail closed are JS decisions; failures
 * reach JS typed (session_events.c) and runtime/native-failure.ts decides what each one means.
 *
 * The removed-page bitmap lives in a state region that can be handed to a successor (session_state.h):
 * created with `stateFd`, a session adopts its predecessor's state, re-applies the events it may have
 * read last, drains what is pending and wakes every region (docs/RELIABILITY.md, "Crash and upgrade"). */
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "napi_util.h"
#include "session_internal.h"

static const char *const STAT_NAMES[] = {
#define X(n) #n,
    STATS(X)
#undef X
};

static const napi_type_tag SESSION_TAG = {0x6c617a79736e6170ULL, 0x73657373696f6e01ULL};

static void session_unref(session_t *s) {
  if (atomic_fetch_sub(&s->ref, 1) != 1) return;
  free(s->need.v), free(s->installed.v), free(s->poisoned.v), free(s->missing.v), free(s->touched.v);
  free(s->claimed.v);
  free(s->need.t), free(s->installed.t), free(s->claimed.t);
  free(s->q), free(s->regions), free(s->zero_page);
  pthread_mutex_destroy(&s->qmu);
  pthread_mutex_destroy(&s->omu);
  free(s);
}

/* Stops and joins the fault thread once. Afterwards nothing calls into the thread-safe function. */
static void stop_thread(session_t *s) {
  if (!s->started || s->joined) return;
  atomic_store(&s->stop, true);
  uint64_t one = 1;
  (void)!write(s->efd, &one, sizeof one);
  pthread_join(s->thread, NULL);
  s->joined = true;
}

/* Node finalizes the thread-safe function when we release it, and also on its own when the
 * environment is torn down (a worker terminated with a live session), possibly before the session's
 * own finalizer runs. After this returns Node frees the function: so the thread is joined first (it
 * may be about to call it), and the handle is forgotten so that close() does not release it again. */
static void tsfn_finalize(napi_env env, void *data, void *hint) {
  session_t *s = data;
  stop_thread(s);
  s->tsfn = NULL;
  session_unref(s);
}

/* ---- JS bindings ------------------------------------------------------------------------------ */

static session_t *session_from_js(napi_env env, napi_value v) {
  bool ok = false;
  void *p = NULL;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_external || napi_check_object_type_tag(env, v, &SESSION_TAG, &ok) != napi_ok || !ok ||
      napi_get_value_external(env, v, &p) != napi_ok) {
    throw_arg(env, "session must be a handle returned by sessionCreate()");
    return NULL;
  }
  return p;
}

/* ---- Sessions other threads may queue installs for ------------------------------------------------
 * A chunk loader thread verifies a chunk and commits it to the table; with this, it also queues the
 * install for the sessions JS named when it asked for the chunk, instead of the event loop doing so on
 * its next turn: one hop fewer between a fault and its page. What to install and for whom stays JS's
 * decision; the thread performs an install exactly as one JS queued (the table's bytes, verified). Ids
 * are never reused: the low bits name the slot, the rest count, so a stale id finds nothing. */
#define SREG_BITS 12
#define SREG_MAX  (1u << SREG_BITS)
static pthread_mutex_t sreg_mu = PTHREAD_MUTEX_INITIALIZER;
static session_t *sreg[SREG_MAX];
static uint64_t sreg_gen = 1;

/* Takes a session out of the registry: after this returns no other thread touches it through an id. */
static void session_unshare(session_t *s) {
  pthread_mutex_lock(&sreg_mu);
  uint64_t id = s->shared_id;
  if (id) {
    sreg[id & (SREG_MAX - 1)] = NULL;
    s->shared_id = 0;
    atomic_store(&s->direct_id, 0);
  }
  pthread_mutex_unlock(&sreg_mu);
  if (id) session_unref(s);
}

/* Puts a session in the registry (once): its id, or 0 when the registry is full. */
static uint64_t session_share(session_t *s) {
  pthread_mutex_lock(&sreg_mu);
  if (!s->shared_id) {
    uint32_t slot = SREG_MAX;
    for (uint32_t i = 0; i < SREG_MAX && slot == SREG_MAX; i++)
      if (!sreg[i]) slot = i;
    if (slot < SREG_MAX) {
      atomic_fetch_add(&s->ref, 1);
      sreg[slot] = s;
      s->shared_id = (sreg_gen++ << SREG_BITS) | slot;
    }
  }
  uint64_t id = s->shared_id;
  pthread_mutex_unlock(&sreg_mu);
  return id;
}

static void session_stop(session_t *s) {
  if (s->closed) return;
  session_unshare(s); /* first: a loader thread holding the registry lock may be queueing for it */
  s->closed = true;
  stop_thread(s);
  close(s->uffd);
  close(s->efd);
  state_close(&s->state);
  free(s->cstate), free(s->faults), free(s->work);
  s->cstate = NULL, s->faults = NULL, s->work = NULL;
  table_unref(s->table);
  s->table = NULL;
  if (s->tsfn) napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
}

static void session_finalize(napi_env env, void *data, void *hint) {
  session_t *s = data;
  session_stop(s);
  session_unref(s);
}

static bool parse_regions(napi_env env, napi_value arr, session_t *s) {
  bool is;
  uint32_t n;
  if (napi_is_array(env, arr, &is) != napi_ok || !is || napi_get_array_length(env, arr, &n) != napi_ok ||
      n == 0 || n > 1024) {
    throw_arg(env, "regions must be an array of 1 to 1024 {base, size, offset} objects");
    return false;
  }
  s->regions = calloc(n, sizeof *s->regions);
  if (!s->regions) {
    throw_errno(env, ENOMEM, "calloc");
    return false;
  }
  s->nregions = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value o, b, sz, off;
    region_t *r = &s->regions[i];
    napi_get_element(env, arr, i, &o);
    if (!prop(env, o, "base", &b) || !prop(env, o, "size", &sz) || !prop(env, o, "offset", &off)) {
      throw_arg(env, "regions[%u] must have base, size and offset", i);
      return false;
    }
    if (!arg_u64(env, b, "regions[].base", &r->base) || !arg_u64(env, sz, "regions[].size", &r->size) ||
        !arg_u64(env, off, "regions[].offset", &r->offset))
      return false;
    uint64_t m = s->page_size - 1;
    /* Memory safety, not policy: a copy reads table bytes at (offset - chunk start), so every region
     * must lie inside the snapshot and on page boundaries. */
    if (r->size == 0 || (r->base & m) || (r->size & m) || (r->offset & m) || r->offset > s->total_size ||
        r->size > s->total_size - r->offset || r->base + r->size < r->base) {
      throw_arg(env, "regions[%u] must be page-aligned, non-empty and inside the snapshot (%llu bytes)", i,
                (unsigned long long)s->total_size);
      return false;
    }
  }
  return true;
}

/* sessionCreate(uffd, {table, pageSize, regions}, onEvent) → handle. Takes ownership of uffd. */
static napi_value js_create(napi_env env, napi_callback_info info) {
  napi_value argv[3], v;
  int uffd;
  if (!get_args(env, info, 3, argv, NULL) || !arg_fd(env, argv[0], "uffd", &uffd)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) {
    throw_arg(env, "onEvent must be a function");
    return NULL;
  }
  if (!prop(env, argv[1], "table", &v)) {
    throw_arg(env, "options.table is required");
    return NULL;
  }
  table_t *table = table_from_js(env, v);
  if (!table) return NULL;
  uint64_t ps = 4096;
  if (prop(env, argv[1], "pageSize", &v) && !arg_u64(env, v, "pageSize", &ps)) return NULL;
  if (ps != 4096 && ps != 2097152) {
    throw_arg(env, "pageSize must be 4096 or 2097152, received %llu", (unsigned long long)ps);
    return NULL;
  }
  if (table->chunk_size % ps) {
    throw_arg(env, "the table's chunk size (%llu) must be a multiple of pageSize (%llu)",
              (unsigned long long)table->chunk_size, (unsigned long long)ps);
    return NULL;
  }
  if (table->total_size % ps) {
    throw_arg(env, "the snapshot size (%llu) must be a multiple of pageSize",
              (unsigned long long)table->total_size);
    return NULL;
  }
  session_t *s = calloc(1, sizeof *s);
  if (!s) {
    throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  atomic_init(&s->ref, 1);
  pthread_mutex_init(&s->qmu, NULL);
  pthread_mutex_init(&s->omu, NULL);
  s->uffd = -1;
  s->efd = -1;
  s->state.fd = -1;
  s->page_size = ps;
  s->created_ns = monotonic_ns();
  s->chunk_size = table->chunk_size;
  s->total_size = table->total_size;
  if (prop(env, argv[1], "reportTouches", &v) && !arg_bool(env, v, "reportTouches", &s->report_touches))
    goto fail;
  bool direct = false;
  if (prop(env, argv[1], "direct", &v) && !arg_bool(env, v, "direct", &direct)) goto fail;
  if (!prop(env, argv[1], "regions", &v)) {
    throw_arg(env, "options.regions is required");
    goto fail;
  }
  if (!parse_regions(env, v, s)) goto fail;
  int state_fd = -1;
  if (prop(env, argv[1], "stateFd", &v) && !arg_fd(env, v, "stateFd", &state_fd)) goto fail;
  s->nchunks = table->nchunks;
  s->cstate = calloc(table->nchunks, 1);
  s->faults = malloc(FAULTQ_CAP * sizeof *s->faults);
  if (ps != 4096) s->zero_page = aligned_alloc(4096, ps), s->zero_page && memset(s->zero_page, 0, ps);
  /* Outputs start with room for a burst, so growing them (on the thread, which can fail: then the
   * session fails closed) is rare. */
  size_t room = table->nchunks < 1024 ? table->nchunks : 1024;
  bool outs = true;
  u32vec *vecs[] = {&s->need, &s->installed, &s->poisoned, &s->missing, &s->touched, &s->claimed};
  for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++) {
    vecs[i]->v = malloc(room * sizeof(uint32_t));
    vecs[i]->cap = vecs[i]->v ? room : 0;
    outs = outs && vecs[i]->v;
  }
  s->need.t = malloc(room * sizeof(uint64_t));
  s->installed.t = malloc(room * sizeof(uint64_t));
  s->claimed.t = malloc(room * sizeof(uint64_t));
  outs = outs && s->need.t && s->installed.t && s->claimed.t;
  if (!s->cstate || !s->faults || !outs || (ps != 4096 && !s->zero_page)) {
    throw_errno(env, ENOMEM, "calloc");
    goto fail;
  }
  int sr = state_open(&s->state, state_fd, ps, table->chunk_size, table->total_size);
  if (sr) {
    throw_errno(env, -sr,
                sr == -EPROTO                    ? "adopt session state (unknown layout or version)"
                : sr == -EINVAL && state_fd >= 0 ? "adopt session state (another snapshot geometry)"
                                                 : "create session state (memfd)");
    goto fail;
  }
  if (s->state.adopted) {
    /* Chunks the predecessor installed whole are still there (a removed page among them reads zero
     * through the removed bitmap): no fetch, no copy again. */
    s->adopted = true;
    for (uint32_t c = 0; c < table->nchunks; c++)
      if (state_bit(s->state.installed, c)) s->cstate[c] = CS_INSTALLED;
  }
  /* Firecracker creates the uffd O_NONBLOCK; a client that did not would make read() block and the
   * thread deaf to close(). The flag lives on the shared open file description, which the client
   * never reads from, so setting it is invisible to the client. */
  int fl = fcntl(uffd, F_GETFL);
  if (fl < 0 || fcntl(uffd, F_SETFL, fl | O_NONBLOCK) < 0) {
    throw_errno(env, errno, "fcntl(uffd, O_NONBLOCK)");
    goto fail;
  }
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->efd < 0) {
    throw_errno(env, errno, "eventfd");
    goto fail;
  }
  napi_value name;
  napi_create_string_utf8(env, "lazysnap.session", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, s, tsfn_finalize, s, session_call_js,
                                      &s->tsfn) != napi_ok) {
    throw_errno(env, EAGAIN, "napi_create_threadsafe_function");
    goto fail;
  }
  atomic_fetch_add(&s->ref, 1); /* held by the tsfn until tsfn_finalize */
  s->table = table;
  table_ref(table);
  s->uffd = uffd;
#ifdef LAZYSNAP_FAULT_INJECTION
  /* Test builds only: LAZYSNAP_INJECT=<kind>:<after> arms every new session (see js_inject), so a
   * whole `serve` process started by a test can be made to fail where the kernel cannot be. */
  const char *inj = getenv("LAZYSNAP_INJECT");
  if (inj) {
    int after = 1;
    const char *colon = strchr(inj, ':');
    if (colon) after = atoi(colon + 1);
    int kind = !strncmp(inj, "event-read", 10)      ? FAIL_EVENT_READ
               : !strncmp(inj, "out-of-memory", 13) ? FAIL_OUT_OF_MEMORY
                                                    : 0;
    atomic_store(&s->inject_after, after < 1 ? 1 : after);
    atomic_store(&s->inject_kind, kind);
  }
#endif
  /* Direct from the first fault (direct.h): shared and switched on before the thread reads any. */
  if (direct) atomic_store(&s->direct_id, session_share(s));
  int err = pthread_create(&s->thread, NULL, session_thread_main, s);
  if (err) {
    s->uffd = -1; /* the caller keeps ownership when creation fails */
    session_stop(s);
    session_unref(s);
    throw_errno(env, err, "pthread_create");
    return NULL;
  }
  pthread_setname_np(s->thread, "lazysnap-uffd");
  s->started = true;
  napi_value ext;
  NAPI_OK(env, napi_create_external(env, s, session_finalize, NULL, &ext));
  NAPI_OK(env, napi_type_tag_object(env, ext, &SESSION_TAG));
  return ext;
fail:
  if (s->efd >= 0) close(s->efd);
  state_close(&s->state);
  free(s->cstate), free(s->faults), free(s->zero_page), free(s->regions);
  free(s->need.v), free(s->installed.v), free(s->poisoned.v), free(s->missing.v), free(s->touched.v);
  free(s->need.t), free(s->installed.t);
  pthread_mutex_destroy(&s->qmu), pthread_mutex_destroy(&s->omu);
  free(s);
  return NULL;
}

/* sessionInstall(session, chunk | Uint32Array) / sessionPoison(...): queue work for the thread. */
static napi_value push_commands(napi_env env, napi_callback_info info, uint32_t op) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  if (s->closed) {
    throw_errno(env, EBADF, "session closed");
    return NULL;
  }
  uint32_t one, *list = &one;
  size_t n = 1;
  bool is_ta = false;
  napi_is_typedarray(env, argv[1], &is_ta);
  if (is_ta) {
    napi_typedarray_type tt;
    void *p;
    napi_get_typedarray_info(env, argv[1], &tt, &n, &p, NULL, NULL);
    if (tt != napi_uint32_array) {
      throw_arg(env, "chunks must be a Uint32Array");
      return NULL;
    }
    list = p;
  } else if (!arg_u32(env, argv[1], "chunkIndex", &one)) {
    return NULL;
  }
  uint32_t nchunks = s->nchunks;
  for (size_t i = 0; i < n; i++) {
    if (list[i] >= nchunks) {
      throw_arg(env, "chunkIndex must be below %u, received %u", nchunks, list[i]);
      return NULL;
    }
  }
  pthread_mutex_lock(&s->qmu);
  for (size_t i = 0; i < n; i++) {
    if (!grow((void **)&s->q, s->nq, &s->capq, sizeof *s->q)) {
      /* Commands queued so far stay; the caller learns that the rest were not (and fails closed). */
      pthread_mutex_unlock(&s->qmu);
      throw_errno(env, ENOMEM, "queueing a session command");
      return NULL;
    }
    s->q[s->nq++] = (cmd_t){op, list[i]};
  }
  pthread_mutex_unlock(&s->qmu);
  uint64_t v = 1;
  if (write(s->efd, &v, sizeof v) < 0 && errno != EAGAIN) {
    throw_errno(env, errno, "write(eventfd)");
    return NULL;
  }
  return make_undefined(env);
}
static napi_value js_install(napi_env env, napi_callback_info info) {
  return push_commands(env, info, CMD_INSTALL);
}
static napi_value js_poison(napi_env env, napi_callback_info info) {
  return push_commands(env, info, CMD_POISON);
}
static napi_value js_wake(napi_env env, napi_callback_info info) {
  return push_commands(env, info, CMD_WAKE);
}

/* sessionStateFd(session) → a new descriptor of the session's state memfd (session_state.h), for a
 * supervisor to hold so that a successor can adopt the session. The caller owns and closes it. */
static napi_value js_state_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  if (s->closed) {
    throw_errno(env, EBADF, "session closed");
    return NULL;
  }
  int fd = fcntl(s->state.fd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) {
    throw_errno(env, errno, "fcntl(F_DUPFD_CLOEXEC)");
    return NULL;
  }
  return make_i32(env, fd);
}

#ifdef LAZYSNAP_FAULT_INJECTION
/* Test builds only (native/binding.gyp target lazysnap_test): sessionInject(session, kind, after) makes
 * the fault thread fail as the kernel or the allocator cannot be made to on purpose: kind 5 (event
 * read: read(uffd) returns EIO) or 7 (out of memory: an output cannot be recorded), after `after`
 * more opportunities. */
static napi_value js_inject(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t kind, after;
  if (!get_args(env, info, 3, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s || !arg_i32(env, argv[1], "kind", &kind) || !arg_i32(env, argv[2], "after", &after)) return NULL;
  if (kind != FAIL_EVENT_READ && kind != FAIL_OUT_OF_MEMORY) {
    throw_arg(env, "kind must be %d (event read) or %d (out of memory)", FAIL_EVENT_READ, FAIL_OUT_OF_MEMORY);
    return NULL;
  }
  atomic_store(&s->inject_after, after < 1 ? 1 : after);
  atomic_store(&s->inject_kind, kind);
  uint64_t one = 1;
  (void)!write(s->efd, &one, sizeof one);
  return make_undefined(env);
}
#endif

static napi_value js_stats(napi_env env, napi_callback_info info) {
  napi_value argv[1], o;
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  NAPI_OK(env, napi_create_object(env, &o));
  for (int i = 0; i < ST_COUNT; i++)
    set_named(env, o, STAT_NAMES[i], make_u64(env, atomic_load_explicit(&s->stats[i], memory_order_relaxed)));
  return o;
}

/* sessionShare(session) → id (a number): any thread of this process may queue installs for it. */
static napi_value js_share(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  if (s->closed) return throw_errno(env, EBADF, "session closed"), NULL;
  uint64_t id = session_share(s);
  if (!id) return throw_errno(env, ENFILE, "sessionShare (too many shared sessions)"), NULL;
  return make_u64(env, id);
}

/* sessionInstallShared(id, chunk) → whether an install was queued: from any thread. False for a
 * session that closed (or an id that never was) and a chunk out of range: nothing to do there. */
static napi_value js_install_shared(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t id;
  uint32_t chunk;
  if (!get_args(env, info, 2, argv, NULL) || !arg_u64(env, argv[0], "id", &id) ||
      !arg_u32(env, argv[1], "chunkIndex", &chunk))
    return NULL;
  bool queued = false;
  pthread_mutex_lock(&sreg_mu);
  session_t *s = sreg[id & (SREG_MAX - 1)];
  if (s && s->shared_id == id && chunk < s->nchunks) {
    pthread_mutex_lock(&s->qmu);
    if (grow((void **)&s->q, s->nq, &s->capq, sizeof *s->q)) {
      s->q[s->nq++] = (cmd_t){CMD_INSTALL, chunk};
      queued = true;
    }
    pthread_mutex_unlock(&s->qmu);
    uint64_t v = 1;
    if (queued) (void)!write(s->efd, &v, sizeof v); /* EAGAIN: the counter is full, the thread is awake */
  }
  pthread_mutex_unlock(&sreg_mu);
  napi_value b;
  napi_get_boolean(env, queued, &b);
  return b;
}

/* sessionDrain(session) → the outbox as an event object, now (what the thread-safe function would deliver
 * next): for a session about to close, so that reports the thread held back (direct.h: `claimed`,
 * `installed`) are not lost with it. */
static napi_value js_drain(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  if (s->closed) return make_undefined(env);
  napi_value o = session_take_event(env, s);
  return o ? o : make_undefined(env);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  session_t *s = session_from_js(env, argv[0]);
  if (!s) return NULL;
  session_stop(s);
  return make_undefined(env);
}

napi_value session_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "sessionCreate", js_create) ||
      !export_fn(env, exports, "sessionInstall", js_install) ||
      !export_fn(env, exports, "sessionShare", js_share) ||
      !export_fn(env, exports, "sessionInstallShared", js_install_shared) ||
      !export_fn(env, exports, "sessionDrain", js_drain) ||
      !export_fn(env, exports, "sessionPoison", js_poison) ||
      !export_fn(env, exports, "sessionWake", js_wake) ||
      !export_fn(env, exports, "sessionStateFd", js_state_fd) ||
#ifdef LAZYSNAP_FAULT_INJECTION
      !export_fn(env, exports, "sessionInject", js_inject) ||
      !export_int(env, exports, "FAULT_INJECTION", 1) ||
#endif
      !export_fn(env, exports, "sessionStats", js_stats) ||
      !export_fn(env, exports, "sessionClose", js_close))
    return NULL;
  return exports;
}
