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
import { attrOf, fileEntry, type Attr, type Entry } from './entry.js';
import { MetaCache, type Listing } from './meta-cache.js';
import { baseName, isPosixName, keyOfPath, parentKey } from './names.js';

export interface FilesystemConfig {
  ufs: Ufs;
  /** Identifies the UFS root in block ids. */
  mountId: string;
  metaTtlMs: number;
  owner: { uid: number; gid: number };
  /** Reported by statfs as the size of the filesystem. */
  capacityBytes: number;
  metrics: Metrics;
  log: Logger;
}

export interface DirEntry {
  name: string;
  attr: Attr;
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

const LIST_PAGE = 1000;
/** Linux's access-mode mask of open(2) flags; node:fs does not export it. */
const O_ACCMODE = 0o3;

export class Filesystem {
  private readonly ufs: Ufs;
  private readonly cache: MetaCache;
  private readonly lookups = new SingleFlight<Entry | null>();
  private readonly lists = new SingleFlight<Listing>();
  private readonly mountedAt = Date.now();

  constructor(private readonly config: FilesystemConfig) {
    this.ufs = config.ufs;
    this.cache = new MetaCache(config.metaTtlMs);
  }

  async getattr(path: string): Promise<Attr> {
    return attrOf(await this.lookup(path), this.config.owner);
  }

  async lookup(path: string): Promise<Entry> {
    const key = keyOfPath(path);
    if (key === '') return { kind: 'dir', key: '', mtimeMs: this.mountedAt };
    const parent = parentKey(key);
    const name = baseName(key);
    if (!key.split('/').every(isPosixName)) throw notFound(path);
    const cached = this.cache.get(key, parent, name);
    if (cached !== undefined) {
      this.config.metrics.metaCacheHits.inc();
      if (cached === null) throw notFound(path);
      return cached;
    }
    this.config.metrics.metaCacheMisses.inc();
    const entry = await this.lookups.do(key, () => this.probe(key));
    if (!entry) throw notFound(path);
    return entry;
  }

  /** Asks the UFS what `key` is: a directory (any key below it) wins over an object of the same name. */
  private async probe(key: string): Promise<Entry | null> {
    const [object, below] = await Promise.all([this.ufs.stat(key), this.ufs.list(`${key}/`, { maxKeys: 1 })]);
    let entry: Entry | null = null;
    if (below.objects.length > 0 || below.prefixes.length > 0) entry = { kind: 'dir', key, mtimeMs: below.objects[0]?.mtimeMs ?? this.mountedAt };
    else if (object) entry = fileEntry({ ...object, key });
    this.cache.set(key, entry);
    return entry;
  }

  async readdir(path: string): Promise<DirEntry[]> {
    const dir = await this.lookup(path);
    if (dir.kind !== 'dir') throw new CachefsError('NOT_DIRECTORY', `not a directory: ${path}`);
    const listing = this.cache.listing(dir.key) ?? (await this.lists.do(dir.key, () => this.listAll(dir.key)));
    const self = attrOf(dir, this.config.owner);
    const out: DirEntry[] = [
      { name: '.', attr: self },
      { name: '..', attr: self },
    ];
    for (const [name, entry] of listing.children) out.push({ name, attr: attrOf(entry, this.config.owner) });
    return out;
  }

  private async listAll(key: string): Promise<Listing> {
    const prefix = key === '' ? '' : `${key}/`;
    const children = new Map<string, Entry>();
    const skipped: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.ufs.list(prefix, { token, maxKeys: LIST_PAGE });
      for (const p of page.prefixes) {
        const name = p.slice(prefix.length, -1);
        if (!isPosixName(name)) skipped.push(p);
        else children.set(name, { kind: 'dir', key: prefix + name, mtimeMs: this.mountedAt });
      }
      for (const o of page.objects) {
        if (o.key === prefix) continue; // the directory's own marker object
        const name = o.key.slice(prefix.length);
        if (name.endsWith('/') || !isPosixName(name)) skipped.push(o.key);
        else if (children.get(name)?.kind !== 'dir') children.set(name, fileEntry(o));
      }
      token = page.nextToken;
    } while (token);
    if (skipped.length) {
      this.config.metrics.skippedNames.inc(skipped.length);
      this.config.log.warn({ directory: prefix || '/', skipped: skipped.length, example: skipped[0] }, 'object names that cannot be POSIX names were left out of the listing');
    }
    const sorted = new Map([...children.entries()].sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
    const listing = { children: sorted };
    this.cache.setListing(key, listing);
    return listing;
  }

  /** The object a read-only open of `path` reads; a write open is refused. */
  async open(path: string, flags: number): Promise<ObjectRef> {
    if ((flags & O_ACCMODE) !== constants.O_RDONLY || flags & constants.O_TRUNC || flags & constants.O_CREAT) throw readOnly(path);
    const entry = await this.lookup(path);
    if (entry.kind !== 'file') throw new CachefsError('IS_DIRECTORY', `is a directory: ${path}`);
    return { mount: this.config.mountId, key: entry.key, etag: entry.etag, size: entry.size };
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
