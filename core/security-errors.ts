/** Refusals of the security checks (signed manifests, chunk keys, socket paths): typed, with codes. */
import { LazysnapError } from './lazysnap-error.js';

/**
 * A manifest that a verify key is configured for, but whose detached signature is missing, does not
 * parse, or does not verify over the manifest's exact bytes. The snapshot is not served.
 */
export class SignatureError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_BAD_SIGNATURE';
  readonly id: string;
  readonly reason: 'missing' | 'malformed' | 'mismatch';
  /** Fingerprint of the configured verify key. */
  readonly expectedKey: string;
  /** Fingerprint the signature object names (unauthenticated: a hint for the operator). */
  readonly signedBy: string | undefined;
  constructor(
    id: string,
    reason: SignatureError['reason'],
    detail: string,
    keys: { expectedKey: string; signedBy?: string | undefined },
  ) {
    super('LAZYSNAP_BAD_SIGNATURE', `manifest ${JSON.stringify(id)} refused: ${detail}`);
    this.id = id;
    this.reason = reason;
    this.expectedKey = keys.expectedKey;
    this.signedBy = keys.signedBy;
  }
}

/**
 * No chunk key for an encrypted snapshot: none configured, or the key provider has none for
 * `keyId`. The message never contains key material.
 */
export class KeyUnavailableError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_KEY_UNAVAILABLE';
  readonly keyId: string;
  constructor(keyId: string, reason: string, cause?: unknown) {
    super('LAZYSNAP_KEY_UNAVAILABLE', `no chunk key for key id ${JSON.stringify(keyId)}: ${reason}`, {
      cause,
    });
    this.keyId = keyId;
  }
}

/** The chunk key given is not the one the snapshot was encrypted with (its key check differs). */
export class WrongKeyError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_WRONG_KEY';
  readonly keyId: string;
  constructor(keyId: string, what: string) {
    super(
      'LAZYSNAP_WRONG_KEY',
      `the chunk key given for key id ${JSON.stringify(keyId)} is not the key ${what} was encrypted with`,
    );
    this.keyId = keyId;
  }
}

/**
 * A path lazysnap will not trust with a socket: a directory writable by others, or owned by a user
 * other than this process's and root, where someone else could replace the socket.
 */
export class InsecurePathError extends LazysnapError {
  declare readonly code: 'LAZYSNAP_INSECURE_PATH';
  readonly path: string;
  constructor(path: string, reason: string) {
    super('LAZYSNAP_INSECURE_PATH', `refusing to use ${path}: ${reason}`);
    this.path = path;
  }
}
