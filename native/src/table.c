#define _GNU_SOURCE 1 /* memfd_create */
#include "table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "direct.h"
#include "napi_util.h"

static const napi_type_tag TABLE_TAG = {0x6c617a79736e6170ULL, 0x7461626c65000001ULL};

#define HUGE_2M (2ull << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void table_ref(table_t *t) {
  atomic_fetch_add(&t->ref, 1);
}

/* The stages' memory: nstages chunk-sized buffers after the arena, rounded to a huge page. */
static uint64_t stage_region_len(const table_t *t) {
  return ((uint64_t)t->nstages * t->chunk_size + HUGE_2M - 1) & ~(HUGE_2M - 1);
}
static uint8_t *stage_mem(const table_t *t, uint32_t k) {
  return t->arena + t->arena_len + (uint64_t)k * t->chunk_size;
}

void table_unref(table_t *t) {
  if (atomic_fetch_sub(&t->ref, 1) != 1) return;
  munmap(t->arena, t->arena_len + stage_region_len(t));
  free(t->state), free(t->readers), free(t->discard);
  direct_free(t);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

uint64_t table_chunk_len(const table_t *t, uint32_t i) {
  uint64_t start = (uint64_t)i * t->chunk_size;
  uint64_t end = start + t->chunk_size;
  return (end > t->total_size ? t->total_size : end) - start;
}

/* Faults [p, p + len) in with one call (MADV_POPULATE_WRITE, Linux 5.14): the writer would otherwise
 * take one page fault per 4 KiB, each a costly exit in a VM (measured here: 0.68 → 0.48 ms per 512 KiB
 * load). EINVAL on older kernels: the writer's own faults then do it. */
static void populate(uint8_t *p, uint64_t len) {
  madvise(p, (len + 4095) & ~4095ull, MADV_POPULATE_WRITE);
}

/* Gives chunk i's memory back to the kernel. Called with mu held and no reader. */
static void discard_locked(table_t *t, uint32_t i) {
  uint64_t off = (uint64_t)i * t->chunk_size;
  uint64_t len = (table_chunk_len(t, i) + 4095) & ~4095ull;
  madvise(t->arena + off, len, MADV_DONTNEED); /* cannot fail on a valid private anonymous range */
  t->discard[i] = 0;
}

/* The stage (index) in state st that holds chunk i, or -1. Called with mu held. At most one stage is
 * STAGED or FILLING for a chunk (the chunk's state is then STAGED or FILLING); DRAINING ones may be
 * several. */
static int stage_of_locked(const table_t *t, uint32_t i, uint8_t st) {
  for (uint32_t k = 0; k < t->nstages; k++)
    if (t->stages[k].st == st && t->stages[k].chunk == i) return (int)k;
  return -1;
}

int table_acquire(table_t *t, uint32_t i, const uint8_t **data) {
  pthread_mutex_lock(&t->mu);
  int st = t->state[i];
  if (st == CHUNK_RESIDENT) {
    t->readers[i]++;
    *data = t->arena + (uint64_t)i * t->chunk_size;
  } else if (st == CHUNK_STAGED) {
    /* Served from the stage even when evicted meanwhile: the bytes are verified and still there. */
    int k = stage_of_locked(t, i, STAGE_STAGED);
    t->stages[k].readers++;
    t->stages[k].uses++;
    *data = stage_mem(t, (uint32_t)k);
    st = CHUNK_RESIDENT;
  }
  pthread_mutex_unlock(&t->mu);
  return st == CHUNK_FILLING ? CHUNK_ABSENT : st;
}

void table_release(table_t *t, uint32_t i, const uint8_t *data) {
  pthread_mutex_lock(&t->mu);
  if (data >= t->arena + t->arena_len) {
    stage_t *g = &t->stages[(uint64_t)(data - (t->arena + t->arena_len)) / t->chunk_size];
    if (--g->readers == 0 && g->st == STAGE_DRAINING) g->st = STAGE_FREE;
  } else if (--t->readers[i] == 0 && t->discard[i])
    discard_locked(t, i);
  pthread_mutex_unlock(&t->mu);
}

/* A staged chunk leaves the resident count (evicted, or zeroed by the manifest): it stays readable from
 * its stage until settled, and is then absent. False when it had left it already. Called with mu held. */
static bool unstage_locked(table_t *t, uint32_t i) {
  stage_t *g = &t->stages[stage_of_locked(t, i, STAGE_STAGED)];
  if (g->evicted) return false;
  g->evicted = true;
  t->resident_bytes -= table_chunk_len(t, i);
  t->resident_chunks--;
  return true;
}

/* Leaves RESIDENT for another state: the memory goes back now, or when the last reader leaves. */
static void drop_resident_locked(table_t *t, uint32_t i) {
  t->resident_bytes -= table_chunk_len(t, i);
  t->resident_chunks--;
  if (t->readers[i])
    t->discard[i] = 1;
  else
    discard_locked(t, i);
}

static void table_finalize(napi_env env, void *data, void *hint) {
  table_unref(data);
}

table_t *table_from_js(napi_env env, napi_value v) {
  bool ok = false;
  void *p = NULL;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_external || napi_check_object_type_tag(env, v, &TABLE_TAG, &ok) != napi_ok || !ok ||
      napi_get_value_external(env, v, &p) != napi_ok) {
    throw_arg(env, "table must be a handle returned by tableCreate()");
    return NULL;
  }
  return p;
}

