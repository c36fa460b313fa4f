/**
 * The block request both sides of the network path share: a block is asked for as
 * `GET /v1/blocks/<id>?mount=&key=&etag=&size=&bs=&index=` with an optional
 * `Range: bytes=a-b` (offsets inside the block). The worker recomputes the id from
 * the other fields and refuses a mismatch, so a request names a block, never a
 * path: nothing a client sends is joined into a file name.
 */
import { MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, blockCount, blockRef, isBlockId, type BlockRef } from '../block/block.js';
import { CachefsError, errorCodeOf } from '../errors.js';

export const BLOCKS_PATH = '/v1/blocks/';

export function blockRequestPath(ref: BlockRef): string {
  const q = new URLSearchParams({
    mount: ref.object.mount,
    key: ref.object.key,
    etag: ref.object.etag,
    size: String(ref.object.size),
    bs: String(ref.blockSize),
    index: String(ref.index),
  });
  return `${BLOCKS_PATH}${ref.id}?${q.toString()}`;
}

/** Parses and validates a block request URL; INVALID_ARGUMENT for anything off. */
export function parseBlockRequest(url: string): BlockRef {
  const bad = (why: string): CachefsError => new CachefsError('INVALID_ARGUMENT', `bad block request: ${why}`);
  const u = new URL(url, 'http://worker');
  if (!u.pathname.startsWith(BLOCKS_PATH)) throw bad('unknown path');
  const id = u.pathname.slice(BLOCKS_PATH.length);
  if (!isBlockId(id)) throw bad('block id must be 40 lowercase hex characters');
  const q = u.searchParams;
  const int = (name: string, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const v = q.get(name);
    if (v === null || !/^\d+$/.test(v)) throw bad(`${name} must be a whole number`);
    const n = Number(v);
    if (n < min || n > max) throw bad(`${name} out of range`);
    return n;
  };
  const str = (name: string): string => {
    const v = q.get(name);
    if (v === null || v.length > 4096) throw bad(`${name} missing`);
    return v;
  };
  const size = int('size', 1);
  const bs = int('bs', MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
  const index = int('index', 0, blockCount(size, bs) - 1);
  const ref = blockRef({ mount: str('mount'), key: str('key'), etag: str('etag'), size }, bs, index);
  if (ref.id !== id) throw bad('block id does not match the block it names');
  return ref;
}

/** Parses `bytes=a-b` against a block's length; undefined means the whole block. */
export function parseRange(header: string | undefined, length: number): { start: number; end: number } | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
  if (!m) throw new CachefsError('INVALID_ARGUMENT', `bad range '${header}'`);
  const start = Number(m[1]);
  const end = m[2] === '' ? length - 1 : Math.min(Number(m[2]), length - 1);
  if (start > end || start >= length) throw new CachefsError('INVALID_ARGUMENT', `range '${header}' outside the block's ${length} bytes`);
  return { start, end };
}

/** HTTP status for a failed block request. */
export function statusForCode(code: string): number {
  switch (code) {
    case 'INVALID_ARGUMENT': return 400;
    case 'ACCESS_DENIED': return 403;
    case 'NOT_FOUND':
    case 'BUCKET_NOT_FOUND': return 404;
    case 'STALE': return 412;
    case 'THROTTLED': return 503;
    default: return 502;
  }
}

/** The error a failed block response stands for (the body is `{error:{code,message}}`). */
export function errorFromResponse(status: number, body: string): CachefsError {
  try {
    const parsed = JSON.parse(body) as { error?: { code?: string; message?: string } };
    if (parsed.error?.code !== undefined) return new CachefsError(errorCodeOf(parsed.error.code), parsed.error.message ?? `worker answered ${status}`);
  } catch {
    // not our error body
  }
  return new CachefsError('IO', `worker answered ${status}`);
}
