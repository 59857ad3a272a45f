/* lazysnap's native addon: userfaultfd, the fault thread, and the few syscalls Node does not expose.
 * Mechanism only; every decision (what to fetch, whom to trust, when to fail closed) is in TypeScript. */
#include <node_api.h>

#include "direct.h"
#include "napi_util.h"
#include "session.h"
#include "table.h"

napi_value sock_init(napi_env env, napi_value exports);
napi_value mem_init(napi_env env, napi_value exports);
napi_value watch_init(napi_env env, napi_value exports);
napi_value file_init(napi_env env, napi_value exports);
napi_value uffd_napi_init(napi_env env, napi_value exports);
napi_value proc_init(napi_env env, napi_value exports);

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  if (!uffd_napi_init(env, exports) || !table_init(env, exports) || !direct_init(env, exports) ||
      !session_init(env, exports) || !sock_init(env, exports) || !mem_init(env, exports) ||
      !watch_init(env, exports) || !file_init(env, exports) || !proc_init(env, exports))
    return NULL;
  return exports;
}
