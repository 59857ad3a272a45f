/** Classifying S3 SDK errors: status, retryability, and a one-line description with no request data. */
export type SdkError = Error & {
  code?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
  errors?: unknown[];
};

export function statusOf(e: unknown): number | undefined {
  return (e as SdkError | undefined)?.$metadata?.httpStatusCode;
}

export function nameOf(e: unknown): string | undefined {
  return (e as SdkError | undefined)?.name;
}

/** A socket error's code; Node's happy-eyeballs connect wraps them in an AggregateError. */
export function codeOf(e: unknown): string | undefined {
  const err = e as SdkError | undefined;
  return err?.code ?? (err?.errors?.[0] as SdkError | undefined)?.code;
}

const THROTTLING = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'BandwidthLimitExceeded',
  'ProvisionedThroughputExceededException',
]);
const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
]);
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);

/** Whether the same request may succeed later: throttling, 5xx, 408/429, timeouts, resets. */
export function isRetryable(e: unknown, status: number | undefined): boolean {
  const name = nameOf(e) ?? '';
  if (THROTTLING.has(name) || TRANSIENT_NAMES.has(name)) return true;
  if (status !== undefined) return status >= 500 || status === 408 || status === 429;
  const code = codeOf(e);
  return (
    (code !== undefined && TRANSIENT_CODES.has(code)) || (e as SdkError | undefined)?.$retryable !== undefined
  );
}

/** One line: the service's error name, status and message, or the socket error. Carries no request data. */
export function describeError(e: unknown, status: number | undefined): string {
  if (!(e instanceof Error)) return String(e);
  const code = codeOf(e);
  const label = e.name === 'Error' || e.name === 'AggregateError' ? (code ?? e.name) : e.name;
  const hint = status === 403 ? ' (without s3:ListBucket, a missing object also reads as 403)' : '';
  return `${label}${status ? ` (HTTP ${status})` : ''}: ${e.message || 'no message'}${hint}`;
}
