/**
 * Mount-table paths as pure values: normalization and validation of a path
 * (`/data/`, `//data` → `/data`), and resolution of any path in the namespace
 * to the mount entry that covers it (longest matching mount path). Shared by
 * the master's table and by clients resolving against a cached copy; no I/O.
 */
import { CachefsError } from '../errors.js';

const MAX_PATH = 4096;
const MAX_SEGMENT = 255;

/** Normalizes an absolute mount path; rejects relative paths, `.`/`..` and control characters. */
export function normalizeMountPath(text: string): string {
  const bad = (why: string): CachefsError => new CachefsError('INVALID_ARGUMENT', `invalid mount path '${text}': ${why}`);
  if (!text.startsWith('/')) throw bad("must be absolute, e.g. '/data'");
  if (text.length > MAX_PATH) throw bad(`longer than ${MAX_PATH} characters`);
  if (/[\u0000-\u001f\u007f]/.test(text)) throw bad('contains control characters');
  const segments = text.split('/').filter((s) => s !== '');
  for (const s of segments) {
    if (s === '.' || s === '..') throw bad("may not contain '.' or '..'");
    if (s.length > MAX_SEGMENT) throw bad(`a path component is longer than ${MAX_SEGMENT} characters`);
  }
  return `/${segments.join('/')}`;
}

/** True when `path` is `mountPath` or below it (both normalized). */
export function isUnder(path: string, mountPath: string): boolean {
  if (mountPath === '/') return true;
  return path === mountPath || path.startsWith(`${mountPath}/`);
}

/**
 * Finds the entry whose path is the longest prefix of `path` (both normalized)
 * and the remainder below it: '' for the mount path itself, else `a/b` without
 * a leading slash. Undefined when no entry covers the path.
 */
export function resolveMountPath<E extends { path: string }>(entries: Iterable<E>, path: string): { entry: E; subPath: string } | undefined {
  let best: E | undefined;
  for (const e of entries) {
    if (isUnder(path, e.path) && (best === undefined || e.path.length > best.path.length)) best = e;
  }
  if (best === undefined) return undefined;
  const rest = best.path === '/' ? path.slice(1) : path.slice(best.path.length + 1);
  return { entry: best, subPath: rest };
}
