import { resolveTracingConfig } from '../../core/otel-config.js';
import { prepareTraceDir } from '../../runtime/trace-dir.js';
import { parseSize } from '../../core/units.js';
import type { ServeOptions } from '../../runtime/serve-options.js';
import { Supervisor } from '../../runtime/supervisor/supervisor.js';
import { verifyKey } from '../../store/signing.js';
import { intOption, readKeyFile, required, timeoutOption, UsageError, type Io } from '../common.js';
import { formatHelp, parseOptions } from '../option-spec.js';
import { serveSpec } from '../specs/serve.js';

export const spec = serveSpec;
export const usage = formatHelp(serveSpec);

export async function run(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const values = parseOptions(serveSpec, argv);
  // A bad OTEL_* setting is refused here, before anything starts (the SDK itself starts in the process
  // that serves sessions: the worker, or this one with --no-supervisor).
  resolveTracingConfig(process.env);
  // Likewise a trace directory that cannot be written (a usage error naming --trace-dir).
  if (values['trace-dir']) await prepareTraceDir(values['trace-dir']);
  if (!values.store?.length)
    throw new UsageError('--store is required (repeat it for an ordered fallback list)');
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
    ...(values['trace-dir'] ? { traceDir: values['trace-dir'] } : {}),
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
    // Checked against the spec's choices by parseOptions.
    failClosed: values['fail-closed'] as NonNullable<ServeOptions['failClosed']>,
    prefetch: values.prefetch as NonNullable<ServeOptions['prefetch']>,
    fill: values.fill,
    hedge: !values['no-hedge'],
    ...(prefetchWindow !== undefined ? { prefetchWindow } : {}),
    ...(fetchConcurrency !== undefined ? { fetchConcurrency } : {}),
    ...(prefetchConcurrency !== undefined ? { prefetchConcurrency } : {}),
    failTimeoutMs: timeoutOption('fail-timeout', values['fail-timeout']),
    attemptTimeoutMs: timeoutOption('attempt-timeout', values['attempt-timeout']),
    handshakeTimeoutMs: timeoutOption('handshake-timeout', values['handshake-timeout']),
    shutdownGraceMs: timeoutOption('shutdown-grace', values['shutdown-grace'], 0),
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
    const { startTracing } = await import('../../core/otel.js');
    const tracing = await startTracing(process.env, { serviceName: 'lazysnap' });
    try {
      const server = await RestoreServer.start(options, signal);
      io.err(`lazysnap: serving ${values.id} on ${server.socketPath}${metricsNote(server.metricsPort)}\n`);
      await stopped;
      await server.close();
    } finally {
      await tracing?.shutdown();
    }
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
