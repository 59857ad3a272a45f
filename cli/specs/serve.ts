import type { CommandSpec } from '../option-spec.js';

/**
 * `lazysnap serve`. Defaults marked `shown` are applied by the runtime (resolveServeOptions,
 * Supervisor): test/unit/cli-docs.test.ts checks each against it.
 */
export const serveSpec = {
  name: 'serve',
  summary: 'serve a snapshot to Firecracker (UFFD backend) or processes, faulting pages in on demand',
  synopsis: ['serve --store URL [--store URL ...] --id ID --socket PATH [options]'],
  description: `Serves a snapshot's memory over the Firecracker UFFD handshake: point Firecracker's
PUT /snapshot/load at it with {"mem_backend": {"backend_type": "Uffd", "backend_path": PATH}}.
Pages are faulted in on demand from the stores (the first that delivers verified bytes wins); zero
chunks are mapped without a fetch. Runs until SIGTERM or SIGINT, then drains live sessions.

Runs as a supervisor and a worker process: the worker (handshakes, origins, decoding, fault threads)
can crash or be killed without losing a VM: the supervisor holds every session's descriptors and
hands them to a new worker, which serves on. An upgrade hands everything to a new serve (--take-over)
or, under systemd, through its descriptor store (--fd-store): see docs/RELIABILITY.md.`,
  options: {
    store: {
      type: 'string',
      multiple: true,
      value: 'URL',
      shown: 'required',
      api: 'stores',
      meaning:
        'a store: a directory, `file://`, `s3://bucket/prefix` or `http(s)://`. Repeat it for an ordered list; the first that delivers verified bytes wins',
    },
    id: { type: 'string', value: 'ID', shown: 'required', api: 'id', meaning: 'the snapshot to serve' },
    socket: {
      type: 'string',
      value: 'PATH',
      shown: 'required',
      api: 'socketPath',
      meaning:
        'the Unix socket to create, 0600 (at most 107 bytes). Its directory is created 0700 if missing; an existing one must be owned by this user or root and writable by nobody else (nor any directory above it, short of the sticky bit), else `LAZYSNAP_INSECURE_PATH`. A stale socket is replaced, any other file refused',
    },
    'cache-dir': {
      type: 'string',
      value: 'DIR',
      shown: 'none',
      api: 'cacheDir',
      meaning:
        'host disk cache of verified, uncompressed chunks, shared by the serve processes of the host (files 0600)',
    },
    'trace-dir': {
      type: 'string',
      value: 'DIR',
      shown: 'none',
      api: 'traceDir',
      meaning:
        "write each session's trace to `DIR/<restoreId>.trace.json` (0600; DIR created 0700): every fault that waited, where its time went, every fetch. `lazysnap trace FILE` draws it",
    },
    'cache-budget': {
      type: 'string',
      value: 'SIZE',
      shown: '`8GiB`',
      api: 'cacheBudgetBytes',
      meaning:
        'disk cache budget: least recently used entries are evicted past it (may run over by in-flight writes)',
    },
    'memory-budget': {
      type: 'string',
      value: 'SIZE',
      shown: '`1GiB`',
      api: 'memoryBudgetBytes',
      meaning:
        'resident chunk bytes for the native fault thread, shared by all sessions; when it holds the whole snapshot, the chunk table is on transparent huge pages. A chunk a demand reads from a local store or the disk cache is kept from its second read on (docs/DESIGN.md, "Admission")',
    },
    'fail-timeout': {
      type: 'string',
      value: 'DUR',
      default: '10s',
      api: 'failTimeoutMs',
      meaning:
        'how long a fault may wait for a verified chunk before the session fails closed (see `--fail-closed`)',
    },
    'fail-closed': {
      type: 'string',
      value: 'MODE',
      default: 'auto',
      choices: ['auto', 'poison', 'kill'],
      api: 'failClosed',
      meaning:
        '`poison` the chunk (the faulting thread gets SIGBUS; Linux 6.6+), `kill` the peer with SIGKILL, or `auto` (poison where the kernel can, else kill)',
    },
    'attempt-timeout': {
      type: 'string',
      value: 'DUR',
      default: '5s',
      api: 'attemptTimeoutMs',
      meaning: 'per origin request',
    },
    retries: {
      type: 'string',
      value: 'N',
      shown: '`2`',
      api: 'retries',
      meaning:
        "retries (0-10) of a retryable origin error (5xx, 429, timeouts, resets) on the same origin, per pass over the origins; a fault's fetch makes passes until `--fail-timeout` while some origin fails transiently",
    },
    'handshake-timeout': {
      type: 'string',
      value: 'DUR',
      default: '5s',
      api: 'handshakeTimeoutMs',
      meaning: 'a connection that sends no handshake in this time is closed',
    },
    'shutdown-grace': {
      type: 'string',
      value: 'DUR',
      default: '30s',
      api: 'shutdownGraceMs',
      meaning: 'on SIGTERM, how long live sessions may go on',
    },
    prefetch: {
      type: 'string',
      value: 'MODE',
      default: 'auto',
      choices: ['auto', 'off', 'record', 'replay'],
      api: 'prefetch',
      meaning:
        "`record`: save each session's first-touch order to `profiles/ID` (merged with earlier recordings); `replay`: fetch the profile's chunks, in order, ahead of the faults; `off`; `auto`: replay whenever a profile exists",
    },
    'profile-store': {
      type: 'string',
      value: 'URL',
      shown: 'the stores',
      api: 'profileStore',
      meaning:
        'where profiles are read first and saved (a directory or `s3://`). Without it they are read from the stores in order and saved to the first writable one; with only HTTP origins (read-only), `--prefetch record` needs this flag',
    },
    fill: {
      type: 'boolean',
      default: false,
      api: 'fill',
      meaning:
        'after replay, fetch every other missing chunk in the background, continuing right after the latest demand fault',
    },
    readahead: {
      type: 'string',
      value: 'SIZE',
      shown: '`16MiB`',
      api: 'readaheadBytes',
      meaning:
        'while a peer reads forward, fetch up to this much ahead of it into memory, in a window that doubles with each one it gets through; `0` turns it off',
    },
    'prefetch-window': {
      type: 'string',
      value: 'N',
      shown: '`256`',
      api: 'prefetchWindow',
      meaning: 'prefetches (replay, fill) a session queues ahead, 1-1024',
    },
    'fetch-concurrency': {
      type: 'string',
      value: 'N',
      shown: '`16`',
      api: 'fetchConcurrency',
      meaning: 'demand fetches in flight for the whole server, 1-1024',
    },
    'prefetch-concurrency': {
      type: 'string',
      value: 'N',
      shown: '`128`',
      api: 'prefetchConcurrency',
      meaning:
        "the most prefetches in flight for the whole server, 1-1024, in slots of their own (demand faults never wait for them); how many run adapts to the origin's bandwidth × latency. Connections to each origin cover both concurrencies",
    },
    'no-hedge': {
      type: 'boolean',
      default: false,
      meaning:
        'do not hedge slow demand requests (by default a request to a remote origin not answered by its recent p95 gets a second one; the first body wins)',
    },
    'take-over': {
      type: 'boolean',
      default: false,
      meaning:
        "take every session over from the serve running on `--socket` (an upgrade in place: start the new version with this flag; the old one exits once the new one serves). Refused, with the old one serving on, when either cannot read the other's session state (`LAZYSNAP_HANDOVER_REFUSED`)",
    },
    'fd-store': {
      type: 'boolean',
      default: false,
      meaning:
        "keep what a successor needs in systemd's file descriptor store (the unit's `FileDescriptorStoreMax=`), adopt what it hands back at start; on SIGTERM while systemd restarts the unit, hand sessions over instead of draining them",
    },
    'restart-burst': {
      type: 'string',
      value: 'N',
      shown: '`10`',
      meaning:
        'worker restarts (0-1000) within a minute made at once; beyond them the delay doubles from 100 ms to 5 s',
    },
    standby: {
      type: 'boolean',
      default: false,
      meaning:
        'keep a second worker ready (snapshot open, warmed up): a crash is then answered in milliseconds instead of a process start (about half a second), for about 95 MiB more resident memory',
    },
    'no-supervisor': {
      type: 'boolean',
      default: false,
      meaning:
        'run the worker in this process: no crash isolation (a crash of serve hangs every VM it serves at its next missing page); refused with `--take-over`, `--fd-store`, `--standby` or `--restart-burst`',
    },
    'metrics-port': {
      type: 'string',
      value: 'N',
      shown: 'off',
      api: 'metricsPort',
      meaning: 'serve Prometheus metrics at `/metrics` on this port',
    },
    'metrics-host': {
      type: 'string',
      value: 'HOST',
      shown: '`127.0.0.1`',
      api: 'metricsHost',
      meaning: 'address for metrics: `0.0.0.0` to be scraped from other hosts',
    },
    's3-endpoint': {
      type: 'string',
      value: 'URL',
      shown: '`$AWS_ENDPOINT_URL_S3`',
      api: 's3Endpoint',
      meaning: 'S3-compatible endpoint for `s3://` stores (path-style)',
    },
    'allow-uid': {
      type: 'string',
      multiple: true,
      value: 'UID',
      shown: 'any',
      api: 'allowUids',
      group: 'security',
      meaning:
        'only serve peers with this uid, read with `SO_PEERCRED` (repeatable). Others are closed unread, with a warning line naming their uid and pid, and counted in `lazysnap_peers_refused_total`',
    },
    'socket-group': {
      type: 'string',
      value: 'GID',
      shown: 'none',
      api: 'socketGroup',
      group: 'security',
      meaning:
        "let this group's members connect (a Firecracker running as another uid): the socket becomes 0660 and the directories serve creates 0710, of that group. Pair it with `--allow-uid`",
    },
    'verify-key': {
      type: 'string',
      value: 'FILE',
      shown: 'off',
      api: 'verifyKey',
      group: 'security',
      meaning:
        'Ed25519 public key (PEM): serve only a manifest with a valid detached signature by it (`manifests/ID.json.sig`, made by `snapshot --sign-key`). An unsigned or wrongly signed manifest is refused: one error line, exit 1 (`LAZYSNAP_BAD_SIGNATURE`)',
    },
  },
  notes: `Encrypted snapshots (snapshot --encrypt) are served with their key, from LAZYSNAP_CHUNK_KEY (64
hex digits or base64 of 32 bytes) or LAZYSNAP_CHUNK_KEY_FILE (a file holding it; keeps it out of
the environment). LAZYSNAP_CHUNK_KEY_ID restricts it to one key id. A missing or wrong key is
refused before the socket is created (LAZYSNAP_KEY_UNAVAILABLE, LAZYSNAP_WRONG_KEY); an object
that fails authentication is treated like corrupt bytes (next store, then fail closed). Keys are
never logged.`,
} as const satisfies CommandSpec;
