import { InvalidArgumentError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

/**
 * Parses "512KiB", "1G", "4096" into bytes (binary units; K = KiB). `name` is what the user typed
 * (the flag), for the error. Zero is refused unless `allowZero` (a budget of nothing is a choice, a
 * chunk of nothing is a mistake).
 */
export function parseSize(text: string, name: string, options: { allowZero?: boolean } = {}): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  const n = m && unit !== undefined ? Number(m[1]) * unit : NaN;
  if (!Number.isSafeInteger(n) || n < 0 || (n === 0 && !options.allowZero))
    throw new InvalidArgumentError(
      name,
      options.allowZero ? 'a size such as 0, 4096, 512KiB or 1GiB' : 'a size such as 4096, 512KiB or 1GiB',
      text,
    );
  return n;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  for (; v >= 1024 && i < units.length - 1; i++) v /= 1024;
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** Parses "500ms", "30s", "10m", "1h", "2d" into milliseconds. `name` is the flag, for the error. */
export function parseDuration(text: string, name: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text);
  if (!m) throw new InvalidArgumentError(name, 'a duration such as 500ms, 30s, 10m, 1h or 2d', text);
  return Number(m[1]) * { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
}