static bool arg_chunk(napi_env env, table_t *t, napi_value v, uint32_t *i) {
  if (!arg_u32(env, v, "chunkIndex", i)) return false;
  if (*i >= t->nchunks) {
    throw_arg(env, "chunkIndex must be below %u, received %u", t->nchunks, *i);
    return false;
  }
  return true;
}

static napi_value wrap(napi_env env, table_t *t);

/* tableCreate(totalSize, chunkSize) */
static napi_value js_create(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  uint64_t total, cs;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    throw_arg(env, "tableCreate(totalSize, chunkSize[, hugePages])");
    return NULL;
  }
  if (!arg_u64(env, argv[0], "totalSize", &total) || !arg_u64(env, argv[1], "chunkSize", &cs)) return NULL;
  /* hugePages: JS decides (runtime/memory-tier.ts arenaHugePages); absent, only whole-huge-page chunks. */
  int huge = -1;
  napi_valuetype ht = napi_undefined;
  if (argc > 2) napi_typeof(env, argv[2], &ht);
  if (ht == napi_boolean) {
    bool b = false;
    napi_get_value_bool(env, argv[2], &b);
    huge = b;
  } else if (ht != napi_undefined) {
    throw_arg(env, "hugePages must be a boolean");
    return NULL;
  }
  if (cs == 0 || (cs & (cs - 1)) != 0 || cs < 4096) {
    throw_arg(env, "chunkSize must be a power of two >= 4096, received %llu", (unsigned long long)cs);
    return NULL;
  }
  /* Not (total + cs - 1) / cs: that wraps for totals near 2^64. */
  uint64_t n = total / cs + (total % cs != 0);
  if (total == 0 || n > UINT32_MAX) {
    throw_arg(env, "totalSize must be > 0 and at most 2^32 chunks, received %llu", (unsigned long long)total);
    return NULL;
  }
  table_t *t = calloc(1, sizeof *t);
  if (t) {
    t->state = calloc(n, 1);
    t->readers = calloc(n, sizeof *t->readers);
    t->discard = calloc(n, 1);
  }
  /* Over-reserve by 2 MiB to align the arena on a huge-page boundary, then trim. */
  uint64_t len = (total + HUGE_2M - 1) & ~(HUGE_2M - 1);
  /* Stages: enough for two loaders to each fill one while others settle, within 32 MiB of memory. */
  uint64_t nst = (32ull << 20) / cs;
  nst = nst > TABLE_MAX_STAGES ? TABLE_MAX_STAGES : nst < 2 ? 2 : nst;
  if (nst > n) nst = n;
  if (t) t->nstages = (uint32_t)nst, t->chunk_size = cs;
  uint64_t map = t ? len + stage_region_len(t) : 0;
  uint8_t *raw = MAP_FAILED;
  if (t && t->state && t->readers && t->discard)
    raw =
        mmap(NULL, map + HUGE_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    int e = t && t->state && t->readers && t->discard ? errno : ENOMEM;
    if (t) free(t->state), free(t->readers), free(t->discard);
    free(t);
    throw_errno(env, e, e == ENOMEM ? "calloc" : "mmap(chunk arena)");
    return NULL;
  }
  uint8_t *arena = (uint8_t *)(((uintptr_t)raw + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
  if (arena > raw) munmap(raw, (uint64_t)(arena - raw));
  if (raw + map + HUGE_2M > arena + map) munmap(arena + map, (uint64_t)(raw + map + HUGE_2M - (arena + map)));
  /* Huge pages by default only where a chunk is whole huge pages. With smaller chunks one resident chunk
   * can make the kernel (or khugepaged, which collapses a 2 MiB range around even one present page) back
   * a whole 2 MiB: real memory up to 2 MiB / chunk size times the memory budget. Explicitly off then,
   * because THP "always" would do the same without being asked. The caller may ask otherwise (when the
   * budget holds the whole arena, that cost is bounded by the arena). The stages, after the arena, get
   * the same advice. EINVAL: THP compiled out. */
  bool want = huge < 0 ? cs >= HUGE_2M : huge == 1;
  madvise(arena, map, want ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  t->arena = arena;
  t->arena_len = len;
  atomic_init(&t->ref, 1);
  pthread_mutex_init(&t->mu, NULL);
  t->nchunks = (uint32_t)n;
  t->chunk_size = cs;
  t->total_size = total;
  return wrap(env, t);
}

/* A JS handle on t, owning one reference (dropped by its finalizer). */
static napi_value wrap(napi_env env, table_t *t) {
  napi_value ext;
  if (napi_create_external(env, t, table_finalize, NULL, &ext) != napi_ok ||
      napi_type_tag_object(env, ext, &TABLE_TAG) != napi_ok) {
    table_unref(t);
    napi_throw_error(env, "LAZYSNAP_NATIVE", "napi_create_external failed");
    return NULL;
  }
  return ext;
}

/* tablePut(table, i, bytes): copies the bytes in; the length must be the chunk's exact length. */
static napi_value js_put(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint32_t i;
  uint8_t *data;
  size_t len;
  if (!get_args(env, info, 3, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i) || !arg_bytes(env, argv[2], "bytes", &data, &len)) return NULL;
  uint64_t want = table_chunk_len(t, i);
  if (len != want) {
    throw_arg(env, "bytes for chunk %u must be %llu bytes long, received %zu", i, (unsigned long long)want,
              len);
    return NULL;
  }
  /* A copy into the arena, not a reference to the JS buffer: a fault thread may read it at any
   * time, and a V8 buffer can only be released from the JS thread. Chunks are content-addressed,
   * so chunk i's bytes never change within a table: a put on a resident chunk has nothing to do.
   * put / evict / setZero all run on the JS thread; only fault threads (readers) race with them. */
  pthread_mutex_lock(&t->mu);
  int st = t->state[i];
  if (st == CHUNK_STAGED) {
    /* The bytes are in its stage, verified; evicted meanwhile, it is resident again. */
    stage_t *g = &t->stages[stage_of_locked(t, i, STAGE_STAGED)];
    if (g->evicted) {
      g->evicted = false;
      t->resident_bytes += len;
      t->resident_chunks++;
    }
  }
  if (st == CHUNK_RESIDENT || st == CHUNK_STAGED) {
    pthread_mutex_unlock(&t->mu);
    return make_undefined(env);
  }
  if (st == CHUNK_ZERO) t->zero_chunks--;
  t->discard[i] = 0; /* evicted but still being read: the bytes are there, and identical */
  t->state[i] = CHUNK_FILLING;
  pthread_mutex_unlock(&t->mu);
  memcpy(t->arena + (uint64_t)i * t->chunk_size, data, len);
  pthread_mutex_lock(&t->mu);
  t->state[i] = CHUNK_RESIDENT;
  t->resident_bytes += len;
  t->resident_chunks++;
  pthread_mutex_unlock(&t->mu);
  return make_undefined(env);
}

/* tableSetZero(table, i): chunk i reads as zeros (the manifest says so); faults never reach JS. */
static napi_value js_set_zero(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t i;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i)) return NULL;
  pthread_mutex_lock(&t->mu);
  if (t->state[i] == CHUNK_RESIDENT) drop_resident_locked(t, i);
  if (t->state[i] == CHUNK_STAGED) unstage_locked(t, i); /* its settle then leaves the slot empty */
  if (t->state[i] != CHUNK_ZERO) t->zero_chunks++;
  t->state[i] = CHUNK_ZERO;
  pthread_mutex_unlock(&t->mu);
  return make_undefined(env);
}

