/**
 * Directory listings as pages of the store: `NameMerge` turns one page of a
 * delimiter listing (objects and common prefixes, each in key order) into the
 * children of the directory, and `ListingStream` reads the pages of one directory
 * for readdir, keeping a listing read from its start to its end in the metadata
 * cache. Which pages an open directory keeps, and its offsets, are `dir-pages.ts`'s.
 *
 * A directory wins over an object of the same name. In key order the object `a`
 * comes before `a-b`, which comes before the prefix `a/`, so a file is held back
 * until a key shows that no directory of its name can follow; held files pass to
 * the next page with the listing's cursor.
 */
import type { Metrics } from '../metrics/metrics.js';
import type { UfsObject } from '../ufs/ufs.js';
import { fileEntry, type Known } from './entry.js';
import type { Child, ListCursor, ListedPage } from './filesystem.js';
import { childBytes, Listing, type MetaCache } from './meta-cache.js';
import { isPosixName } from './names.js';
import { StatBatch } from './stat-batch.js';

/** '/' : a name followed by a character below it may still have a directory of its name after it. */
const SLASH = 0x2f;

/** The cursor of a listing's first page. */
export const LISTING_START: ListCursor = Object.freeze({ token: undefined, held: Object.freeze([]) });

/** The children of one page of a listing, merged from its objects and prefixes in key order. */
export class NameMerge {
  readonly children: Child[] = [];
  readonly skipped: string[] = [];
  /** Files that a directory of the same name may still shadow, each name a prefix of the next. */
  readonly held: Child[];
  /** The files of the last page taken that came by name alone. */
  batch: StatBatch | undefined;

  constructor(
    private readonly prefix: string,
    private readonly dirMtimeMs: number,
    held: readonly Child[],
  ) {
    this.held = [...held];
  }

  /**
   * Takes one page of the store's listing: objects and prefixes, each in key order, and
   * objects by name alone (`names`, a folder's: in its own order, which can hide nothing
   * behind a name, a folder's name being one file or one directory, so the merge needs no
   * order of them), each child once.
   */
  page(objects: readonly UfsObject[], prefixes: readonly string[], names: readonly string[] = []): void {
    const batch = names.length > 0 ? new StatBatch([...names]) : undefined;
    this.batch = batch;
    let o = 0;
    let p = 0;
    let n = 0;
    while (o < objects.length || p < prefixes.length || n < names.length) {
      const object = objects[o];
      const named = names[n];
      const dir = prefixes[p];
      if (named !== undefined && (object === undefined || named < object.key) && (dir === undefined || named < dir)) {
        n += 1;
        this.file(named, { kind: 'listed', key: named, batch: batch! });
      } else if (object !== undefined && (dir === undefined || object.key < dir)) {
        o += 1;
        this.file(object.key, fileEntry(object));
      } else if (dir !== undefined) {
        p += 1;
        this.directory(dir);
      }
    }
  }

  /**
   * The held files as the cursor of the next page carries them: each file by name alone
   * with a batch of its own, so that a page kept only for its cursor (`dir-pages.ts`) does
   * not keep this page's batch, and with it every name of the page, until the directory is
   * released (a million-file listing grew the heap by 28 MB so). This page's batch stats
   * them too: a walk finds their entries cached, and their own batch is asked only if not.
   */
  carried(): Child[] {
    return this.held.map(({ name, entry }) => (entry.kind === 'listed' ? { name, entry: { kind: 'listed', key: entry.key, batch: new StatBatch([entry.key]) } } : { name, entry }));
  }

  /** The listing has ended: the files still held are settled. */
  end(): Child[] {
    this.children.push(...this.held.splice(0).reverse());
    return this.children;
  }

  private file(key: string, entry: Known): void {
    if (key === this.prefix) return; // the directory's own marker object
    const name = key.slice(this.prefix.length);
    if (name.endsWith('/') || !isPosixName(name)) return void this.skipped.push(key);
    this.settleBefore(name, false);
    this.held.push({ name, entry });
  }

