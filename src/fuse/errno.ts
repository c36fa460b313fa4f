/**
 * The only place that turns errors into errno values for the kernel. Unknown
 * failures become EIO; every mapping is counted by the adapter under its errno name.
 */
import { constants } from 'node:os';
import { CachefsError, type ErrorCode } from '../errors.js';

const E = constants.errno;

const BY_CODE: Record<ErrorCode, number> = {
  NOT_FOUND: E.ENOENT,
  NOT_DIRECTORY: E.ENOTDIR,
  IS_DIRECTORY: E.EISDIR,
  READ_ONLY: E.EROFS,
  ACCESS_DENIED: E.EACCES,
  BUCKET_NOT_FOUND: E.ENOENT,
  THROTTLED: E.EAGAIN,
  UNREACHABLE: E.EIO,
  STALE: E.ESTALE,
  INVALID_ARGUMENT: E.EINVAL,
  BAD_HANDLE: E.EBADF,
  CORRUPT_BLOCK: E.EIO,
  TIMEOUT: E.ETIMEDOUT,
  INTERRUPTED: E.EINTR,
  CONFLICT: E.EEXIST,
  IO: E.EIO,
};

/** Answers about the caller's request (a missing name, a write to a read-only mount), not failures. */
const ANSWERS = new Set<ErrorCode>(['NOT_FOUND', 'NOT_DIRECTORY', 'IS_DIRECTORY', 'READ_ONLY', 'INVALID_ARGUMENT', 'BAD_HANDLE', 'CONFLICT', 'INTERRUPTED']);

/** True when the error is a failure worth a warning (the store, the cache, a worker), not an answer. */
export function isFailure(err: unknown): boolean {
  return !(err instanceof CachefsError && ANSWERS.has(err.code));
}

const NAMES = new Map<number, string>(Object.entries(E).map(([name, n]) => [n, name]));

/** A positive errno for the error. */
export function errnoOf(err: unknown): number {
  return err instanceof CachefsError ? BY_CODE[err.code] : E.EIO;
}

export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `E${errno}`;
}
