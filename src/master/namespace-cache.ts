/**
 * The shared namespace cache: directory listings and object attributes of the
 * cluster namespace, kept on the master for every mount of the cluster, so that
 * the UFS is asked once per directory (and once per stat) per TTL for the whole
 * cluster rather than once per mount.
 *
 * Records live in the master's `MetaStore` (LMDB in `--meta-dir`), written before
 * the answer that fetched them is sent, so they survive `kill -9` and restart:
 *
 * - `ns/dir/<prefix>`: a listing's generation and when its first page was fetched;
 * - `ns/page/<prefix>\0<n>`: page n of that generation (the UFS's page, with its token
 *   for the next);
 * - `ns/stat/<key>`: the object at a key, or that there is none, and when that was asked.
 *
 * A listing is fetched a page at a time, as callers page through it: page 0 starts a new
 * generation once the TTL has passed (or `refresh` dropped the listing); later pages
 * belong to the generation of the cursor that asks for them. Concurrent misses of one
 * page or one stat share one UFS request (single flight). Bounded per directory: the
 * first `CACHED_PAGES_PER_DIR` pages (100,000 entries) are kept; beyond, and for a
 * cursor of another generation, pages are read from the UFS for each caller (still
 * shared by concurrent ones) and not stored, so a million-entry directory streams
 * through instead of filling the store. Expired records stay until they are fetched
 * again or refreshed.
 */
import { randomBytes } from 'node:crypto';
import { SingleFlight } from '../lib/single-flight.js';
import type { Logger } from '../log.js';
import type { Ufs, UfsObject } from '../ufs/ufs.js';
import { decodeNamespaceList, decodeUfsObject } from './api.js';
import { Fields } from './decode.js';
import type { MetaStore, MetaWrite } from './meta-store.js';
import type { MasterMetrics } from './metrics.js';
import { FIRST_PAGE, UFS_PAGE_KEYS, encodeCursor, decodeCursor, slicePage, ufsPage, type NamespaceCursor, type UfsPage } from './namespace-page.js';

/** Pages of one directory kept in the store; further pages stream from the UFS. */
export const CACHED_PAGES_PER_DIR = 100;
export const DEFAULT_NAMESPACE_TTL_MS = 5 * 60_000;
/** LMDB refuses keys above 1978 bytes; longer names are served without caching. */
const MAX_STORE_KEY_BYTES = 1900;

const DIR = 'ns/dir/';
const PAGE = 'ns/page/';
const STAT = 'ns/stat/';

interface DirRecord {
  generation: string;
  fetchedAt: number;
}

interface PageRecord extends UfsPage {
  generation: string;
}

interface StatRecord {
  fetchedAt: number;
  object: UfsObject | null;
}

export interface NamespaceListAnswer {
  objects: UfsObject[];
  prefixes: string[];
  /** Where the listing goes on; absent after its last entry. */
  cursor?: string;
}

export interface RefreshAnswer {
  /** Listings dropped (the path's, those below it and its parent's). */
  listings: number;
  /** Stats dropped (the path's and those below it). */
  stats: number;
}

function pageKey(prefix: string, n: number): string {
  return `${PAGE}${prefix}\0${n}`;
}

function storable(key: string): boolean {
  return Buffer.byteLength(key) <= MAX_STORE_KEY_BYTES;
}

export class NamespaceCache {
  private readonly pages = new SingleFlight<{ page: UfsPage; cursor: NamespaceCursor }>();
  private readonly stats = new SingleFlight<UfsObject | null>();
  /**
   * Counts refreshes: a fetch started before one neither stores what it got nor is
   * joined by requests after it (its key carries the count), so `refresh` means that
   * the next request asks the UFS.
   */
  private epoch = 0;
  /** Saves under way, which a refresh waits for so that it sees (and drops) what they write. */
  private readonly saving = new Set<Promise<void>>();

  constructor(
    private readonly ufs: Ufs,
    private readonly store: MetaStore,
    private readonly ttlMs: number,
    private readonly metrics: MasterMetrics,
    private readonly log: Logger,
  ) {}

