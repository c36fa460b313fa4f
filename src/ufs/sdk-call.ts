/**
 * Small pieces the object-store backends share around their SDK calls:
 * cancellation of calls the SDKs cannot cancel, credential-free error causes,
 * and the decoding of what listings and heads return.
 */
import { CachefsError, isCachefsError } from '../errors.js';
import type { ServiceErrorFacts } from './service-errors.js';

/** Settles with `work`, or rejects as soon as `signal` aborts; a late result is handed to `discard`. */
export async function abortable<T>(work: Promise<T>, signal: AbortSignal | undefined, where: string, discard?: (late: T) => void): Promise<T> {
  if (!signal) return work;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, where));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) discard?.(value);
        else resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

export function abortError(signal: AbortSignal, where: string): CachefsError {
  const reason: unknown = signal.reason;
  if (isCachefsError(reason)) return reason;
  const timedOut = reason instanceof Error && reason.name === 'TimeoutError';
  return new CachefsError(timedOut ? 'TIMEOUT' : 'IO', `${timedOut ? 'timed out' : 'aborted'}: request to ${where}`, { cause: reason });
}

/** An SDK's error object holds request details; keep only what helps and never a credential. */
export function sanitizedCause(service: string, facts: ServiceErrorFacts & { requestId?: string }): Error {
  const parts = [facts.code ?? 'unknown error'];
  if (facts.status !== undefined) parts.push(`HTTP ${facts.status}`);
  if (facts.requestId) parts.push(`request id ${facts.requestId}`);
  return new Error(`${service}: ${parts.join(', ')}`);
}

/** Listings are requested with encoding-type=url; decode as a query component ('+' is a space). */
export function decodeListed(s: string): string {
  return decodeURIComponent(s.replace(/\+/g, ' '));
}

export function stripQuotes(etag: string): string {
  return etag.replace(/^"|"$/g, '');
}

/**
 * A GET answered with another version than the one asked for fails with STALE before a
 * byte of it is used: a server that ignores If-Match (s3rver does) must not mix an
 * object's old and new bytes in one file. An answer without an ETag is taken as is.
 */
export function checkVersion(expected: string | undefined, answered: string | undefined, where: string): void {
  if (!expected || answered === undefined || answered === '') return;
  const got = stripQuotes(answered);
  if (got !== expected) throw new CachefsError('STALE', `object changed while reading ${where}: version ${got}, opened as ${expected}`);
}
