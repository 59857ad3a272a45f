import { parseArgs } from 'node:util';

import { InvalidArgumentError } from '../../core/errors.js';
import { parseDuration, parseSize } from '../../core/units.js';
import type { ServeOptions } from '../../runtime/serve-options.js';
import { Supervisor } from '../../runtime/supervisor/supervisor.js';
import { verifyKey } from '../../store/signing.js';
import { intOption, readKeyFile, required, UsageError, type Io } from '../common.js';

export const usage = `usage: lazysnap serve --store URL [--store URL ...] --id ID --socket PATH [options]

Serves a snapshot's memory over the Firecracker UFFD handshake: point Firecracker's
PUT /snapshot/load at it with {"mem_backend": {"backend_type": "Uffd", "backend_path": PATH}}.
Pages are faulted in on demand from the stores (the first that delivers verified bytes wins); zero
chunks are mapped without a fetch. Runs until SIGTERM or SIGINT, then drains live sessions.

Runs as a supervisor and a worker process: the worker (handshakes, origins, decoding, fault threads)
can crash or be killed without losing a VM: the supervisor holds every session's descriptors and
hands them to a new worker, which serves on. An upgrade hands everything to a new serve (--take-over)
or, under systemd, through its descriptor store (--fd-store): see docs/RELIABILITY.md.

options:
  --store URL            a store (repeat for an ordered fallback list: directory, file://, s3://, http(s)://)
  --id ID                the snapshot to serve
  --socket PATH          the Unix socket to create, 0600. Its directory is created 0700 when missing;
                         one that exists must be owned by this user or root and writable by nobody
                         else (nor may any directory above it be, short of the sticky bit)
  --cache-dir DIR        host disk cache of verified chunks, shared by serve processes (default: none)
  --cache-budget SIZE    disk cache budget (default 8GiB)
  --memory-budget SIZE   resident chunk bytes shared by all sessions (default 1GiB)
  --fail-timeout DUR     a fault waits at most this long for a verified chunk before the session
                         fails closed (poison, else SIGKILL of the peer) (default 10s)
  --fail-closed MODE     auto (poison where the kernel can, else SIGKILL), poison, or kill (default auto)
  --attempt-timeout DUR  per origin request (default 5s)
  --retries N            retries of a retryable origin error per pass over the origins (default 2;
                         a fault's fetch makes passes until --fail-timeout)
  --handshake-timeout DUR  close connections that send no handshake (default 5s)
  --shutdown-grace DUR   on SIGTERM, how long live sessions may run (default 30s)
  --prefetch MODE        record: save each session's first-touch order to profiles/ID (merged);
                         replay: fetch the profile's chunks ahead of the faults; off; auto: replay
                         whenever a profile exists (default auto)
  --profile-store URL    where profiles are read first and saved (a directory or s3://). Default: read
                         from the stores in order, saved to the first writable one; with only HTTP
                         origins (read-only), record needs this flag
  --fill                 after replay, fetch every other missing chunk in the background
  --readahead SIZE       while a peer reads forward, fetch up to this much ahead of it into memory,
                         in a window that doubles with each one it gets through; 0 turns it off
                         (default 16MiB)
  --prefetch-window N    prefetches a session queues ahead (default 256)
  --fetch-concurrency N  demand fetches in flight for the whole server (default 16)
  --prefetch-concurrency N  the most prefetches in flight for the whole server, in slots of their own;
                         how many run adapts to the origin's bandwidth x latency (default 128).
                         Connections to each origin cover both (default: their sum)
  --no-hedge             do not hedge slow demand requests (by default a request to a remote origin not
                         answered by its recent p95 gets a second one; the first body wins)
  --take-over            take every session over from the serve running on --socket (an upgrade in
                         place: start the new version with this flag; the old one exits once the
                         new one serves). Refused, with the old one serving on, when either cannot
                         read the other's session state (LAZYSNAP_HANDOVER_REFUSED)
  --fd-store             keep what a successor needs in systemd's file descriptor store (the unit's
                         FileDescriptorStoreMax=), adopt what it hands back at start; on SIGTERM while
                         systemd restarts the unit, hand sessions over instead of draining them
  --restart-burst N      worker restarts within a minute made at once; beyond them the delay doubles
                         from 100ms to 5s (default 10)
  --standby              keep a second worker ready (snapshot open, warmed up): a crash is then answered
                         in milliseconds instead of a process start (about half a second), for about
                         95 MiB more resident memory
  --no-supervisor        run the worker in this process (no crash isolation: a crash of serve
                         hangs every VM it serves at its next missing page)
  --metrics-port N       serve Prometheus metrics on this port (default: off)
  --metrics-host HOST    address for metrics (default 127.0.0.1)
  --s3-endpoint URL      S3-compatible endpoint (also AWS_ENDPOINT_URL_S3)

security:
  --allow-uid UID        only serve peers with this uid, read with SO_PEERCRED (repeatable; default:
                         any). Others are closed unread, with a warning line naming their uid and
                         pid, and counted in lazysnap_peers_refused_total
  --socket-group GID     let this group's members connect (a Firecracker running as another uid):
                         the socket becomes 0660 and the directories serve creates 0710, of that
                         group. Pair it with --allow-uid
  --verify-key FILE      Ed25519 public key (PEM): serve only a manifest with a valid detached
                         signature by it (manifests/ID.json.sig, made by snapshot --sign-key). An
                         unsigned or wrongly signed manifest is refused: one error line, exit 1
                         (LAZYSNAP_BAD_SIGNATURE)

  Encrypted snapshots (snapshot --encrypt) are served with their key, from LAZYSNAP_CHUNK_KEY (64
  hex digits or base64 of 32 bytes) or LAZYSNAP_CHUNK_KEY_FILE (a file holding it; keeps it out of
  the environment). LAZYSNAP_CHUNK_KEY_ID restricts it to one key id. A missing or wrong key is
  refused before the socket is created (LAZYSNAP_KEY_UNAVAILABLE, LAZYSNAP_WRONG_KEY); an object
  that fails authentication is treated like corrupt bytes (next store, then fail closed). Keys are
  never logged.
`;

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      store: { type: 'string', multiple: true },
      id: { type: 'string' },
      socket: { type: 'string' },
      'cache-dir': { type: 'string' },
      'cache-budget': { type: 'string' },
      'memory-budget': { type: 'string' },
      'fail-timeout': { type: 'string', default: '10s' },
      'fail-closed': { type: 'string', default: 'auto' },
      'attempt-timeout': { type: 'string', default: '5s' },
      retries: { type: 'string' },
      'handshake-timeout': { type: 'string', default: '5s' },
      'shutdown-grace': { type: 'string', default: '30s' },
      'metrics-port': { type: 'string' },
      'metrics-host': { type: 'string' },
      'allow-uid': { type: 'string', multiple: true },
      'socket-group': { type: 'string' },
      'verify-key': { type: 'string' },
      's3-endpoint': { type: 'string' },
      prefetch: { type: 'string', default: 'auto' },
      fill: { type: 'boolean', default: false },
      readahead: { type: 'string' },
      'profile-store': { type: 'string' },
      'prefetch-window': { type: 'string' },
      'fetch-concurrency': { type: 'string' },
      'prefetch-concurrency': { type: 'string' },
      'no-hedge': { type: 'boolean', default: false },
      'take-over': { type: 'boolean', default: false },
      'fd-store': { type: 'boolean', default: false },
      'restart-burst': { type: 'string' },
      standby: { type: 'boolean', default: false },
      'no-supervisor': { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (!values.store?.length)
    throw new UsageError('--store is required (repeat it for an ordered fallback list)');
  if (!['auto', 'off', 'record', 'replay'].includes(values.prefetch))
    throw new InvalidArgumentError('--prefetch', 'auto, off, record or replay', values.prefetch);
  if (
    values.prefetch === 'record' &&
    !values['profile-store'] &&
    values.store.every((u) => /^https?:\/\//i.test(u))
  )
    throw new UsageError(
      '--prefetch record: every --store is a read-only HTTP origin, so the profile would have nowhere to go; ' +
        'add --profile-store DIR (or s3://bucket/prefix), or a writable --store',
    );
  const prefetchWindow = intOption('prefetch-window', values['prefetch-window'], 1, 1024);
  const fetchConcurrency = intOption('fetch-concurrency', values['fetch-concurrency'], 1, 1024);
  const prefetchConcurrency = intOption('prefetch-concurrency', values['prefetch-concurrency'], 1, 1024);
  const retries = intOption('retries', values.retries, 0, 10);
  const metricsPort = intOption('metrics-port', values['metrics-port'], 0, 65535);
  const socketGroup = intOption('socket-group', values['socket-group'], 0, 2 ** 32 - 2);
  const restartBurst = intOption('restart-burst', values['restart-burst'], 0, 1000);
  if (
    values['no-supervisor'] &&
    (values['take-over'] || values['fd-store'] || values.standby || restartBurst !== undefined)
  )
    throw new UsageError(
      '--take-over, --fd-store, --standby and --restart-burst need the supervisor: drop --no-supervisor',
    );
  const options: ServeOptions = {
    stores: values.store,
    id: required(values, 'id'),
    socketPath: required(values, 'socket'),
    ...(values['s3-endpoint'] ? { s3Endpoint: values['s3-endpoint'] } : {}),
    ...(values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {}),
    ...(values['cache-budget']
      ? { cacheBudgetBytes: parseSize(values['cache-budget'], '--cache-budget', { allowZero: true }) }
      : {}),
    ...(values['memory-budget']
      ? { memoryBudgetBytes: parseSize(values['memory-budget'], '--memory-budget', { allowZero: true }) }
      : {}),
    ...(values.readahead !== undefined
      ? { readaheadBytes: parseSize(values.readahead, '--readahead', { allowZero: true }) }
      : {}),
    ...(values['profile-store'] !== undefined ? { profileStore: values['profile-store'] } : {}),
    failClosed: values['fail-closed'] as 'auto',
    prefetch: values.prefetch as 'auto',
    fill: values.fill,
    hedge: !values['no-hedge'],
    ...(prefetchWindow !== undefined ? { prefetchWindow } : {}),
    ...(fetchConcurrency !== undefined ? { fetchConcurrency } : {}),
    ...(prefetchConcurrency !== undefined ? { prefetchConcurrency } : {}),
    failTimeoutMs: parseDuration(values['fail-timeout'], '--fail-timeout'),
    attemptTimeoutMs: parseDuration(values['attempt-timeout'], '--attempt-timeout'),
    handshakeTimeoutMs: parseDuration(values['handshake-timeout'], '--handshake-timeout'),
    shutdownGraceMs: parseDuration(values['shutdown-grace'], '--shutdown-grace'),
    ...(retries !== undefined ? { retries } : {}),
    ...(metricsPort !== undefined ? { metricsPort } : {}),
    ...(values['metrics-host'] ? { metricsHost: values['metrics-host'] } : {}),
    ...(values['allow-uid']
      ? { allowUids: values['allow-uid'].map((u) => intOption('allow-uid', u, 0, 2 ** 32 - 2)!) }
      : {}),
    ...(socketGroup !== undefined ? { socketGroup } : {}),
    ...(values['verify-key']
      ? { verifyKey: verifyKey(readKeyFile('verify-key', values['verify-key']), '--verify-key') }
      : {}),
  };
  const stopped = new Promise<void>((resolve) => {
    if (!signal) return;
    if (signal.aborted) resolve();
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
  if (values['no-supervisor']) {
    // Imported here: the supervisor process never loads the stores, the fetcher or the decoders.
    const { RestoreServer } = await import('../../runtime/restore-server.js');
    const server = await RestoreServer.start(options, signal);
    io.err(`lazysnap: serving ${values.id} on ${server.socketPath}${metricsNote(server.metricsPort)}\n`);
    await stopped;
    await server.close();
    return 0;
  }
  const sup = await Supervisor.start(
    {
      ...options,
      takeOver: values['take-over'],
      fdStore: values['fd-store'],
      standby: values.standby,
      ...(restartBurst !== undefined ? { restartBurst } : {}),
    },
    signal,
  );
  io.err(`lazysnap: serving ${values.id} on ${sup.socketPath}${metricsNote(sup.metricsPort)}\n`);
  // Ends on a signal (drain, or a handover to systemd's next instance), on a handover to a successor
  // (--take-over), or when no worker can serve (done rejects: exit 1 with its error).
  await Promise.race([stopped.then(() => sup.stop()), sup.done]);
  await sup.done;
  return 0;
}

function metricsNote(port: number | undefined): string {
  return port !== undefined ? `, metrics on :${port}` : '';
}
