/**
 * The cachefs tree by path: resolves paths to entries through the metadata cache
 * and the UFS, lists directories, and says which object a file open reads.
 * Read-only: every write is refused with READ_ONLY. Node ids, handles and reads
 * are `vfs.ts`'s. All failures are CachefsErrors; `fuse/errno.ts` maps them.
 */
import { constants } from 'node:fs';
import type { ObjectRef } from '../block/block.js';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Ufs } from '../ufs/ufs.js';
import { SingleFlight } from '../lib/single-flight.js';
import { attrOf, fileEntry, type Attr, type Entry, type Known, type ListedFile } from './entry.js';
import { ListingStream, NameMerge } from './listing.js';
import { LookupListing } from './lookup-listing.js';
import { MetaCache, type Listing } from './meta-cache.js';
import { baseName, isPosixName, keyOfPath, parentKey } from './names.js';
import type { StatBatch, StatFiles } from './stat-batch.js';

export interface FilesystemConfig {
  ufs: Ufs;
  /** Identifies the UFS root in block ids. */
  mountId: string;
  metaTtlMs: number;
  /** The budget of metadata (--meta-cache-size), bytes: three quarters of it are the metadata cache's, one the nodes' (vfs.ts). */
  metaBudgetBytes: number;
  owner: { uid: number; gid: number };
  /** Reported by statfs as the size of the filesystem. */
  capacityBytes: number;
  metrics: Metrics;
  log: Logger;
}

/** A child of a directory as listed: its name and its entry. */
export interface Child {
  name: string;
  /** A file listed by name alone gets its entry here once it is stat'ed (`settled`). */
  entry: Known;
}

/**
 * Where a listing continues: the store's token, and the files of the pages before held
 * back because a directory of the same name may still come (`a` is listed before `a-b`,
 * which is before the prefix `a/`).
 */
export interface ListCursor {
  readonly token?: string;
  readonly held: readonly Child[];
}

/** One page of a listing: the children it settled, and where the listing continues (none at its end). */
export interface ListedPage {
  children: Child[];
  next?: ListCursor;
  /** Its files listed by name alone, stat'ed together when one is asked for. */
  batch?: StatBatch;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  namemax: number;
}

/** Keys asked of the store per listing page (S3's most). */
export const LIST_PAGE = 1000;
/** Linux's access-mode mask of open(2) flags; node:fs does not export it. */
const O_ACCMODE = 0o3;

export class Filesystem {
  private readonly ufs: Ufs;
  private readonly cache: MetaCache;
  private readonly lookups = new SingleFlight<Entry | null>();
  private readonly lists = new SingleFlight<ListedPage>();
  private readonly mountedAt = Date.now();
  /** Lists a directory whose names are looked up one by one; none where listings give names alone. */
  private readonly lookupListing: LookupListing | undefined;

  constructor(private readonly config: FilesystemConfig) {
    this.ufs = config.ufs;
    this.cache = new MetaCache(config.metaTtlMs, Math.floor((config.metaBudgetBytes * 3) / 4));
    config.metrics.metaCacheBytes.sampledBy(() => this.cache.bytes);
    if (!this.ufs.listsByName) this.lookupListing = new LookupListing((dirKey) => this.streamListing(dirKey), (dirKey) => this.cache.isListing(dirKey), config.metrics, config.log);
  }

  /** Starts no more listings for lookups. */
  close(): void {
    this.lookupListing?.close();
  }

  /** The attributes at `path`: at once when its entry is known (a walk's lookups mostly are), else a promise. */
  getattr(path: string): Attr | Promise<Attr> {
    const entry = this.lookup(path);
    return entry instanceof Promise ? entry.then((e) => attrOf(e, this.config.owner)) : attrOf(entry, this.config.owner);
  }

