/**
 * One root pino logger for the process; components take children bound to `{component}` and, per
 * restore, `{snapshotId, restoreId}`. Bindings are serialized once when the child is created, so
 * children are cheap. Never bind untrusted objects (a peer's JSON, a manifest): log selected fields.
 * The fault path logs only at trace and only behind `isLevelEnabled('trace')`.
 */
import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

let root: Logger | undefined;

export interface LoggerConfig {
  /** @default process.env.LAZYSNAP_LOG_LEVEL ?? 'info' */
  level?: string;
  /** Where to write: a file descriptor. @default 2 (stderr: stdout belongs to command output) */
  fd?: number;
  /**
   * Write each line before returning. For a logger whose process may be killed by what it logs
   * (attach(): a chunk that fails closed raises SIGBUS in this process). @default false
   */
  sync?: boolean;
}

/** Paths redacted from every log line: credentials must never reach a log. */
export const REDACT_PATHS = [
  '*.secretAccessKey',
  '*.sessionToken',
  '*.authorization',
  '*.headers.authorization',
  '*.key',
  '*.encryptionKey',
  // Chunk keys (store/key-provider.ts) are held where no serializer reaches them; these paths are
  // the second line, for an environment or options object someone logs whole.
  'LAZYSNAP_CHUNK_KEY',
  '*.LAZYSNAP_CHUNK_KEY',
  '*.*.LAZYSNAP_CHUNK_KEY',
  '*.chunkKey',
  '*.keyMaterial',
];

function loggerOptions(level: string): LoggerOptions {
  return {
    level,
    base: { pid: process.pid },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
  };
}

export function createRootLogger(config: LoggerConfig = {}): Logger {
  const options = loggerOptions(config.level ?? process.env.LAZYSNAP_LOG_LEVEL ?? 'info');
  root = pino(options, pino.destination({ fd: config.fd ?? 2, sync: config.sync ?? false }));
  return root;
}

/**
 * A logger configured as the root one (level, bindings, redaction) that writes nowhere: for work done
 * only to warm code up (runtime/warm-up-session.ts), whose lines must not reach anyone's log.
 */
export function discardingLogger(like: Logger): Logger {
  return pino(loggerOptions(like.level), { write: () => {} }).child(like.bindings());
}

/** The process's root logger (created with defaults on first use). */
export function rootLogger(): Logger {
  return root ?? createRootLogger();
}

/** A child logger for one component, e.g. `componentLogger('runtime.session')`. */
export function componentLogger(component: string, parent: Logger = rootLogger()): Logger {
  return parent.child({ component });
}
