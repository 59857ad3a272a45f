/* Passing descriptors over Unix sockets (SCM_RIGHTS), shared by the socket and process modules. */
#ifndef LAZYSNAP_SOCK_H
#define LAZYSNAP_SOCK_H

#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

/* SCM_RIGHTS carries at most 253 descriptors per message (SCM_MAX_FD). */
#define MAX_PASSED_FDS 253

/* Reads a JS array of at most MAX_PASSED_FDS descriptors into fdv; false with a pending TypeError. */
bool arg_fd_array(napi_env env, napi_value v, int *fdv, uint32_t *nf);

/* One sendmsg of data with fdv in SCM_RIGHTS, to `to` (NULL: the connected peer); EINTR retried.
 * Returns what sendmsg returns, errno set on -1. */
ssize_t send_with_fds(int s, const struct sockaddr_un *to, socklen_t tolen, const void *data, size_t len,
                      const int *fdv, uint32_t nf);

#endif
