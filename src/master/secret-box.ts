/**
 * Encryption of secret option values at rest: AES-256-GCM with a key derived from
 * the cluster secret (HKDF-SHA256, see `ClusterSecret.deriveKey`), a random 96-bit
 * nonce per value, and the value's place (mount path and option key) as associated
 * data, so a sealed value copied to another entry or key does not open. A sealed
 * value is text, `v1:<nonce>:<ciphertext+tag>` in base64url, stored in place of
 * the plain one. Opening with another key (another cluster secret) fails. No I/O.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CachefsError } from '../errors.js';
import type { ClusterSecret } from '../net/auth.js';

const VERSION = 'v1';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** The HKDF purpose of the key: a new purpose gives an unrelated key. */
const PURPOSE = 'cachefs master: secret options at rest v1';

export class SecretBox {
  readonly #key: Buffer;

  constructor(secret: ClusterSecret) {
    this.#key = secret.deriveKey(PURPOSE);
  }

  /** The sealed form of `value`, bound to `place` (e.g. `/data` + `s3.secretAccessKey`). */
  seal(value: string, place: string): string {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#key, nonce).setAAD(Buffer.from(place, 'utf8'));
    const sealed = Buffer.concat([cipher.update(value, 'utf8'), cipher.final(), cipher.getAuthTag()]);
    return `${VERSION}:${nonce.toString('base64url')}:${sealed.toString('base64url')}`;
  }

  /** The value `seal` was given; INVALID_ARGUMENT when it was sealed with another key or for another place, or is damaged. */
  open(sealed: string, place: string): string {
    const [version, nonceText, bodyText, ...rest] = sealed.split(':');
    const nonce = Buffer.from(nonceText ?? '', 'base64url');
    const body = Buffer.from(bodyText ?? '', 'base64url');
    if (version !== VERSION || rest.length > 0 || nonce.length !== NONCE_BYTES || body.length < TAG_BYTES) {
      throw new CachefsError('INVALID_ARGUMENT', `the sealed value of ${place} is not in the ${VERSION} format`);
    }
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#key, nonce).setAAD(Buffer.from(place, 'utf8'));
      decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
      return Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BYTES)), decipher.final()]).toString('utf8');
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `the sealed value of ${place} does not open with this cluster secret (sealed with another one, or damaged)`, { cause: err });
    }
  }
}