  private directory(key: string): void {
    const name = key.slice(this.prefix.length, -1);
    if (!isPosixName(name)) return void this.skipped.push(key);
    this.settleBefore(name, true);
    this.children.push({ name, entry: { kind: 'dir', key: this.prefix + name, mtimeMs: this.dirMtimeMs } });
  }

  /** Settles the held files that no directory can shadow once `name` is listed; a directory drops the file of its name. */
  private settleBefore(name: string, isDir: boolean): void {
    for (let top = this.held.at(-1); top !== undefined; top = this.held.at(-1)) {
      if (isDir && top.name === name) {
        this.held.pop();
        return;
      }
      if (name.startsWith(top.name) && name.length > top.name.length && name.charCodeAt(top.name.length) < SLASH) return;
      this.children.push(this.held.pop()!);
    }
  }
}

/** Reads one page of a listing from a cursor. */
export type PageReader = (cursor: ListCursor, signal?: AbortSignal) => Promise<ListedPage>;

/**
 * The pages of one directory's listing. Pages read in order from the first are kept
 * in the metadata cache: the whole listing at its end when it fits, else each entry
 * as it comes (a later lookup or getattr of a child is then answered without the store).
 */
export class ListingStream {
  /** The cursor of the page that continues the in-order reading, undefined once it ended or went out of order. */
  private expected: ListCursor | undefined = LISTING_START;
  /** The listing read so far, while it may still be kept whole (its children answer lookups meanwhile). */
  private collected: Listing | undefined = new Listing([]);
  private bytes = 0;
  /** The batch of the last page read in order: the next page's is stat'ed ahead of it. */
  private lastBatch: StatBatch | undefined;

  constructor(
    private readonly key: string,
    private readonly read: PageReader,
    private readonly cache: MetaCache,
    private readonly metrics: Metrics,
  ) {}

  async page(cursor: ListCursor, signal?: AbortSignal): Promise<ListedPage> {
    const page = await this.read(cursor, signal);
    if (cursor === this.expected) {
      this.expected = page.next;
      this.keep(page);
      if (page.batch) {
        if (this.lastBatch) this.lastBatch.next = page.batch;
        this.lastBatch = page.batch;
      }
    }
    this.metrics.listedEntries.inc(page.children.length);
    return page;
  }

  private keep(page: ListedPage): void {
    for (const child of page.children) {
      const { name, entry } = child;
      if (this.collected) {
        if (this.collected.children.length === 0) this.cache.setPartial(this.key, this.collected);
        this.collected.add(child);
        this.bytes += childBytes(name, entry);
        if (this.bytes > this.cache.maxListingBytes) this.keepEach();
      } else this.keepEntry(entry);
    }
    if (page.next === undefined && this.collected) {
      this.cache.dropPartial(this.key, this.collected);
      this.cache.setListing(this.key, this.collected, this.bytes);
      this.collected = undefined;
    }
  }

  /** No more pages are read in order: what was read is kept entry by entry, as a listing too large to keep whole. */
  abandon(): void {
    if (this.collected) this.keepEach();
    this.expected = undefined;
  }

  /** The directory is released: what was read of its listing no longer answers lookups as a partial listing. */
  close(): void {
    if (this.collected) this.cache.dropPartial(this.key, this.collected);
  }

  /** Too large to keep whole: its entries are kept one by one from now on. */
  private keepEach(): void {
    this.cache.dropPartial(this.key, this.collected!);
    for (const { entry } of this.collected!.children) this.keepEntry(entry);
    this.collected = undefined;
  }

  /**
   * Keeps one entry that came with its attributes. A file by name alone is not kept: its
   * entry tells no more than that it was listed, and a lookup of it stats it either way.
   * Keeping each of a million files listed by name cost a cold `ls -f` of them twice its
   * time (10.7 s against 5.5 s): the entries filled the budget, evicting one another, and
   * every full collection marked the half million kept.
   */
  private keepEntry(entry: Known): void {
    if (entry.kind === 'listed') return;
    this.cache.set(entry.key, entry);
  }
}