/* tableMarkZero(table, flags: Uint8Array(nchunks)): bulk form of setZero for a manifest's zero map. */
static napi_value js_mark_zero(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint8_t *flags;
  size_t len;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_bytes(env, argv[1], "flags", &flags, &len)) return NULL;
  if (len != t->nchunks) {
    throw_arg(env, "flags must have one byte per chunk (%u), received %zu", t->nchunks, len);
    return NULL;
  }
  pthread_mutex_lock(&t->mu);
  for (uint32_t i = 0; i < t->nchunks; i++) {
    if (flags[i] && t->state[i] == CHUNK_ABSENT) {
      t->state[i] = CHUNK_ZERO;
      t->zero_chunks++;
    }
  }
  pthread_mutex_unlock(&t->mu);
  return make_undefined(env);
}

/* tableEvict(table, i) → bytes freed. A fault thread copying the chunk keeps its memory until done. */
static napi_value js_evict(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t i;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i)) return NULL;
  uint64_t freed = 0;
  pthread_mutex_lock(&t->mu);
  if (t->state[i] == CHUNK_RESIDENT) {
    freed = table_chunk_len(t, i);
    drop_resident_locked(t, i);
    t->state[i] = CHUNK_ABSENT;
  } else if (t->state[i] == CHUNK_STAGED && unstage_locked(t, i)) {
    /* Absent once settled (tableSettle): until then the stage still serves it, and no one may fill it. */
    freed = table_chunk_len(t, i);
  }
  pthread_mutex_unlock(&t->mu);
  return make_u64(env, freed);
}

