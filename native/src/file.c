/* fileDataExtents(fd) → [[start, end], ...]: the data extents of a (sparse) file via
 * lseek(SEEK_DATA / SEEK_HOLE), which Node does not expose. Firecracker writes diff snapshots as
 * sparse files whose holes are the pages unchanged since the parent. Filesystems without hole
 * support report the whole file as one extent, which is correct, only slower. */
#include <errno.h>
#include <unistd.h>

#include "napi_util.h"

static napi_value js_extents(napi_env env, napi_callback_info info) {
  napi_value argv[1], arr;
  int fd;
  if (!get_args(env, info, 1, argv, NULL) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  off_t end = lseek(fd, 0, SEEK_END);
  if (end < 0) return throw_errno(env, errno, "lseek(SEEK_END)"), NULL;
  NAPI_OK(env, napi_create_array(env, &arr));
  uint32_t n = 0;
  off_t pos = 0;
  while (pos < end) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* no data after pos */
      return throw_errno(env, errno, "lseek(SEEK_DATA)"), NULL;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return throw_errno(env, errno, "lseek(SEEK_HOLE)"), NULL;
    napi_value pair;
    napi_create_array_with_length(env, 2, &pair);
    napi_set_element(env, pair, 0, make_u64(env, (uint64_t)data));
    napi_set_element(env, pair, 1, make_u64(env, (uint64_t)hole));
    napi_set_element(env, arr, n++, pair);
    pos = hole;
  }
  return arr;
}

napi_value file_init(napi_env env, napi_value exports) {
  return export_fn(env, exports, "fileDataExtents", js_extents) ? exports : NULL;
}
