/**
 * The only place that turns errors into exit codes and one-line messages. Every
 * subcommand's action runs through `runAction`, so a bad value or a failed backend
 * ends as `cachefs: <message>` on stderr and a non-zero exit, never a stack trace.
 */
import { CachefsError, type ErrorCode } from '../errors.js';

const EXIT_CODES: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 2,
  NOT_FOUND: 3,
  BUCKET_NOT_FOUND: 3,
  NOT_DIRECTORY: 3,
  IS_DIRECTORY: 3,
  ACCESS_DENIED: 4,
  UNREACHABLE: 5,
  TIMEOUT: 5,
  THROTTLED: 5,
  INTERRUPTED: 130,
  CONFLICT: 6,
  READ_ONLY: 1,
  STALE: 1,
  BAD_HANDLE: 1,
  CORRUPT_BLOCK: 1,
  IO: 1,
};

export function exitCodeOf(err: unknown): number {
  if (err instanceof CachefsError && 'exitCode' in err && typeof err.exitCode === 'number') return err.exitCode;
  return err instanceof CachefsError ? EXIT_CODES[err.code] : 1;
}

/** One line, no stack: what the user reads when a command fails. */
export function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0]!.trim();
}

export function fail(err: unknown): never {
  process.stderr.write(`cachefs: ${oneLine(err)}\n`);
  if (process.env.CACHEFS_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(exitCodeOf(err));
}

/** Wraps a commander action so that any failure exits through `fail`. */
export function runAction<A extends unknown[]>(action: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await action(...args);
    } catch (err) {
      fail(err);
    }
  };
}