/* tableStageUses(table, i) → how many times staged chunk i was read from its stage (each install and
 * each fault served from it), -1 when it is not staged: JS admits a chunk that more sessions used. */
static napi_value js_stage_uses(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t i;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i)) return NULL;
  pthread_mutex_lock(&t->mu);
  int k = t->state[i] == CHUNK_STAGED ? stage_of_locked(t, i, STAGE_STAGED) : -1;
  int32_t uses = k < 0 ? -1 : (int32_t)t->stages[k].uses;
  pthread_mutex_unlock(&t->mu);
  return make_i32(env, uses);
}

static napi_value js_state(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t i;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i)) return NULL;
  pthread_mutex_lock(&t->mu);
  int st = t->state[i];
  if (st == CHUNK_FILLING) st = CHUNK_ABSENT;
  if (st == CHUNK_STAGED)
    st = t->stages[stage_of_locked(t, i, STAGE_STAGED)].evicted ? CHUNK_ABSENT : CHUNK_RESIDENT;
  pthread_mutex_unlock(&t->mu);
  return make_i32(env, st);
}

/* tableFilling(table, chunk) → whether a thread is loading the chunk into the table now (reserved, not yet
 * committed): state() says absent then, and a second load would only find it busy. */
static napi_value js_filling(napi_env env, napi_callback_info info) {
  napi_value argv[2], b;
  uint32_t i;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i)) return NULL;
  pthread_mutex_lock(&t->mu);
  bool filling = t->state[i] == CHUNK_FILLING;
  pthread_mutex_unlock(&t->mu);
  napi_get_boolean(env, filling, &b);
  return b;
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  napi_value argv[1], o;
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  pthread_mutex_lock(&t->mu);
  uint64_t rb = t->resident_bytes, rc = t->resident_chunks, zc = t->zero_chunks, staged = 0, busy = 0,
           misses = t->stage_misses;
  for (uint32_t k = 0; k < t->nstages; k++) {
    staged += t->stages[k].st == STAGE_STAGED;
    busy += t->stages[k].st != STAGE_FREE;
  }
  pthread_mutex_unlock(&t->mu);
  NAPI_OK(env, napi_create_object(env, &o));
  set_named(env, o, "chunks", make_u64(env, t->nchunks));
  set_named(env, o, "chunkSize", make_u64(env, t->chunk_size));
  set_named(env, o, "totalSize", make_u64(env, t->total_size));
  set_named(env, o, "residentBytes", make_u64(env, rb));
  set_named(env, o, "residentChunks", make_u64(env, rc));
  set_named(env, o, "zeroChunks", make_u64(env, zc));
  set_named(env, o, "stages", make_u64(env, t->nstages));
  set_named(env, o, "stagedChunks", make_u64(env, staged));
  set_named(env, o, "busyStages", make_u64(env, busy));
  set_named(env, o, "stageMisses", make_u64(env, misses));
  /* Where the arena is, to find it in /proc/self/smaps (its huge-page advice, its resident size). */
  set_named(env, o, "arenaAddress", make_bigint(env, (uint64_t)(uintptr_t)t->arena));
  set_named(env, o, "arenaBytes", make_u64(env, t->arena_len));
  return o;
}

