/**
 * The cluster secret: one shared token that the master, workers, mounts and the
 * admin commands present on every request (`Authorization: Bearer <token>`), and
 * the one check both servers (the master's API, a worker's block service) make
 * on what they receive. The master also derives its at-rest key from it.
 *
 * The token is read once, from a file (`--auth-token-file`, or the file named by
 * CACHEFS_AUTH_TOKEN_FILE): never from argv or the environment itself, so it is
 * not in `ps` or /proc/<pid>/environ. A file that users other than its owner and
 * group can read is refused. Requests are compared in constant time over SHA-256
 * digests of fixed length. The value lives in a private field: it never shows in
 * `util.inspect`, JSON, logs or messages. Knows nothing about routes beyond which
 * ones a probe needs.
 */
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { createHash, createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { CachefsError } from '../errors.js';

/** Names the token file when `--auth-token-file` is not given. */
export const AUTH_TOKEN_ENV = 'CACHEFS_AUTH_TOKEN_FILE';

const MIN_TOKEN_CHARS = 16;
const MAX_TOKEN_BYTES = 4096;
/** Visible ASCII only: the token travels in an HTTP header. */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;
/** Paths a liveness or readiness probe and a metrics scraper reach without the secret; they carry none. */
const PROBE_PATHS: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/metrics']);
const HKDF_SALT = 'cachefs cluster secret';

export const UNAUTHENTICATED_MESSAGE = 'missing or wrong cluster secret: give the cluster token file with --auth-token-file (or CACHEFS_AUTH_TOKEN_FILE)';

export class ClusterSecret {
  readonly #token: string;
  readonly #digest: Buffer;

  private constructor(token: string) {
    this.#token = token;
    this.#digest = sha256(token);
  }

  /** A secret from its text (surrounding whitespace, e.g. a file's newline, removed). */
  static of(text: string, what = 'cluster secret'): ClusterSecret {
    const token = text.trim();
    if (!TOKEN_CHARS.test(token)) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what}: expected visible ASCII characters without spaces, e.g. the output of openssl rand -hex 32`);
    if (token.length < MIN_TOKEN_CHARS) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what}: ${token.length} characters, expected at least ${MIN_TOKEN_CHARS} (e.g. openssl rand -hex 32)`);
    return new ClusterSecret(token);
  }

  /**
   * Reads the token file once. Refused: a file other users may read or write
   * (mode bits for "other"), anything but a regular file, an empty or oversized one.
   * Symlinks are followed (a Kubernetes Secret volume is made of them); the mode
   * checked is the target's, on the opened descriptor.
   */
  static fromFile(file: string, what = '--auth-token-file'): ClusterSecret {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${file}': cannot open it (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`, { cause: err });
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${file}': not a regular file`);
      if ((st.mode & 0o007) !== 0) {
        const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
        throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${file}': other users may access it (mode ${mode}); expected 0600 or 0640 (chmod 600 it; in Kubernetes, a Secret volume with defaultMode 0440 and an fsGroup)`);
      }
      if (st.size > MAX_TOKEN_BYTES) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${file}': ${st.size} bytes, expected at most ${MAX_TOKEN_BYTES}`);
      return ClusterSecret.of(readFileSync(fd, 'utf8'), `${what} '${file}'`);
    } finally {
      closeSync(fd);
    }
  }

  /** The value of the `Authorization` header that carries this secret. */
  get authorization(): string {
    return `Bearer ${this.#token}`;
  }

  /** True when an `Authorization` header carries this secret; constant time in the token's bytes. */
  accepts(header: string | string[] | undefined): boolean {
    const m = typeof header === 'string' ? /^Bearer +(\S+)\s*$/i.exec(header) : null;
    // Digests of equal length whatever was sent: timingSafeEqual never sees the token's length.
    return timingSafeEqual(sha256(m ? m[1]! : ''), this.#digest) && m !== null;
  }

  /**
   * The answer to a worker socket's challenge: an HMAC of it under a key derived from the
   * secret, so the secret itself never crosses the socket (a socket planted in the
   * dir learns nothing it could replay).
   */
  proof(challenge: string): string {
    return createHmac('sha256', this.deriveKey(SOCKET_PURPOSE)).update(challenge).digest('hex');
  }

  /** True when `proof` answers `challenge` for this secret; constant time. */
  acceptsProof(challenge: string, proof: unknown): boolean {
    const sent = Buffer.from(typeof proof === 'string' ? proof : '', 'utf8');
    const want = Buffer.from(this.proof(challenge), 'utf8');
    return sent.length === want.length && timingSafeEqual(sent, want);
  }

  /** A 256-bit key for one purpose (HKDF-SHA256 of the token); the same secret and purpose give the same key. */
  deriveKey(purpose: string): Buffer {
    return Buffer.from(hkdfSync('sha256', this.#token, HKDF_SALT, purpose, 32));
  }
}

/** What a server admits: holders of the cluster secret, or everyone when it runs `--insecure`. */
export type ClusterAuth = ClusterSecret | 'insecure';

/** True for the paths a probe or scraper may reach without the secret. */
export function isProbePath(pathname: string): boolean {
  return PROBE_PATHS.has(pathname);
}

/**
 * The check both servers make first: UNAUTHENTICATED unless the request carries
 * the cluster secret, is for a probe path, or the server runs without a secret.
 */
export function checkAuthorization(auth: ClusterAuth, req: IncomingMessage, pathname: string): void {
  if (auth === 'insecure' || isProbePath(pathname)) return;
  if (!auth.accepts(req.headers.authorization)) throw new CachefsError('UNAUTHENTICATED', UNAUTHENTICATED_MESSAGE);
}

/** Headers that make a client's request carry the secret (none without one). */
export function authHeaders(secret: ClusterSecret | undefined): Record<string, string> {
  return secret ? { authorization: secret.authorization } : {};
}

/** The HKDF purpose of the key that answers worker socket challenges. */
const SOCKET_PURPOSE = 'cachefs worker socket v1';

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}
