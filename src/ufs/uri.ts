/**
 * Parsing of UFS URIs into a typed form: `s3://bucket/prefix`, `oss://bucket/prefix`,
 * `cosn://bucket-appid/prefix` (also `cos://`), `file:///abs/folder`. Only parsing and
 * validation: opening a backend is `open-ufs.ts`.
 */
import { CachefsError } from '../errors.js';

export type UfsScheme = 's3' | 'oss' | 'cos' | 'file';

export interface UfsUri {
  scheme: UfsScheme;
  /** Bucket name for object stores; empty for `file`. */
  bucket: string;
  /** Key prefix inside the bucket, '' or ending in '/'; for `file`, the absolute folder path. */
  root: string;
  /** The URI as the user wrote it (URIs never carry credentials here). */
  text: string;
}

const SCHEMES: Record<string, UfsScheme> = { 's3:': 's3', 's3a:': 's3', 'oss:': 'oss', 'cosn:': 'cos', 'cos:': 'cos', 'file:': 'file' };
const EXPECTED = 'expected s3://bucket[/prefix], oss://bucket[/prefix], cosn://bucket-appid[/prefix] or file:///absolute/path';

export function parseUfsUri(text: string): UfsUri {
  const bad = (why: string): CachefsError => new CachefsError('INVALID_ARGUMENT', `invalid UFS URI '${text}': ${why}`);
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*:)\/\/(.*)$/.exec(text);
  if (!m) throw bad(EXPECTED);
  const scheme = SCHEMES[m[1]!.toLowerCase()];
  if (!scheme) throw bad(`unknown scheme '${m[1]}' (${EXPECTED})`);
  const rest = m[2]!;
  if (scheme === 'file') {
    if (!rest.startsWith('/')) throw bad('file URIs need an absolute path, e.g. file:///srv/data');
    const root = decodeURIComponent(rest).replace(/\/+$/, '') || '/';
    return { scheme, bucket: '', root, text };
  }
  if (/[?#@]/.test(rest)) throw bad('query strings, fragments and credentials are not allowed in the URI (use options)');
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const prefixPart = slash < 0 ? '' : rest.slice(slash + 1);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw bad(`bucket name '${bucket}' must be 3-63 characters of a-z, 0-9, '.' and '-'`);
  }
  if (scheme === 'cos' && !/-\d+$/.test(bucket)) throw bad(`COS bucket '${bucket}' must end with its APPID, e.g. data-1250000000`);
  const segments = prefixPart.split('/').filter((s) => s !== '');
  if (segments.some((s) => s === '.' || s === '..')) throw bad("the prefix may not contain '.' or '..'");
  const root = segments.length ? segments.join('/') + '/' : '';
  return { scheme, bucket, root, text };
}