/* ---- sharing with worker threads ------------------------------------------------------------------
 * A napi handle belongs to the thread that made it, but the table itself is process memory: a worker
 * thread that decodes chunks opens the same table by id (tableOpen) and writes a chunk's bytes straight
 * into its slot of the arena. The registry holds one reference per shared table until tableUnshare. */

#define REG_MAX 256
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static table_t *reg[REG_MAX];
static uint64_t reg_next = 1;

/* tableShare(table) → id (a number): other threads of this process may now open it. */
static napi_value js_share(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  pthread_mutex_lock(&reg_mu);
  if (!t->shared_id) {
    int slot = -1;
    for (int i = 0; i < REG_MAX && slot < 0; i++)
      if (!reg[i]) slot = i;
    if (slot < 0) {
      pthread_mutex_unlock(&reg_mu);
      throw_errno(env, ENFILE, "tableShare (too many shared tables)");
      return NULL;
    }
    table_ref(t);
    reg[slot] = t;
    t->shared_id = reg_next++;
  }
  uint64_t id = t->shared_id;
  pthread_mutex_unlock(&reg_mu);
  return make_u64(env, id);
}

/* tableUnshare(table): no new thread may open it (those that did keep their handles). */
static napi_value js_unshare(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  table_t *drop = NULL;
  pthread_mutex_lock(&reg_mu);
  for (int i = 0; i < REG_MAX; i++)
    if (reg[i] == t) reg[i] = NULL, drop = t;
  t->shared_id = 0;
  pthread_mutex_unlock(&reg_mu);
  if (drop) table_unref(drop);
  return make_undefined(env);
}

/* tableOpen(id) → a handle of this thread on a shared table. */
static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t id;
  if (!get_args(env, info, 1, argv, NULL) || !arg_u64(env, argv[0], "id", &id)) return NULL;
  table_t *t = NULL;
  pthread_mutex_lock(&reg_mu);
  for (int i = 0; i < REG_MAX && !t; i++)
    if (reg[i] && reg[i]->shared_id == id) t = reg[i];
  if (t) table_ref(t);
  pthread_mutex_unlock(&reg_mu);
  if (!t) {
    throw_arg(env, "no shared table has id %llu", (unsigned long long)id);
    return NULL;
  }
  return wrap(env, t);
}

