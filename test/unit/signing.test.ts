/**
 * Detached manifest signatures (store/signing.ts): round trip, every way a signature can be bad,
 * key checks, and interoperability: openssl verifies what lazysnap signs, as docs/FORMAT.md says.
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { InvalidArgumentError, SignatureError } from '../../core/errors.js';
import { keyFingerprint, signManifest, signingKey, verifyKey, verifyManifest } from '../../store/signing.js';
import { tempDir } from '../helpers/images.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const other = generateKeyPairSync('ed25519');
const manifest = Buffer.from('{\n "format": "lazysnap/1",\n "id": "vm"\n}\n');

function refusal(f: () => void): SignatureError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SignatureError);
    return e as SignatureError;
  }
  throw new Error('verified');
}

describe('manifest signatures', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => (tmp = tempDir()));
  afterEach(() => tmp.cleanup());

  it('verify over the exact bytes with the signing key, and name the key by fingerprint', () => {
    const sig = signManifest(manifest, privateKey);
    expect(() => verifyManifest('vm', manifest, sig, publicKey)).not.toThrow();
    const o = JSON.parse(sig.toString()) as Record<string, string>;
    expect(o).toMatchObject({
      format: 'lazysnap-signature/1',
      alg: 'ed25519',
      key: keyFingerprint(publicKey),
    });
    expect(keyFingerprint(privateKey)).toBe(keyFingerprint(publicKey));
    expect(keyFingerprint(publicKey)).toMatch(/^ed25519:[0-9a-f]{32}$/);
  });

  it('refuse a missing signature, a malformed one, another key, and any altered byte', () => {
    const sig = signManifest(manifest, privateKey);
    expect(refusal(() => verifyManifest('vm', manifest, undefined, publicKey))).toMatchObject({
      code: 'LAZYSNAP_BAD_SIGNATURE',
      reason: 'missing',
      id: 'vm',
    });
    for (const bad of [
      '',
      'not json',
      '{"format":"lazysnap-signature/1","alg":"ed25519","signature":"AAAA"}',
      '{"format":"x"}',
      'null',
    ]) {
      expect(refusal(() => verifyManifest('vm', manifest, Buffer.from(bad), publicKey)).reason, bad).toBe(
        'malformed',
      );
    }
    const wrong = refusal(() =>
      verifyManifest('vm', manifest, signManifest(manifest, other.privateKey), publicKey),
    );
    expect(wrong).toMatchObject({
      reason: 'mismatch',
      signedBy: keyFingerprint(other.publicKey),
      expectedKey: keyFingerprint(publicKey),
    });
    expect(wrong.message).toContain(keyFingerprint(other.publicKey));
    for (let i = 0; i < manifest.length; i++) {
      const t = Buffer.from(manifest);
      t[i]! ^= 0x20;
      expect(refusal(() => verifyManifest('vm', t, sig, publicKey)).reason, `byte ${i}`).toBe('mismatch');
    }
    expect(
      refusal(() => verifyManifest('vm', Buffer.concat([manifest, Buffer.from(' ')]), sig, publicKey)).reason,
    ).toBe('mismatch');
  });

  it('only ever quote a checked fingerprint from the store, never arbitrary text', () => {
    const o = JSON.parse(signManifest(manifest, other.privateKey).toString()) as Record<string, string>;
    o.key = 'ed25519:x\nFORGED LOG LINE';
    const e = refusal(() => verifyManifest('vm', manifest, Buffer.from(JSON.stringify(o)), publicKey));
    expect(e.signedBy).toBeUndefined();
    expect(e.message).not.toContain('FORGED');
  });

  it('accept only Ed25519 keys, PEM or KeyObject; a private key serves for verifying', () => {
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' });
    expect(signingKey(pem).asymmetricKeyType).toBe('ed25519');
    expect(verifyKey(pem).type).toBe('public');
    expect(verifyKey(publicKey.export({ type: 'spki', format: 'pem' })).equals(publicKey)).toBe(true);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
    expect(() => signingKey(rsa.privateKey)).toThrow(InvalidArgumentError);
    expect(() => verifyKey(rsa.publicKey, '--verify-key')).toThrow(
      /--verify-key must be an Ed25519 public key/,
    );
    expect(() => signingKey(publicKey)).toThrow(/Ed25519 private key/);
    expect(() => signingKey('-----BEGIN NONSENSE-----', '--sign-key')).toThrow(
      /--sign-key must be an Ed25519 private key in PEM/,
    );
  });

  it('interoperate with openssl: the signed message is the context string and the manifest bytes', () => {
    const dir = tmp.dir;
    writeFileSync(path.join(dir, 'pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
    const o = JSON.parse(signManifest(manifest, privateKey).toString()) as { signature: string };
    writeFileSync(path.join(dir, 'sig.bin'), Buffer.from(o.signature, 'base64'));
    writeFileSync(
      path.join(dir, 'msg'),
      Buffer.concat([Buffer.from('lazysnap/1 manifest signature\0'), manifest]),
    );
    const out = execFileSync(
      'openssl',
      ['pkeyutl', '-verify', '-pubin', '-inkey', 'pub.pem', '-rawin', '-in', 'msg', '-sigfile', 'sig.bin'],
      { cwd: dir, encoding: 'utf8' },
    );
    expect(out).toMatch(/Signature Verified Successfully/);
  });
});
