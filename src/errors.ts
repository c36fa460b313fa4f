/**
 * The one error family of cachefs. Every failure that crosses a module edge is a
 * CachefsError with a stable `code`; callers branch on the code, never on message
 * text. `fuse/errno.ts` turns codes into errno values and `cli/` turns them into
 * exit codes and one-line messages. Messages never carry credentials.
 */

/** Every code, in one list: codes read off the wire (a worker's answer) are checked against it. */
export const ERROR_CODES = [
  'NOT_FOUND', // path or object does not exist
  'NOT_DIRECTORY',
  'IS_DIRECTORY',
  'READ_ONLY', // any write attempt
  'ACCESS_DENIED', // credentials rejected or not allowed
  'BUCKET_NOT_FOUND',
  'THROTTLED',
  'UNREACHABLE', // endpoint does not answer (refused, DNS, timeout)
  'STALE', // object changed under an open handle (ETag mismatch)
  'INVALID_ARGUMENT', // bad configuration or request; message names the value
  'BAD_HANDLE',
  'CORRUPT_BLOCK', // a cached block file does not match what was stored
  'TIMEOUT',
  'INTERRUPTED', // the request was cancelled (FUSE interrupt, timeout, client gone)
  'CONFLICT', // already exists / already mounted / duplicate id
  'IO', // anything else from a backend
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class CachefsError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CachefsError';
    this.code = code;
  }
}

export function isCachefsError(err: unknown, code?: ErrorCode): err is CachefsError {
  return err instanceof CachefsError && (code === undefined || err.code === code);
}

/** Wraps anything thrown into a CachefsError, keeping an existing one as is. */
export function asCachefsError(err: unknown, fallback: ErrorCode = 'IO'): CachefsError {
  if (err instanceof CachefsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CachefsError(fallback, message, { cause: err });
}

/** The code a peer sent (a worker's error answer), or IO for anything this version does not know. */
export function errorCodeOf(text: unknown): ErrorCode {
  return ERROR_CODES.find((c) => c === text) ?? 'IO';
}

/** The error a read gets when its signal aborts: the reason when it is one of ours, INTERRUPTED otherwise. */
export function abortError(signal: AbortSignal): CachefsError {
  const reason: unknown = signal.reason;
  return reason instanceof CachefsError ? reason : new CachefsError('INTERRUPTED', 'the request was cancelled', { cause: reason });
}