  /** One page of the listing of `prefix` ('' for the root, else ending in '/') from `cursor` (the start when absent). */
  async list(prefix: string, cursor: string | undefined, maxKeys: number): Promise<NamespaceListAnswer> {
    const at = cursor === undefined ? FIRST_PAGE : decodeCursor(cursor);
    const { page, cursor: from } = at.page === 0 && at.token === undefined ? await this.firstPage(prefix) : await this.laterPage(prefix, at);
    const slice = slicePage(page, { ...from, offset: at.offset }, Math.min(maxKeys, UFS_PAGE_KEYS));
    return { objects: slice.objects, prefixes: slice.prefixes, ...(slice.cursor ? { cursor: encodeCursor(slice.cursor) } : {}) };
  }

  /** The object at `key`, or null. */
  async stat(key: string): Promise<UfsObject | null> {
    const storeKey = STAT + key;
    if (!storable(storeKey)) return this.statUfs(key);
    const record = decodeStat(await this.store.get(storeKey));
    if (record && this.fresh(record.fetchedAt)) {
      this.metrics.namespaceRequests.inc({ op: 'stat', result: 'hit' });
      return record.object;
    }
    this.metrics.namespaceRequests.inc({ op: 'stat', result: 'miss' });
    const epoch = this.epoch;
    return this.stats.do(`${epoch}\0${key}`, async () => {
      const object = await this.statUfs(key);
      await this.save(epoch, [{ key: storeKey, value: { fetchedAt: Date.now(), object } satisfies StatRecord }]);
      return object;
    });
  }

  /**
   * Drops what is cached of the namespace path `path` ('' for the root, no slashes at
   * the ends): its listing and every listing below it, its stat and every stat below it,
   * and its parent's listing (where its entry shows).
   */
  async refresh(path: string): Promise<RefreshAnswer> {
    this.epoch++;
    await Promise.all([...this.saving]);
    const below = path === '' ? '' : `${path}/`;
    const dirKeys = await this.store.keys(DIR + below);
    const pageKeys = await this.store.keys(PAGE + below);
    const statKeys = [...(path === '' ? [] : [STAT + path]), ...(await this.store.keys(STAT + below))];
    if (path !== '') {
      const parent = path.includes('/') ? `${path.slice(0, path.lastIndexOf('/'))}/` : '';
      dirKeys.push(DIR + parent);
      pageKeys.push(...(await this.store.keys(`${PAGE}${parent}\0`)));
    }
    const writes: MetaWrite[] = [];
    let listings = 0;
    let stats = 0;
    for (const key of dirKeys) {
      if ((await this.store.get(key)) === undefined) continue;
      listings++;
      writes.push({ key, delete: true });
    }
    for (const key of statKeys) {
      if ((await this.store.get(key)) === undefined) continue;
      stats++;
      writes.push({ key, delete: true });
    }
    for (const key of pageKeys) writes.push({ key, delete: true });
    await this.store.commit(writes);
    this.log.info({ path: `/${path}`, listings, stats }, 'namespace cache refreshed');
    return { listings, stats };
  }

  /** Drops the listing of one directory (`prefix` '' or ending in '/'), nothing below it. */
  async dropListing(prefix: string): Promise<void> {
    this.epoch++;
    await Promise.all([...this.saving]);
    const pages = await this.store.keys(`${PAGE}${prefix}\0`);
    await this.store.commit([{ key: DIR + prefix, delete: true }, ...pages.map((key): MetaWrite => ({ key, delete: true }))]);
  }

  private fresh(fetchedAt: number): boolean {
    const age = Date.now() - fetchedAt;
    return age >= 0 && age < this.ttlMs;
  }

  /** Page 0 of the current generation, or of a new one when the listing expired. */
  private async firstPage(prefix: string): Promise<{ page: UfsPage; cursor: NamespaceCursor }> {
    const dirKey = DIR + prefix;
    if (!storable(pageKey(prefix, CACHED_PAGES_PER_DIR))) return this.passthrough(prefix, FIRST_PAGE);
    const dir = decodeDir(await this.store.get(dirKey));
    if (dir && this.fresh(dir.fetchedAt)) {
      const page = decodePage(await this.store.get(pageKey(prefix, 0)), dir.generation);
      if (page) {
        this.metrics.namespaceRequests.inc({ op: 'list', result: 'hit' });
        return { page, cursor: { ...FIRST_PAGE, generation: dir.generation } };
      }
    }
    this.metrics.namespaceRequests.inc({ op: 'list', result: 'miss' });
    const epoch = this.epoch;
    return this.pages.do(`first\0${epoch}\0${prefix}`, async () => {
      const page = await this.listUfs(prefix, undefined);
      const generation = randomBytes(6).toString('hex');
      const stale = await this.store.keys(`${PAGE}${prefix}\0`);
      await this.save(epoch, [
        ...stale.map((key): MetaWrite => ({ key, delete: true })),
        { key: dirKey, value: { generation, fetchedAt: Date.now() } satisfies DirRecord },
        { key: pageKey(prefix, 0), value: { ...page, generation } satisfies PageRecord },
      ]);
      return { page, cursor: { ...FIRST_PAGE, generation } };
    });
  }

