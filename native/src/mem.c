/* Memory helpers the SDK and tests need: anonymous/hugetlb mappings, madvise, reading another
 * process's memory (process_vm_readv, for live-process snapshots), signals, and ArrayBuffer views of
 * native memory (for in-process restore from a worker thread). */
#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "napi_util.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

/* mmapAnonymous(length, hugetlb) → address (bigint). MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, the
 * mapping Firecracker uses for guest memory. */
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t len;
  bool huge;
  if (!get_args(env, info, 2, argv, NULL) || !arg_u64(env, argv[0], "length", &len) ||
      !arg_bool(env, argv[1], "hugetlb", &huge))
    return NULL;
  uint64_t align = huge ? 2097152 : 4096;
  if (len == 0 || len % align) {
    throw_arg(env, "length must be a positive multiple of %llu, received %llu", (unsigned long long)align,
              (unsigned long long)len);
    return NULL;
  }
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) return throw_errno(env, errno, "mmap"), NULL;
  return make_bigint(env, (uint64_t)(uintptr_t)p);
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t addr, len;
  if (!get_args(env, info, 2, argv, NULL) || !arg_u64(env, argv[0], "address", &addr) ||
      !arg_u64(env, argv[1], "length", &len))
    return NULL;
  if (munmap((void *)(uintptr_t)addr, len) != 0) return throw_errno(env, errno, "munmap"), NULL;
  return make_undefined(env);
}

static napi_value js_madvise(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint64_t addr, len;
  int32_t advice;
  if (!get_args(env, info, 3, argv, NULL) || !arg_u64(env, argv[0], "address", &addr) ||
      !arg_u64(env, argv[1], "length", &len) || !arg_i32(env, argv[2], "advice", &advice))
    return NULL;
  if (madvise((void *)(uintptr_t)addr, len, advice) != 0) return throw_errno(env, errno, "madvise"), NULL;
  return make_undefined(env);
}

/* processVmRead(pid, remoteAddress, target) → bytes read into target (from its start). Stops early
 * only at an unreadable page (the count tells where); errors only if nothing could be read. */
static napi_value js_pvm_read(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t pid;
  uint64_t raddr;
  uint8_t *dst;
  size_t len;
  if (!get_args(env, info, 3, argv, NULL) || !arg_i32(env, argv[0], "pid", &pid) ||
      !arg_u64(env, argv[1], "remoteAddress", &raddr) || !arg_bytes(env, argv[2], "target", &dst, &len))
    return NULL;
  size_t done = 0;
  while (done < len) {
    struct iovec l = {.iov_base = dst + done, .iov_len = len - done};
    struct iovec r = {.iov_base = (void *)(uintptr_t)(raddr + done), .iov_len = len - done};
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done == 0) return throw_errno(env, errno, "process_vm_readv"), NULL;
      break;
    }
    if (n == 0) break;
    done += (size_t)n;
  }
  return make_u64(env, done);
}

static napi_value js_kill(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, sig;
  if (!get_args(env, info, 2, argv, NULL) || !arg_i32(env, argv[0], "pid", &pid) ||
      !arg_i32(env, argv[1], "signal", &sig))
    return NULL;
  if (pid <= 0) {
    throw_arg(env, "pid must be a positive process id, received %d (process groups are not signalled)", pid);
    return NULL;
  }
  if (kill(pid, sig) != 0) return throw_errno(env, errno, "kill"), NULL;
  return make_undefined(env);
}

/* arrayBufferAt(address, length) → an ArrayBuffer over existing memory, which the caller keeps
 * mapped for the buffer's lifetime. Touching it from the thread that serves its faults deadlocks:
 * use it from a worker, or for memory no uffd covers. */
