/**
 * Maps the error codes that object stores share (S3 and the S3-like OSS and COS
 * protocols) and Node's network errors onto CachefsError codes, with messages
 * that name the bucket URI and never a credential.
 */
import { CachefsError } from '../errors.js';

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'TimeoutError', 'AbortError', 'RequestTimeout', 'ConnectionTimeoutError']);
const DENIED_CODES = new Set(['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidSecurity', 'ExpiredToken', 'InvalidToken', 'Forbidden']);
const THROTTLE_CODES = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'TooManyRequests', 'RequestLimitExceeded', 'ServiceUnavailable']);

export interface ServiceErrorFacts {
  /** The service's error code (`NoSuchKey`), or a Node network code (`ECONNREFUSED`). */
  code?: string;
  /** HTTP status, when the service answered. */
  status?: number;
}

/** `where` names the bucket or object for the message, e.g. `s3://bucket` or `s3://bucket/key`. */
export function serviceError(facts: ServiceErrorFacts, where: string, cause: unknown): CachefsError {
  const { code = '', status } = facts;
  if (NETWORK_CODES.has(code) || (status === undefined && /timeout|socket|connect/i.test(code))) {
    return new CachefsError('UNREACHABLE', `cannot reach the object store for ${where}: ${code || 'no answer'}`, { cause });
  }
  if (code === 'NoSuchBucket') return new CachefsError('BUCKET_NOT_FOUND', `bucket not found: ${where}`, { cause });
  if (code === 'NoSuchKey' || code === 'NotFound' || status === 404) return new CachefsError('NOT_FOUND', `not found: ${where}`, { cause });
  if (DENIED_CODES.has(code) || status === 403 || status === 401) {
    return new CachefsError('ACCESS_DENIED', `access denied to ${where}: ${code || status}`, { cause });
  }
  if (code === 'PreconditionFailed' || status === 412) return new CachefsError('STALE', `object changed while reading ${where}`, { cause });
  if (THROTTLE_CODES.has(code) || status === 429 || status === 503) return new CachefsError('THROTTLED', `throttled by the object store for ${where}: ${code || status}`, { cause });
  return new CachefsError('IO', `object store error for ${where}: ${code || status || 'unknown'}`, { cause });
}

/** Reads the facts out of whatever an SDK or Node threw. */
export function errorFacts(err: unknown): ServiceErrorFacts {
  if (typeof err !== 'object' || err === null) return {};
  const e = err as Record<string, unknown>;
  const meta = e.$metadata as { httpStatusCode?: number } | undefined;
  const nested = e.cause as Record<string, unknown> | undefined;
  const code = [e.Code, e.code, e.name, nested?.code].find((c): c is string => typeof c === 'string' && c !== 'Error' && c !== 'UnknownError');
  const status = [meta?.httpStatusCode, e.status, e.statusCode].find((s): s is number => typeof s === 'number' && s > 0);
  return { code, status };
}