  /** A page after the first: from the cache when the cursor's generation is the cached one, else from the UFS. */
  private async laterPage(prefix: string, at: NamespaceCursor): Promise<{ page: UfsPage; cursor: NamespaceCursor }> {
    const dir = at.generation === undefined ? undefined : decodeDir(await this.store.get(DIR + prefix));
    if (!dir || dir.generation !== at.generation || at.page >= CACHED_PAGES_PER_DIR) return this.passthrough(prefix, at);
    const generation = dir.generation;
    const cached = decodePage(await this.store.get(pageKey(prefix, at.page)), generation);
    if (cached) {
      this.metrics.namespaceRequests.inc({ op: 'list', result: 'hit' });
      return { page: cached, cursor: at };
    }
    this.metrics.namespaceRequests.inc({ op: 'list', result: 'miss' });
    const epoch = this.epoch;
    return this.pages.do(`page\0${epoch}\0${prefix}\0${generation}\0${at.page}`, async () => {
      const page = await this.listUfs(prefix, at.token);
      await this.save(epoch, [{ key: pageKey(prefix, at.page), value: { ...page, generation } satisfies PageRecord }]);
      return { page, cursor: at };
    });
  }

  /** A page read from the UFS for the caller and not kept; concurrent callers of one page share the request. */
  private passthrough(prefix: string, at: NamespaceCursor): Promise<{ page: UfsPage; cursor: NamespaceCursor }> {
    this.metrics.namespaceRequests.inc({ op: 'list', result: 'passthrough' });
    // Without a generation, every later page of this listing comes through here too.
    const cursor: NamespaceCursor = { page: at.page, offset: 0, ...(at.token === undefined ? {} : { token: at.token }) };
    return this.pages.do(`through\0${prefix}\0${at.token ?? ''}`, async () => ({ page: await this.listUfs(prefix, at.token), cursor }));
  }

  private async listUfs(prefix: string, token: string | undefined): Promise<UfsPage> {
    this.metrics.namespaceUfsRequests.inc({ op: 'list' });
    return ufsPage(await this.ufs.list(prefix, { maxKeys: UFS_PAGE_KEYS, ...(token === undefined ? {} : { token }) }));
  }

  private async statUfs(key: string): Promise<UfsObject | null> {
    this.metrics.namespaceUfsRequests.inc({ op: 'stat' });
    return this.ufs.stat(key);
  }

  /** Stores what was fetched unless a refresh came since; a store that fails costs the cache, never the answer. */
  private async save(epoch: number, writes: MetaWrite[]): Promise<void> {
    if (epoch !== this.epoch) return;
    const saved = this.store.commit(writes).catch((err: unknown) => {
      this.log.warn({ err: (err as Error).message }, 'cannot store namespace cache records');
    });
    this.saving.add(saved);
    await saved.finally(() => this.saving.delete(saved));
  }
}

function decodeDir(value: unknown): DirRecord | undefined {
  if (value === undefined) return undefined;
  try {
    const f = Fields.of(value, 'namespace listing record');
    return { generation: f.string('generation'), fetchedAt: f.count('fetchedAt') };
  } catch {
    return undefined;
  }
}

function decodePage(value: unknown, generation: string): UfsPage | undefined {
  if (value === undefined) return undefined;
  try {
    const f = Fields.of(value, 'namespace page record');
    if (f.string('generation') !== generation) return undefined;
    const next = f.optionalString('next');
    const { objects, prefixes } = decodeNamespaceList(value);
    return { objects, prefixes, ...(next === undefined ? {} : { next }) };
  } catch {
    return undefined;
  }
}

function decodeStat(value: unknown): StatRecord | undefined {
  if (value === undefined) return undefined;
  try {
    const f = Fields.of(value, 'namespace stat record');
    const object = f.raw('object');
    return { fetchedAt: f.count('fetchedAt'), object: object === null ? null : decodeUfsObject(object, 'object') };
  } catch {
    return undefined;
  }
}