static void arena_finalize(napi_env env, void *data, void *hint) {
  table_unref(hint);
}

/* tableArena(table) → an ArrayBuffer over the whole arena (chunk i at i * chunkSize) and the stages
 * after it. Writing is allowed only at an offset tableReserve returned, until tableCommit; reading only
 * at an offset tablePin returned, until tableUnpin. The mapping lives as long as the buffer (it holds a
 * table reference): misuse can read zeros or stale bytes, never memory that is not the arena. */
static napi_value js_arena(napi_env env, napi_callback_info info) {
  napi_value argv[1], ab;
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  table_ref(t);
  if (napi_create_external_arraybuffer(env, t->arena, t->arena_len + stage_region_len(t), arena_finalize, t,
                                       &ab) != napi_ok) {
    table_unref(t);
    throw_errno(env, ENOMEM, "napi_create_external_arraybuffer");
    return NULL;
  }
  return ab;
}

/* tableReserve(table, i, stage) → the offset in tableArena's buffer where the caller now writes chunk i's
 * bytes (no one else fills it, no fault thread reads it until tableCommit), or -1 when chunk i is zero,
 * resident or already being filled. With stage, the bytes go to a free stage when there is one (the
 * caller then calls tableSettle after the commit); else, and without stage, to the chunk's own slot. */
static napi_value js_reserve(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint32_t i;
  bool want_stage;
  if (!get_args(env, info, 3, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i) || !arg_bool(env, argv[2], "stage", &want_stage)) return NULL;
  int k = -1;
  pthread_mutex_lock(&t->mu);
  bool ok = t->state[i] == CHUNK_ABSENT && !t->readers[i];
  if (ok) {
    t->state[i] = CHUNK_FILLING;
    t->discard[i] = 0;
    for (uint32_t j = 0; want_stage && k < 0 && j < t->nstages; j++)
      if (t->stages[j].st == STAGE_FREE) k = (int)j;
    if (k >= 0)
      t->stages[k] = (stage_t){.st = STAGE_FILLING, .chunk = i};
    else if (want_stage)
      t->stage_misses++;
  }
  pthread_mutex_unlock(&t->mu);
  if (!ok) return make_i32(env, -1);
  if (k >= 0) return make_u64(env, (uint64_t)(stage_mem(t, (uint32_t)k) - t->arena));
  populate(t->arena + (uint64_t)i * t->chunk_size, table_chunk_len(t, i));
  return make_u64(env, (uint64_t)i * t->chunk_size);
}

/* tableCommit(table, i, ok): a reserved chunk's bytes are complete and verified (resident from now on),
 * or they are not (absent again; the memory goes back). */
static napi_value js_commit(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint32_t i;
  bool ok;
  if (!get_args(env, info, 3, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i) || !arg_bool(env, argv[2], "ok", &ok)) return NULL;
  pthread_mutex_lock(&t->mu);
  if (t->state[i] != CHUNK_FILLING) {
    pthread_mutex_unlock(&t->mu);
    throw_arg(env, "chunk %u was not reserved", i);
    return NULL;
  }
  int k = stage_of_locked(t, i, STAGE_FILLING);
  if (ok) {
    /* Staged: readable from now on (from the stage) and counted as resident, as JS sees it. */
    t->state[i] = k >= 0 ? CHUNK_STAGED : CHUNK_RESIDENT;
    if (k >= 0) t->stages[k].st = STAGE_STAGED;
    t->resident_bytes += table_chunk_len(t, i);
    t->resident_chunks++;
  } else {
    t->state[i] = CHUNK_ABSENT;
    if (k >= 0)
      t->stages[k].st = STAGE_FREE; /* FILLING had no reader; the slot was never written */
    else
      discard_locked(t, i);
  }
  pthread_mutex_unlock(&t->mu);
  return make_undefined(env);
}

