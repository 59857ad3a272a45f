/* A table's direct demand queue (direct.c): a fault thread hands a chunk it found absent straight to the
 * chunk loader threads, which JS told beforehand how to load that snapshot's chunks, instead of through
 * the event loop. JS decides whether a session uses it (sessionCreate's `direct`) and what a loader does with
 * an item; this only carries (session, chunk) pairs and wakes a loader. */
#ifndef LAZYSNAP_DIRECT_H
#define LAZYSNAP_DIRECT_H

#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>

struct table;

/* Fault thread: queues (session, chunk) and wakes a loader. False when no loader is attached or the
 * queue is full: the caller asks JS instead, as without it. Never blocks on anything but the queue's
 * short lock, never allocates. */
bool direct_push(struct table *t, uint64_t session, uint32_t chunk);
/* The table is being freed: its queue too (every waker is gone by then: each holds a table reference). */
void direct_free(struct table *t);
napi_value direct_init(napi_env env, napi_value exports);

#endif
