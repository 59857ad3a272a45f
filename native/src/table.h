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

enum { CHUNK_ABSENT = 0, CHUNK_ZERO = 1, CHUNK_RESIDENT = 2 };

typedef struct blob {
  atomic_uint ref;
  uint64_t len;
  uint8_t data[];
} blob_t;

typedef struct table {
  atomic_uint ref; /* the JS handle + one per session */
  pthread_mutex_t mu;
  uint32_t nchunks;
  uint64_t chunk_size;
  uint64_t total_size;
  uint8_t *state;         /* guarded by mu */
  blob_t **blobs;         /* guarded by mu */
  uint64_t resident_bytes; /* guarded by mu */
  uint32_t resident_chunks;
  uint32_t zero_chunks;
} table_t;

void table_ref(table_t *t);
void table_unref(table_t *t);
void blob_unref(blob_t *b);
/* State of chunk i; for CHUNK_RESIDENT *blob is set and referenced: the caller must blob_unref it. */
int table_get(table_t *t, uint32_t i, blob_t **blob);
uint64_t table_chunk_len(const table_t *t, uint32_t i);
/* Unwraps a JS table handle (throws and returns NULL if v is not one). */
table_t *table_from_js(napi_env env, napi_value v);
napi_value table_init(napi_env env, napi_value exports);

#endif
