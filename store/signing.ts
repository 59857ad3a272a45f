/**
 * Detached Ed25519 signatures of manifests. A manifest commits to every byte of its snapshot (each
 * chunk's hash, the vmstate's hash), so one signature over the manifest covers the snapshot.
 *
 * The signature is a separate object, manifests/<id>.json.sig, so the manifest's format and parser
 * are the same signed or not. It signs the manifest's exact stored bytes, prefixed with a context
 * string so the signature means nothing in any other protocol that key may sign for:
 *
 *   message = "lazysnap/1 manifest signature\0" || bytes of manifests/<id>.json
 *
 * The signature object is JSON: {"format": "lazysnap-signature/1", "alg": "ed25519",
 * "key": <fingerprint of the public key>, "signature": <base64 of the 64-byte signature>}. The
 * fingerprint is a hint for operators (which key signed this?); only the verification decides.
 *
 * Readers with a verify key check the signature before parsing the manifest: unsigned bytes never
 * reach the parser.
 */
import { KeyObject, createHash, createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';

import { InvalidArgumentError, SignatureError } from '../core/errors.js';

export const SIGNATURE_FORMAT = 'lazysnap-signature/1';
const CONTEXT = Buffer.from('lazysnap/1 manifest signature\0');

/** A key as the SDK accepts it: a KeyObject, or PEM text (a string or the bytes of a .pem file). */
export type KeyInput = KeyObject | string | Buffer;

/** An Ed25519 private key for signing. Throws InvalidArgumentError for anything else. */
export function signingKey(input: KeyInput, name = 'signKey'): KeyObject {
  let k: KeyObject;
  try {
    k = input instanceof KeyObject ? input : createPrivateKey(input);
  } catch (e) {
    throw Object.assign(
      new InvalidArgumentError(
        name,
        'an Ed25519 private key in PEM (openssl genpkey -algorithm ed25519)',
        `unreadable key material (${(e as Error).message})`,
      ),
      { cause: e },
    );
  }
  if (k.type !== 'private' || k.asymmetricKeyType !== 'ed25519')
    throw new InvalidArgumentError(
      name,
      'an Ed25519 private key',
      `a ${k.asymmetricKeyType ?? 'symmetric'} ${k.type} key`,
    );
  return k;
}

/** An Ed25519 public key for verifying (a private key is accepted and reduced to its public half). */
export function verifyKey(input: KeyInput, name = 'verifyKey'): KeyObject {
  let k: KeyObject;
  try {
    k = input instanceof KeyObject ? input : createPublicKey(input);
  } catch (e) {
    throw Object.assign(
      new InvalidArgumentError(
        name,
        'an Ed25519 public key in PEM (openssl pkey -pubout)',
        `unreadable key material (${(e as Error).message})`,
      ),
      { cause: e },
    );
  }
  if (k.type === 'private') k = createPublicKey(k);
  if (k.type !== 'public' || k.asymmetricKeyType !== 'ed25519')
    throw new InvalidArgumentError(
      name,
      'an Ed25519 public key',
      `a ${k.asymmetricKeyType ?? 'symmetric'} ${k.type} key`,
    );
  return k;
}

/** "ed25519:" and the first 16 bytes of the SHA-256 of the public key's SPKI DER, hex. */
export function keyFingerprint(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return `ed25519:${createHash('sha256')
    .update(pub.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 32)}`;
}

/** The signature object for a manifest's exact bytes. */
export function signManifest(manifestBytes: Uint8Array, key: KeyObject): Buffer {
  const signature = sign(null, Buffer.concat([CONTEXT, manifestBytes]), key);
  return Buffer.from(
    `${JSON.stringify({ format: SIGNATURE_FORMAT, alg: 'ed25519', key: keyFingerprint(key), signature: signature.toString('base64') })}\n`,
  );
}

/**
 * Verifies a manifest's bytes against its signature object (undefined: there is none). Throws
 * SignatureError (LAZYSNAP_BAD_SIGNATURE) with reason missing, malformed or mismatch.
 */
export function verifyManifest(
  id: string,
  manifestBytes: Uint8Array,
  signatureObject: Uint8Array | undefined,
  key: KeyObject,
): void {
  const expectedKey = keyFingerprint(key);
  if (signatureObject === undefined)
    throw new SignatureError(
      id,
      'missing',
      `it is not signed (no manifests/${id}.json.sig) and a verify key is configured (${expectedKey})`,
      { expectedKey },
    );
  let sig: Buffer;
  let signedBy: string | undefined;
  try {
    const o = JSON.parse(Buffer.from(signatureObject).toString('utf8')) as Record<string, unknown>;
    if (
      o === null ||
      typeof o !== 'object' ||
      o.format !== SIGNATURE_FORMAT ||
      o.alg !== 'ed25519' ||
      typeof o.signature !== 'string'
    )
      throw new Error('not a lazysnap-signature/1 object');
    // Store-supplied text reaches messages and logs only in this checked shape.
    signedBy = typeof o.key === 'string' && /^ed25519:[0-9a-f]{32}$/.test(o.key) ? o.key : undefined;
    sig = Buffer.from(o.signature, 'base64');
    if (sig.length !== 64) throw new Error(`an Ed25519 signature is 64 bytes, this one ${sig.length}`);
  } catch (e) {
    throw new SignatureError(id, 'malformed', `its signature object is malformed (${(e as Error).message})`, {
      expectedKey,
    });
  }
  if (!verify(null, Buffer.concat([CONTEXT, manifestBytes]), key, sig)) {
    const who =
      signedBy && signedBy !== expectedKey
        ? `it names key ${signedBy}, not the configured ${expectedKey}`
        : `the manifest bytes do not match the signature of ${expectedKey} (altered after signing?)`;
    throw new SignatureError(id, 'mismatch', `its signature does not verify: ${who}`, {
      expectedKey,
      signedBy,
    });
  }
}
