#ifndef LAZYSNAP_SESSION_H
#define LAZYSNAP_SESSION_H
#include <node_api.h>
napi_value session_init(napi_env env, napi_value exports);
#endif
