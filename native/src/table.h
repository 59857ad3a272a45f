/* The native chunk table: per snapshot, which chunks are known-zero and which have their bytes
 * resident in memory, so the fault thread can resolve a fault without entering JS. Shared by every
 * session restoring that snapshot. What becomes resident and what is evicted is decided in JS
 * (the cache budget is policy); this file only stores.
 * Concurrency: JS puts/evicts on the main thread while fault threads read. A short mutex guards the
 * state and pointer arrays; the bytes are refcounted so an eviction never frees bytes that a fault
 * thread is copying from. */
#ifndef LAZYSNAP_TABLE_H
#define LAZYSNAP_TABLE_H

#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* CHUNK_STAGED: verified bytes in a stage buffer (below), not yet copied to the arena slot; readers are
 * given the stage. JS sees it as resident. */
enum { CHUNK_ABSENT = 0, CHUNK_ZERO = 1, CHUNK_RESIDENT = 2, CHUNK_FILLING = 3, CHUNK_STAGED = 4 };

/* A stage: a reused chunk-sized buffer a loader decodes into, which the fault threads install from,
 * and which is copied to the chunk's arena slot afterwards (tableSettle). Why: a slot is memory the
 * process has never touched, and on a host with shadow page tables (a PVM guest) the first user store
 * and the first kernel read of each of its 4 KiB pages cost an exit each, 17x the time of the same work
 * on a buffer already mapped (bench/results/host-memory.json). Staging takes that cost off the path of
 * the fault that waits for the chunk. */
enum { STAGE_FREE = 0, STAGE_FILLING, STAGE_STAGED, STAGE_DRAINING };
#define TABLE_MAX_STAGES 8
typedef struct {
  uint8_t st;       /* STAGE_*, guarded by mu */
  bool evicted;     /* evicted while staged: absent, not resident, once settled */
  uint32_t chunk;   /* the chunk it holds (not STAGE_FREE) */
  uint32_t readers; /* fault threads or pins copying from it; DRAINING frees it at the last release */
  uint64_t settled; /* bytes copied to the arena slot so far */
  bool settling;    /* a thread is copying (outside mu): another settle of it waits its turn */
  uint32_t uses;    /* acquisitions while staged (installs, faults served from it), for admission */
} stage_t;

typedef struct table {
  atomic_uint ref; /* the JS handle + one per session */
  pthread_mutex_t mu;
  uint32_t nchunks;
  uint64_t chunk_size;
  uint64_t total_size;
  /* Chunk i's bytes live at arena + i * chunk_size: one reservation of the snapshot's size
   * (MAP_NORESERVE: only resident chunks cost memory), 2 MiB aligned and advised for transparent
   * huge pages. UFFDIO_COPY reads its source through the page tables; with 4 KiB source pages a
   * nested VM pays a two-dimensional page walk per page, which measured 3x slower than huge pages
   * (bench/ANALYSIS.md). */
  uint8_t *arena;
  uint64_t arena_len;
  uint8_t *state;          /* CHUNK_*, guarded by mu */
  uint32_t *readers;       /* fault threads copying from chunk i, guarded by mu */
  uint8_t *discard;        /* evicted while read: release the memory when the last reader leaves */
  uint64_t resident_bytes; /* guarded by mu */
  uint32_t resident_chunks;
  uint32_t zero_chunks;
  uint64_t shared_id; /* registry id while shared with other threads (tableShare), 0 otherwise */
  /* The stages live right after the arena, in the same mapping (so tableArena's view covers them):
   * stage k at arena + arena_len + k * chunk_size. */
  uint32_t nstages;
  stage_t stages[TABLE_MAX_STAGES];
  uint64_t stage_misses; /* staged reservations that found no stage free (went to the slot); under mu */
  /* The direct demand queue (direct.h), created under mu when the first loader attaches, freed with the
   * table; read without mu by the fault threads. */
  _Atomic(struct direct_q *) direct;
} table_t;

void table_ref(table_t *t);
void table_unref(table_t *t);
/* State of chunk i (CHUNK_ABSENT, _ZERO or _RESIDENT; a staged chunk is resident). For CHUNK_RESIDENT,
 * *data points at its bytes (in the arena or in a stage), which stay valid and unchanged until
 * table_release(t, i, *data): the caller must release. */
int table_acquire(table_t *t, uint32_t i, const uint8_t **data);
void table_release(table_t *t, uint32_t i, const uint8_t *data);
uint64_t table_chunk_len(const table_t *t, uint32_t i);
/* Unwraps a JS table handle (throws and returns NULL if v is not one). */
table_t *table_from_js(napi_env env, napi_value v);
napi_value table_init(napi_env env, napi_value exports);

#endif