static napi_value js_ab_at(napi_env env, napi_callback_info info) {
  napi_value argv[2], ab;
  uint64_t addr, len;
  if (!get_args(env, info, 2, argv, NULL) || !arg_u64(env, argv[0], "address", &addr) ||
      !arg_u64(env, argv[1], "length", &len))
    return NULL;
  if (addr == 0 || len == 0) {
    throw_arg(env, "address and length must be non-zero");
    return NULL;
  }
  NAPI_OK(env, napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, len, NULL, NULL, &ab));
  return ab;
}

/* addressOf(arrayBufferView) → the address of its first byte, for registering JS-owned memory. */
static napi_value js_addr_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint8_t *p;
  size_t len;
  if (!get_args(env, info, 1, argv, NULL) || !arg_bytes(env, argv[0], "view", &p, &len)) return NULL;
  return make_bigint(env, (uint64_t)(uintptr_t)p);
}

/* touchAsync(address) → Promise<number>: reads the byte at address on a thread of libuv's pool and
 * resolves with it. A user-mode access from a thread that serves nothing: on memory a uffd of this
 * process covers, it is a fault that thread sleeps in until the session installs the page (or the uffd
 * is closed), while the JS thread goes on serving it. The address must be mapped (the caller's). */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  uint64_t addr;
  uint8_t value;
} touch_t;

static void touch_execute(napi_env env, void *data) {
  touch_t *t = data;
  t->value = *(volatile const uint8_t *)(uintptr_t)t->addr;
}

static void touch_complete(napi_env env, napi_status status, void *data) {
  touch_t *t = data;
  napi_value v;
  if (status == napi_ok && napi_create_uint32(env, t->value, &v) == napi_ok)
    napi_resolve_deferred(env, t->deferred, v);
  else {
    napi_value msg, err;
    napi_create_string_utf8(env, "touchAsync was cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, t->deferred, err);
  }
  napi_delete_async_work(env, t->work);
  free(t);
}

static napi_value js_touch_async(napi_env env, napi_callback_info info) {
  napi_value argv[1], promise, name;
  uint64_t addr;
  if (!get_args(env, info, 1, argv, NULL) || !arg_u64(env, argv[0], "address", &addr)) return NULL;
  if (addr == 0) {
    throw_arg(env, "address must be non-zero");
    return NULL;
  }
  NAPI_OK(env, napi_create_string_utf8(env, "lazysnap:touch", NAPI_AUTO_LENGTH, &name));
  touch_t *t = calloc(1, sizeof *t);
  if (!t) return throw_errno(env, ENOMEM, "calloc"), NULL;
  t->addr = addr;
  if (napi_create_promise(env, &t->deferred, &promise) != napi_ok ||
      napi_create_async_work(env, NULL, name, touch_execute, touch_complete, t, &t->work) != napi_ok ||
      napi_queue_async_work(env, t->work) != napi_ok) {
    /* The promise stays pending for ever: nobody holds it but the throw below. */
    if (t->work) napi_delete_async_work(env, t->work);
    free(t);
    napi_throw_error(env, "LAZYSNAP_NATIVE", "napi_create_async_work failed");
    return NULL;
  }
  return promise;
}

napi_value mem_init(napi_env env, napi_value exports) {
  if (!export_fn(env, exports, "mmapAnonymous", js_mmap) || !export_fn(env, exports, "munmap", js_munmap) ||
      !export_fn(env, exports, "madvise", js_madvise) ||
      !export_fn(env, exports, "processVmRead", js_pvm_read) || !export_fn(env, exports, "kill", js_kill) ||
      !export_fn(env, exports, "arrayBufferAt", js_ab_at) ||
      !export_fn(env, exports, "addressOf", js_addr_of) ||
      !export_fn(env, exports, "touchAsync", js_touch_async) ||
      !export_int(env, exports, "MADV_DONTNEED", MADV_DONTNEED) ||
      !export_int(env, exports, "MADV_REMOVE", MADV_REMOVE) ||
      !export_int(env, exports, "MADV_WILLNEED", MADV_WILLNEED) ||
      !export_int(env, exports, "PAGE_SIZE", sysconf(_SC_PAGESIZE)))
    return NULL;
  return exports;
}
