/** What every command shares: output sinks, usage errors, store opening, number formatting. */
import { InvalidArgumentError } from '../core/errors.js';
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

export function intOption(name: string, text: string | undefined, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`--${name}`, `an integer from ${min} to ${max}`, text);
  return n;
}

export async function storeFrom(values: { store?: string | string[]; 's3-endpoint'?: string }): Promise<StoreBackend> {
  const urls = Array.isArray(values.store) ? values.store : values.store ? [values.store] : [];
  if (urls.length === 0) throw new UsageError('--store is required (a directory, file://, s3://bucket/prefix or http(s):// URL)');
  if (urls.length > 1) throw new UsageError('this command takes one --store');
  return openStore(urls[0]!, { ...(values['s3-endpoint'] ? { s3Endpoint: values['s3-endpoint'] } : {}) });
}

export const ms = (ns: number) => `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 0)} ms`;
