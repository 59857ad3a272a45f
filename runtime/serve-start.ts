/**
 * Starting to serve a snapshot, shared by the in-process RestoreServer and the supervised worker
 * process (runtime/supervisor/worker-main.ts): open what the sessions share (runtime/serve-context.ts),
 * the metrics endpoint, warm the fault path (runtime/warm-up.ts), and log the one `serving` line.
 */
import { InsecurePathError, KeyUnavailableError, SignatureError, WrongKeyError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import {
  openServeContext,
  securityFields,
  type CrashAttribution,
  type ServeContext,
} from './serve-context.js';
import type { ResolvedServeOptions } from './serve-options.js';
import { SessionHost } from './session-host.js';
import { warmUpFaultPath, type WarmUp } from './warm-up.js';

export interface Started {
  host: SessionHost;
  parts: ServeContext;
  metricsServer: { port: number; close: () => Promise<void> } | undefined;
  warmUp: WarmUp | undefined;
  /** What the `serving` line says about the snapshot (logged by whoever creates the socket). */
  fields: () => Record<string, unknown>;
}

/**
 * Opens everything a server of `o` needs, short of its socket. `fields()` are what the `serving` line
 * says, logged by whoever creates the socket, once it exists. On failure what was opened is closed again.
 */
export async function startServing(
  o: ResolvedServeOptions,
  log: Logger,
  signal?: AbortSignal,
  crash?: CrashAttribution,
): Promise<Started> {
  let parts: ServeContext | undefined;
  let metricsServer: { port: number; close: () => Promise<void> } | undefined;
  try {
    parts = await openServeContext(o, log, signal, crash);
    const { ctx, stores } = parts;
    // Metrics before the socket: an abandoned server would keep it (a bad --metrics-host did).
    if (o.metricsPort !== undefined) metricsServer = await ctx.metrics.listen(o.metricsPort, o.metricsHost);
    // Before the socket exists: the first peer's first fault must not pay for cold code.
    const m = ctx.index.manifest;
    const warmUp = await warmUpFaultPath(
      { loader: parts.loader, ctx, localOrigin: stores[0]?.localPath !== undefined },
      log,
    );
    const host = new SessionHost(parts, o.id, log);
    const p = parts;
    const fields = () => ({
      stores: stores.map((s) => s.url),
      chunks: ctx.index.count,
      totalSize: m.totalSize,
      canPoison: ctx.canPoison,
      metricsPort: metricsServer?.port,
      warmUpMs: warmUp === undefined ? null : Math.round(warmUp.ms * 10) / 10,
      warmUpSession: warmUp?.session ?? false,
      warmUpFault: warmUp?.demandFault ?? false,
      ...securityFields(o, m),
    });
    return { host, parts: p, metricsServer, warmUp, fields };
  } catch (e) {
    logRefusal(e, log);
    await metricsServer?.close();
    await parts?.close();
    throw e;
  }
}

/** The one error line of a server that will not start for a security reason (signature, key, socket path). */
export function logRefusal(e: unknown, log: Logger): void {
  if (
    e instanceof SignatureError ||
    e instanceof WrongKeyError ||
    e instanceof KeyUnavailableError ||
    e instanceof InsecurePathError
  ) {
    log.error({ code: e.code }, `refusing to serve: ${e.message}`);
  }
}
