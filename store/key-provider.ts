/**
 * Where chunk keys come from. A chunk key is 32 random bytes named by a key id; the manifest of an
 * encrypted snapshot records the id (never the key), and whoever reads the snapshot asks a
 * KeyProvider for the key of that id. The built-in provider reads the environment; a KMS, a vault
 * or a secrets file is a KeyProvider of a few lines.
 *
 * Key material never appears in an error message or a log line: errors say how long a bad key was,
 * not what it was, and providers keep keys in #private fields, which no serializer (JSON, pino)
 * can reach.
 */
import { readFileSync } from 'node:fs';

import { KeyUnavailableError } from '../core/errors.js';

export const KEY_BYTES = 32;

/** Environment variables of the built-in provider. */
export const KEY_ENV = 'LAZYSNAP_CHUNK_KEY';
export const KEY_FILE_ENV = 'LAZYSNAP_CHUNK_KEY_FILE';
export const KEY_ID_ENV = 'LAZYSNAP_CHUNK_KEY_ID';
/** The key id a snapshot records when none is given. */
export const DEFAULT_KEY_ID = 'default';

export interface KeyProvider {
  /**
   * The 32-byte key named `keyId`. Rejects with KeyUnavailableError when it has none. Called once
   * per snapshot written or served, never on the fault path.
   */
  getKey(keyId: string, signal?: AbortSignal): Promise<Buffer>;
}

const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/** Key ids: 1-128 of [A-Za-z0-9._:/-] (room for KMS aliases and ARNs), starting alphanumeric. */
export function isKeyId(v: unknown): v is string {
  return typeof v === 'string' && KEY_ID.test(v);
}

/**
 * Parses key text: 64 hex digits, or base64 / base64url of exactly 32 bytes; surrounding whitespace
 * (a trailing newline in a file) is ignored. Throws a message that says what was wrong without
 * quoting the text.
 */
export function parseKeyMaterial(text: string, where: string): Buffer {
  const t = text.trim();
  let key: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(t)) key = Buffer.from(t, 'hex');
  else if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(t)) key = Buffer.from(t, 'base64');
  if (key?.length !== KEY_BYTES) {
    throw new Error(
      `${where} must hold ${KEY_BYTES} bytes as 64 hex digits or base64 (it holds ${t.length} characters${key ? `, ${key.length} bytes decoded` : ' that are neither'}); generate one with: openssl rand -hex 32`,
    );
  }
  return key;
}

/**
 * The built-in provider: the key is `LAZYSNAP_CHUNK_KEY` (hex or base64), or the contents of the
 * file named by `LAZYSNAP_CHUNK_KEY_FILE` (e.g. a systemd credential, which keeps the key out of
 * /proc/<pid>/environ). With `LAZYSNAP_CHUNK_KEY_ID` set, it answers only for that id, so serving a
 * snapshot encrypted under another id fails with a message naming both.
 */
export function envKeyProvider(env: NodeJS.ProcessEnv = process.env): KeyProvider {
  return new EnvKeyProvider(env);
}

class EnvKeyProvider implements KeyProvider {
  readonly #env: NodeJS.ProcessEnv;
  constructor(env: NodeJS.ProcessEnv) {
    this.#env = env;
  }

  async getKey(keyId: string): Promise<Buffer> {
    const only = this.#env[KEY_ID_ENV];
    if (only && only !== keyId)
      throw new KeyUnavailableError(
        keyId,
        `${KEY_ID_ENV} is ${JSON.stringify(only)}: the key in the environment is for that id`,
      );
    const inline = this.#env[KEY_ENV];
    const file = this.#env[KEY_FILE_ENV];
    if (inline && file)
      throw new KeyUnavailableError(keyId, `both ${KEY_ENV} and ${KEY_FILE_ENV} are set; set one`);
    try {
      if (inline) return parseKeyMaterial(inline, KEY_ENV);
      if (file) return parseKeyMaterial(readFileSync(file, 'utf8'), `${KEY_FILE_ENV} (${file})`);
    } catch (e) {
      throw new KeyUnavailableError(keyId, (e as Error).message, e);
    }
    throw new KeyUnavailableError(
      keyId,
      `set ${KEY_ENV} (64 hex digits or base64 of 32 bytes) or ${KEY_FILE_ENV}`,
    );
  }
}

/** A provider over keys held in memory, by id (tests, and SDK users who fetched keys themselves). */
export function staticKeyProvider(keys: Record<string, Uint8Array>): KeyProvider {
  return new StaticKeyProvider(keys);
}

class StaticKeyProvider implements KeyProvider {
  readonly #keys = new Map<string, Buffer>();
  constructor(keys: Record<string, Uint8Array>) {
    for (const [id, k] of Object.entries(keys)) {
      if (k.length !== KEY_BYTES)
        throw new KeyUnavailableError(id, `a key must be ${KEY_BYTES} bytes, this one is ${k.length}`);
      this.#keys.set(id, Buffer.from(k));
    }
  }

  async getKey(keyId: string): Promise<Buffer> {
    const k = this.#keys.get(keyId);
    if (!k) throw new KeyUnavailableError(keyId, 'the key provider has no key of that id');
    return k;
  }
}