  /** The entry at `path`: at once when it is cached and known, else a promise (asked of the store, or a file listed by name alone stat'ed). */
  lookup(path: string): Entry | Promise<Entry> {
    const key = keyOfPath(path);
    if (key === '') return { kind: 'dir', key: '', mtimeMs: this.mountedAt };
    const parent = parentKey(key);
    const name = baseName(key);
    if (!isPosixName(name)) throw notFound(path);
    // What the cache knows is under a parent that was asked of the store, so checked then.
    const cached = this.cache.get(key, parent, name);
    if (cached !== undefined) {
      this.config.metrics.metaCacheHits.inc();
      if (cached === null) throw notFound(path);
      if (cached.kind !== 'listed') return cached;
      return this.found(path, this.resolve(cached, true));
    }
    if (!parent.split('/').every((p, i) => (i === 0 && p === '') || isPosixName(p))) throw notFound(path);
    this.config.metrics.metaCacheMisses.inc();
    this.lookupListing?.missed(parent);
    return this.found(path, this.lookups.do(key, () => this.probe(key)));
  }

  /** The entry found at `path`, NOT_FOUND when there is none. */
  private found(path: string, entry: Entry | null | Promise<Entry | null>): Entry | Promise<Entry> {
    if (entry instanceof Promise) return entry.then((e) => this.found(path, e));
    if (!entry) throw notFound(path);
    return entry;
  }

  /** Asks the UFS what `key` is: a directory (any key below it) wins over an object of the same name. */
  private async probe(key: string): Promise<Entry | null> {
    this.config.metrics.ufsRequests.inc({ op: 'stat' });
    this.config.metrics.ufsRequests.inc({ op: 'list' });
    const [object, below] = await Promise.all([this.ufs.stat(key), this.ufs.list(`${key}/`, { maxKeys: 1 })]);
    let entry: Entry | null = null;
    if (below.objects.length > 0 || below.prefixes.length > 0) entry = { kind: 'dir', key, mtimeMs: below.objects[0]?.mtimeMs ?? this.mountedAt };
    else if (object) entry = fileEntry({ ...object, key });
    this.cache.set(key, entry);
    return entry;
  }

  /** The entry of a file listed by name alone: as cached since it was stat'ed, else stat'ed with its page (and the next page's `ahead`). */
  private resolve(listed: ListedFile, ahead: boolean): Promise<Entry | null> | Entry | null {
    const known = this.cache.entry(listed.key);
    if (known !== undefined && known?.kind !== 'listed') return known;
    return listed.batch.entry(listed.key, this.statFiles, ahead);
  }

  /** Stats files a listing gave by name alone (together where the store can), and keeps their entries (or their absence). */
  private readonly statFiles: StatFiles = async (keys) => {
    this.config.metrics.ufsRequests.inc({ op: 'stat' }, keys.length);
    const objects = this.ufs.statFiles ? await this.ufs.statFiles(keys) : await Promise.all(keys.map((k) => this.ufs.stat(k)));
    return objects.map((object, i) => {
      const entry = object && fileEntry(object);
      this.cache.set(keys[i]!, entry);
      return entry;
    });
  };

  /**
   * A child's entry when it is known without asking the store: as listed, or for a file
   * listed by name alone, as stat'ed since (a lookup of it or of a file of its page), which
   * the child keeps from then on. Undefined while it is not: readdirplus then gives its name
   * alone rather than wait for a stat (`ls -f` of a cold folder would wait for every inode).
   */
  settled(child: Child): Entry | undefined {
    const listed = child.entry;
    if (listed.kind !== 'listed') return listed;
    const known = this.cache.entry(listed.key);
    if (!known || known.kind === 'listed') return undefined;
    child.entry = known;
    return known;
  }

  /**
   * For a file listed by name alone whose entry is not known and whose page's stats have not
   * come: those stats (and the next page's, ahead), asked for now if they were not. Undefined
   * for any other child (one whose stats came and went from the cache since is not asked for
   * again here: the kernel looks it up when it needs it).
   */
  settle(child: Child): Promise<unknown> | undefined {
    const listed = child.entry;
    if (listed.kind !== 'listed' || listed.batch.done || this.settled(child)) return undefined;
    return listed.batch.entry(listed.key, this.statFiles, true);
  }

  /** Whether listings give files by name alone (their attributes cost a request each). */
  get listsByName(): boolean {
    return this.ufs.listsByName === true;
  }

  /** The directory at `path`, and its complete listing when a fresh one is cached. */
  async openDir(path: string): Promise<{ dir: Entry; listing: Listing | undefined }> {
    const dir = await this.lookup(path);
    if (dir.kind !== 'dir') throw new CachefsError('NOT_DIRECTORY', `not a directory: ${path}`);
    return { dir, listing: this.cache.listing(dir.key) };
  }