/* Copies up to max more bytes of staged chunk i from its stage to its arena slot (populated first); when
 * all are there, chunk i is resident in its slot (absent if it was evicted or zeroed meanwhile) and the
 * stage is free once its last reader is done. Returns the bytes still to copy: 0 once settled, or when
 * chunk i is not staged. Any thread may call it: one copies at a time, another is told what remains. */
static uint64_t settle(table_t *t, uint32_t i, uint64_t max) {
  uint64_t len = table_chunk_len(t, i);
  pthread_mutex_lock(&t->mu);
  int k = stage_of_locked(t, i, STAGE_STAGED);
  stage_t *g = k >= 0 ? &t->stages[k] : NULL;
  if (!g || g->settling) {
    /* Being copied by another thread: not done as far as this caller knows. */
    uint64_t left = !g ? 0 : g->settled < len ? len - g->settled : 1;
    pthread_mutex_unlock(&t->mu);
    return left;
  }
  uint64_t done = g->settled;
  bool copy = !g->evicted && done < len;
  g->settling = copy;
  pthread_mutex_unlock(&t->mu);
  /* The slot is the settler's alone while the chunk is staged: reserve refuses it, readers get the
   * stage, put and evict only change the counts. */
  uint8_t *slot = t->arena + (uint64_t)i * t->chunk_size;
  if (copy) {
    uint64_t n = len - done < max ? len - done : max;
    populate(slot + done, n);
    memcpy(slot + done, stage_mem(t, (uint32_t)k) + done, n);
    done += n;
  }
  pthread_mutex_lock(&t->mu);
  g->settling = false;
  g->settled = done;
  if (!g->evicted && done < len) {
    pthread_mutex_unlock(&t->mu);
    return len - done;
  }
  if (g->evicted) {
    if (t->state[i] == CHUNK_STAGED) t->state[i] = CHUNK_ABSENT;
    discard_locked(t, i); /* no arena reader: the chunk was never resident in its slot */
  } else
    t->state[i] = CHUNK_RESIDENT;
  g->st = g->readers ? STAGE_DRAINING : STAGE_FREE;
  pthread_mutex_unlock(&t->mu);
  return 0;
}

/* tableSettle(table, i, maxBytes) → bytes still to copy (settle above), in slices so that the loader
 * that staged the chunk can serve the next load between them. */
static napi_value js_settle(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint32_t i;
  uint64_t max;
  if (!get_args(env, info, 3, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i) || !arg_u64(env, argv[2], "maxBytes", &max)) return NULL;
  if (max == 0 || max % 4096) {
    throw_arg(env, "maxBytes must be a positive multiple of 4096, received %llu", (unsigned long long)max);
    return NULL;
  }
  return make_u64(env, settle(t, i, max));
}

/* tableSettleAll(table) → chunks settled: every staged chunk no thread is copying, whole. For the stages
 * of a loader thread that stopped before settling them: staged for ever, a chunk evicted meanwhile
 * could never be loaded again, and the stage would be lost to the pool. */
static napi_value js_settle_all(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  uint32_t n = 0;
  for (uint32_t k = 0; k < t->nstages; k++) {
    pthread_mutex_lock(&t->mu);
    bool mine = t->stages[k].st == STAGE_STAGED && !t->stages[k].settling;
    uint32_t i = t->stages[k].chunk;
    pthread_mutex_unlock(&t->mu);
    if (mine && settle(t, i, t->chunk_size) == 0) n++;
  }
  return make_u64(env, n);
}

/* tableWarmStages(table): touches every stage once as a user store and once as a kernel read (a write
 * of it to a memfd), so that the first chunk loaded into one, and the first UFFDIO_COPY from it, do not
 * pay those first accesses (the exits described in table.h) on a fault's path. Cheap elsewhere: a few
 * MiB once per table. Best effort: a failure only leaves the stages cold. */
