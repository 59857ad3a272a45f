/** What every command shares: output sinks, usage errors, store opening, key files, number formatting. */
import { readFileSync } from 'node:fs';

import { InvalidArgumentError } from '../core/errors.js';
import { parseDuration } from '../core/units.js';
import type { StoreBackend } from '../store/backend.js';
import { openStore } from '../store/open.js';

export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Whether stderr is a terminal (progress bars). */
  isTTY?: boolean;
}

/** A command-line mistake: exit code 2. */
export class UsageError extends Error {}

export function required(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

export function intOption(
  name: string,
  text: string | undefined,
  min: number,
  max: number,
): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max)
    throw new InvalidArgumentError(`--${name}`, `an integer from ${min} to ${max}`, text);
  return n;
}

/** Node's timers fire after 1 ms when asked for more than this: a longer timeout is refused. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A duration that becomes a timer (`--fail-timeout 30d` would otherwise be reported in ms). */
export function timeoutOption(name: string, text: string, minMs = 1): number {
  const ms = parseDuration(text, `--${name}`);
  if (ms < minMs || ms > MAX_TIMER_MS)
    throw new InvalidArgumentError(
      `--${name}`,
      `a duration from ${minMs}ms to 2147483647ms (about 24.8 days)`,
      text,
    );
  return ms;
}

export async function storeFrom(values: {
  store?: string | string[];
  's3-endpoint'?: string;
}): Promise<StoreBackend> {
  const urls = Array.isArray(values.store) ? values.store : values.store ? [values.store] : [];
  if (urls.length === 0)
    throw new UsageError('--store is required (a directory, file://, s3://bucket/prefix or http(s):// URL)');
  if (urls.length > 1) throw new UsageError('this command takes one --store');
  return openStore(urls[0]!, { ...(values['s3-endpoint'] ? { s3Endpoint: values['s3-endpoint'] } : {}) });
}

/** The bytes of a key file named by `--<name>` (a PEM); a usage error when it cannot be read. */
export function readKeyFile(name: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new InvalidArgumentError(
      `--${name}`,
      'a readable PEM file',
      `${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

export const ms = (ns: number) => `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 0)} ms`;