  /** The complete listing of the directory at `path` when a fresh one is cached (nothing is asked of the store). */
  cachedListing(path: string): Listing | undefined {
    return this.cache.listing(keyOfPath(path));
  }

  /** The attributes of an entry as the kernel gets them. */
  attrOf(entry: Entry): Attr {
    return attrOf(entry, this.config.owner);
  }

  /**
   * A listing of the directory `dirKey` read page by page from the store, as readdir
   * asks for it: the first entries come after one page of the store, and a directory
   * of any size can be listed. Read from its start to its end in order, it is cached
   * whole when it fits the budget, else its entries one by one.
   */
  streamListing(dirKey: string): ListingStream {
    return new ListingStream(dirKey, (cursor, signal) => this.listPage(dirKey, cursor, signal), this.cache, this.config.metrics);
  }

  /** One page of a listing from `cursor`; concurrent asks for the same page share one request. */
  private listPage(key: string, cursor: ListCursor, signal?: AbortSignal): Promise<ListedPage> {
    return this.lists.do(`${key}\0${cursor.token ?? ''}`, async (shared) => {
      const prefix = key === '' ? '' : `${key}/`;
      this.config.metrics.ufsRequests.inc({ op: 'list' });
      // Names alone where attributes cost a request each: a plain readdir (`ls -f`) needs none.
      const page = await this.ufs.list(prefix, { token: cursor.token, maxKeys: LIST_PAGE, signal: shared, names: true });
      const merged = new NameMerge(prefix, this.mountedAt, cursor.held);
      merged.page(page.objects, page.prefixes, page.names);
      const children = page.nextToken ? merged.children : merged.end();
      if (merged.skipped.length) {
        this.config.metrics.skippedNames.inc(merged.skipped.length);
        this.config.log.warn({ directory: prefix || '/', skipped: merged.skipped.length, example: merged.skipped[0] }, 'object names that cannot be POSIX names were left out of the listing');
      }
      return { children, next: page.nextToken ? { token: page.nextToken, held: merged.carried() } : undefined, batch: merged.batch };
    }, signal);
  }

  /** The object a read-only open of `path` reads; a write open is refused. */
  async open(path: string, flags: number): Promise<ObjectRef> {
    if ((flags & O_ACCMODE) !== constants.O_RDONLY || flags & constants.O_TRUNC || flags & constants.O_CREAT) throw readOnly(path);
    const entry = await this.lookup(path);
    if (entry.kind !== 'file') throw new CachefsError('IS_DIRECTORY', `is a directory: ${path}`);
    return { mount: this.config.mountId, key: entry.key, etag: entry.etag, size: entry.size };
  }

  /**
   * The files of a directory as its cached listing has them, as objects an open would
   * read; undefined when no fresh listing of it is cached (nothing is asked of the store).
   * Files listed by name alone are left out: their sizes are not known.
   */
  listedFiles(dirKey: string): ObjectRef[] | undefined {
    const listing = this.cache.listing(dirKey);
    if (!listing) return undefined;
    const files: ObjectRef[] = [];
    for (const { entry } of listing.children) {
      if (entry.kind === 'file') files.push({ mount: this.config.mountId, key: entry.key, etag: entry.etag, size: entry.size });
    }
    return files;
  }

  /** Forgets what is known of an object that changed under a reader, and of its directory's listing. */
  objectChanged(key: string): void {
    this.cache.invalidate(key, parentKey(key));
  }

  async access(path: string, mode: number): Promise<void> {
    await this.lookup(path);
    if (mode & constants.W_OK) throw readOnly(path);
  }

  statfs(): StatFs {
    const bsize = 4096;
    const blocks = Math.floor(this.config.capacityBytes / bsize);
    return { bsize, frsize: bsize, blocks, bfree: 0, bavail: 0, files: 1_000_000, ffree: 0, favail: 0, namemax: 255 };
  }

  /** Every write operation ends here. */
  refuseWrite(path: string): never {
    throw readOnly(path);
  }
}

function notFound(path: string): CachefsError {
  return new CachefsError('NOT_FOUND', `no such file or directory: ${path}`);
}

function readOnly(path: string): CachefsError {
  return new CachefsError('READ_ONLY', `read-only file system: ${path}`);
}
