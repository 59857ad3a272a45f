{
  "variables": {
    "lazysnap_sources": [
      "src/addon.c",
      "src/direct.c",
      "src/napi_util.c",
      "src/uffd.c",
      "src/uffd_napi.c",
      "src/table.c",
      "src/session.c",
      "src/session_fill.c",
      "src/session_thread.c",
      "src/session_events.c",
      "src/session_state.c",
      "src/sock.c",
      "src/mem.c",
      "src/file.c",
      "src/watch.c",
      "src/proc.c"
    ],
    "lazysnap_cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fvisibility=hidden", "-pthread"]
  },
  "targets": [
    {
      "target_name": "lazysnap",
      "sources": ["<@(lazysnap_sources)"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags": ["<@(lazysnap_cflags)"],
      "ldflags": ["-pthread"]
    },
    {
      "target_name": "lazysnap_test",
      "sources": ["<@(lazysnap_sources)"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "LAZYSNAP_FAULT_INJECTION"],
      "cflags": ["<@(lazysnap_cflags)"],
      "ldflags": ["-pthread"]
    }
  ]
}
