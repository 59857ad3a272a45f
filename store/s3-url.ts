/** s3:// URLs and S3 bucket-name rules, kept apart from the client so the CLI can validate cheaply. */
import { InvalidUrlError } from '../core/errors.js';
import { assertKey } from './keys.js';

/** Parses `s3://bucket[/prefix]`; the scheme is matched without regard to case, nothing else is. */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  if (typeof url !== 'string' || !/^s3:\/\//i.test(url))
    throw new InvalidUrlError(String(url), 'expected s3://bucket[/prefix]');
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  if (bucket.includes('@')) {
    throw new InvalidUrlError(
      url,
      'credentials do not belong in the URL: use the AWS credential chain (environment, shared config, instance role)',
    );
  }
  if (/[?#]/.test(rest))
    throw new InvalidUrlError(
      url,
      'query strings and fragments are not accepted: options are flags or environment variables',
    );
  const bucketIssue = bucketProblem(bucket);
  if (bucketIssue) throw new InvalidUrlError(url, `bad bucket name: ${bucketIssue}`);
  const prefix = slash < 0 ? '' : rest.slice(slash + 1).replace(/\/+$/, '');
  const prefixIssue = prefixProblem(prefix);
  if (prefixIssue) throw new InvalidUrlError(url, `bad prefix: ${prefixIssue}`);
  return { bucket, prefix };
}

/**
 * S3's general-purpose bucket naming rules, or why `name` breaks them. Access point aliases
 * (`-s3alias`, `--ol-s3`) and directory buckets (`--x-s3`) are valid names for requests, so stay.
 * https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
 */
export function bucketProblem(name: unknown): string | undefined {
  if (typeof name !== 'string' || name === '') return 'the bucket name is empty';
  if (name.length < 3 || name.length > 63) return `it must be 3-63 characters long, not ${name.length}`;
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(name))
    return 'only lowercase letters, digits, "." and "-", starting and ending with a letter or digit';
  if (name.includes('..')) return 'no two adjacent periods';
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(name)) return 'it must not look like an IP address';
  if (/^(xn--|sthree-)/.test(name)) return 'the prefixes "xn--" and "sthree-" are reserved';
  return undefined;
}

/** Prefix segments use S3's safe key characters, so no URL or XML escaping can change their meaning. */
export function prefixProblem(prefix: unknown): string | undefined {
  if (typeof prefix !== 'string') return 'a string';
  if (prefix === '') return undefined;
  if (prefix.length > 512) return 'at most 512 characters (S3 keys end at 1024)';
  for (const seg of prefix.split('/')) {
    if (!/^[A-Za-z0-9!_.*'()-]+$/.test(seg) || seg === '.' || seg === '..') {
      return `"/"-separated segments of [A-Za-z0-9!_.*'()-], none empty, "." or ".."`;
    }
  }
  return undefined;
}

export function isKey(key: string): boolean {
  try {
    assertKey(key);
    return true;
  } catch {
    return false;
  }
}

// ---- error classification: the one place that decides what an SDK or socket error means ----
