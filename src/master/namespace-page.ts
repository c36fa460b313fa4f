/**
 * Pages of the shared namespace cache's listings, as the master and a cluster
 * mount both cut them: the cache holds a directory as the pages the UFS gave
 * (`UFS_PAGE_KEYS` keys each), and a caller asking for fewer keys gets a slice
 * of one. A position in a listing is a `NamespaceCursor` — the UFS's own token
 * for the page, the page's index, an offset into it and, when the page came
 * from the master's cache, the generation of the listing it belongs to — sent
 * to callers as an opaque string. Because the cursor carries the UFS token, a
 * listing can continue on whichever side answers: from the master's cache, from
 * the UFS through the master when the cache holds another generation, or from
 * the UFS directly when the master is down. No I/O.
 */
import { CachefsError } from '../errors.js';
import type { UfsListPage, UfsObject } from '../ufs/ufs.js';

/** Keys per page asked of the UFS: the most one S3 LIST answers. */
export const UFS_PAGE_KEYS = 1000;

export interface NamespaceCursor {
  /** Index of the UFS page (0 for the first). */
  page: number;
  /** The UFS's token for that page; absent for the first. */
  token?: string;
  /** Entries of the page already handed out. */
  offset: number;
  /** The cached listing's generation, when the page came from the master's cache. */
  generation?: string;
}

export const FIRST_PAGE: NamespaceCursor = { page: 0, offset: 0 };

export function encodeCursor(c: NamespaceCursor): string {
  return Buffer.from(JSON.stringify([c.page, c.offset, c.token ?? null, c.generation ?? null])).toString('base64url');
}

export function decodeCursor(text: string): NamespaceCursor {
  const bad = (): CachefsError => new CachefsError('INVALID_ARGUMENT', `invalid listing cursor '${text.slice(0, 64)}': expected one this listing handed out`);
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(text, 'base64url').toString('utf8')) as unknown;
  } catch {
    throw bad();
  }
  if (!Array.isArray(value) || value.length !== 4) throw bad();
  const [page, offset, token, generation] = value as unknown[];
  if (!Number.isSafeInteger(page) || (page as number) < 0 || !Number.isSafeInteger(offset) || (offset as number) < 0) throw bad();
  if ((token !== null && typeof token !== 'string') || (generation !== null && typeof generation !== 'string')) throw bad();
  if ((page as number) > 0 && token === null) throw bad();
  return { page: page as number, offset: offset as number, ...(token === null ? {} : { token }), ...(generation === null ? {} : { generation }) };
}

/** One UFS page as the cache holds it: its entries and the UFS's token for the next page. */
export interface UfsPage {
  objects: UfsObject[];
  prefixes: string[];
  next?: string;
}

export function ufsPage(p: UfsListPage): UfsPage {
  return { objects: p.objects, prefixes: p.prefixes, ...(p.nextToken === undefined ? {} : { next: p.nextToken }) };
}

/**
 * Up to `maxKeys` entries of `page` from `at.offset`, objects and prefixes merged in key
 * order (so that an offset means the same on both sides), with the cursor of what follows:
 * the rest of this page, else the next UFS page, else none.
 */
export function slicePage(page: UfsPage, at: NamespaceCursor, maxKeys: number): { objects: UfsObject[]; prefixes: string[]; cursor?: NamespaceCursor } {
  const merged: ({ object: UfsObject } | { prefix: string })[] = [];
  let i = 0;
  let j = 0;
  while (i < page.objects.length || j < page.prefixes.length) {
    const o = page.objects[i];
    const p = page.prefixes[j];
    if (o !== undefined && (p === undefined || o.key <= p)) {
      merged.push({ object: o });
      i++;
    } else {
      merged.push({ prefix: p! });
      j++;
    }
  }
  const end = Math.min(merged.length, at.offset + Math.max(1, maxKeys));
  const taken = merged.slice(at.offset, end);
  const objects = taken.flatMap((e) => ('object' in e ? [e.object] : []));
  const prefixes = taken.flatMap((e) => ('prefix' in e ? [e.prefix] : []));
  let cursor: NamespaceCursor | undefined;
  if (end < merged.length) cursor = { ...at, offset: end };
  else if (page.next !== undefined) cursor = { page: at.page + 1, token: page.next, offset: 0, ...(at.generation === undefined ? {} : { generation: at.generation }) };
  return { objects, prefixes, ...(cursor ? { cursor } : {}) };
}
