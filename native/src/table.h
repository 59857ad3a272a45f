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
#include <stdint.h>

enum { CHUNK_ABSENT = 0, CHUNK_ZERO = 1, CHUNK_RESIDENT = 2, CHUNK_FILLING = 3 };

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
} table_t;

void table_ref(table_t *t);
void table_unref(table_t *t);
/* State of chunk i. For CHUNK_RESIDENT, *data points at its bytes, which stay valid and unchanged
 * until table_release(t, i): the caller must release. */
int table_acquire(table_t *t, uint32_t i, const uint8_t **data);
void table_release(table_t *t, uint32_t i);
uint64_t table_chunk_len(const table_t *t, uint32_t i);
/* Unwraps a JS table handle (throws and returns NULL if v is not one). */
table_t *table_from_js(napi_env env, napi_value v);
napi_value table_init(napi_env env, napi_value exports);

#endif