static napi_value js_warm_stages(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t) return NULL;
  int fd = memfd_create("lazysnap-warm-stages", MFD_CLOEXEC);
  for (uint32_t k = 0; k < t->nstages; k++) {
    pthread_mutex_lock(&t->mu);
    bool free_ = t->stages[k].st == STAGE_FREE;
    if (free_) t->stages[k] = (stage_t){.st = STAGE_FILLING, .chunk = UINT32_MAX}; /* held meanwhile */
    pthread_mutex_unlock(&t->mu);
    if (!free_) continue;
    uint8_t *m = stage_mem(t, k);
    populate(m, t->chunk_size);
    memset(m, 0, t->chunk_size);
    if (fd >= 0 && pwrite(fd, m, t->chunk_size, 0) < 0) {
      /* nothing to do: the kernel-read half stays cold */
    }
    pthread_mutex_lock(&t->mu);
    t->stages[k].st = STAGE_FREE;
    pthread_mutex_unlock(&t->mu);
  }
  if (fd >= 0) close(fd);
  return make_undefined(env);
}

/* tablePin(table, i) → the offset in tableArena's buffer of resident chunk i's bytes (its slot or its
 * stage), which stay there until tableUnpin(table, i, offset) whatever evicts it meanwhile (the memory
 * goes back at the unpin); -1 when it is not resident. */
static napi_value js_pin(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t i;
  if (!get_args(env, info, 2, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i)) return NULL;
  const uint8_t *data = NULL;
  if (table_acquire(t, i, &data) != CHUNK_RESIDENT) return make_i32(env, -1);
  return make_u64(env, (uint64_t)(data - t->arena));
}

static napi_value js_unpin(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint32_t i;
  uint64_t off;
  if (!get_args(env, info, 3, argv, NULL)) return NULL;
  table_t *t = table_from_js(env, argv[0]);
  if (!t || !arg_chunk(env, t, argv[1], &i) || !arg_u64(env, argv[2], "offset", &off)) return NULL;
  pthread_mutex_lock(&t->mu);
  bool held;
  if (off == (uint64_t)i * t->chunk_size)
    held = t->readers[i] > 0;
  else {
    uint64_t k = (off - t->arena_len) / t->chunk_size;
    held = off >= t->arena_len && (off - t->arena_len) % t->chunk_size == 0 && k < t->nstages &&
           t->stages[k].st != STAGE_FREE && t->stages[k].chunk == i && t->stages[k].readers > 0;
  }
  pthread_mutex_unlock(&t->mu);
  if (!held) {
    throw_arg(env, "chunk %u is not pinned at offset %llu", i, (unsigned long long)off);
    return NULL;
  }
  table_release(t, i, t->arena + off);
  return make_undefined(env);
}

napi_value table_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "tableCreate", js_create) || !export_fn(env, exports, "tablePut", js_put) ||
      !export_fn(env, exports, "tableSetZero", js_set_zero) ||
      !export_fn(env, exports, "tableMarkZero", js_mark_zero) ||
      !export_fn(env, exports, "tableEvict", js_evict) || !export_fn(env, exports, "tableState", js_state) ||
      !export_fn(env, exports, "tableFilling", js_filling) ||
      !export_fn(env, exports, "tableStats", js_stats) || !export_fn(env, exports, "tableShare", js_share) ||
      !export_fn(env, exports, "tableUnshare", js_unshare) ||
      !export_fn(env, exports, "tableOpen", js_open) || !export_fn(env, exports, "tableArena", js_arena) ||
      !export_fn(env, exports, "tableReserve", js_reserve) ||
      !export_fn(env, exports, "tableCommit", js_commit) || !export_fn(env, exports, "tablePin", js_pin) ||
      !export_fn(env, exports, "tableSettle", js_settle) ||
      !export_fn(env, exports, "tableStageUses", js_stage_uses) ||
      !export_fn(env, exports, "tableSettleAll", js_settle_all) ||
      !export_fn(env, exports, "tableWarmStages", js_warm_stages) ||
      !export_fn(env, exports, "tableUnpin", js_unpin))
    return NULL;
  return exports;
}
