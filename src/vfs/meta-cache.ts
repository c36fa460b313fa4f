/**
 * Metadata cache of the filesystem, within a byte budget (three quarters of
 * `--meta-cache-size`; the nodes readdirplus makes have the rest, `vfs.ts`):
 * entries by key (negative entries too) and complete directory listings by key,
 * each with a TTL, evicted least recently used first when the budget is spent. An
 * evicted entry is asked of the store again when next needed; node ids and open
 * files do not depend on it (they are `vfs.ts`'s). A fresh listing of a directory
 * also answers lookups of its children, so `ls -l` and `find` cost one listing per
 * directory, not one request per file. A listing larger than a quarter of the
 * budget is not kept whole: its entries are kept one by one, like looked-up ones.
 *
 * Sizes are estimates of what V8 holds for each (strings at two bytes a character,
 * objects and map slots at what a heap snapshot showed), not exact counts.
 */
import { LRUCache } from 'lru-cache';
import type { Known } from './entry.js';
import type { Child } from './filesystem.js';

/**
 * A directory's listing: its children in the order the store listed them, found by name
 * through an index made when first asked (a listing only paged through, `ls -f`, never
 * pays for it). Complete once kept whole; while it is being read (`add`), a partial one.
 */
export class Listing {
  private byName: Map<string, Known> | undefined;

  constructor(private readonly list: Child[]) {}

  get children(): readonly Child[] {
    return this.list;
  }

  /** Appends a child to a listing still being read. */
  add(child: Child): void {
    this.list.push(child);
    this.byName?.set(child.name, child.entry);
  }

  get(name: string): Known | undefined {
    if (!this.byName) {
      this.byName = new Map();
      for (const child of this.list) this.byName.set(child.name, child.entry);
    }
    return this.byName.get(name);
  }
}

/** Listings being read whose children so far answer lookups, at most this many (the latest). */
const MAX_PARTIAL_LISTINGS = 8;

const MISSING = Symbol('missing');
type Cached = Known | typeof MISSING;

/** Bytes of an entry object, its LRU node and map slot, beside its strings. */
const ENTRY_OVERHEAD = 200;
/** Bytes of a child's slot in a listing's map, beside its name and entry. */
const CHILD_OVERHEAD = 40;

/** Estimated bytes an entry holds in memory (a file by name alone shares its page's batch). */
export function entryBytes(entry: Known | null): number {
  if (!entry) return ENTRY_OVERHEAD;
  return ENTRY_OVERHEAD + 2 * entry.key.length + (entry.kind === 'file' ? 2 * entry.etag.length : 0);
}

/** Estimated bytes a child of a listing holds: its name, its entry and its map slot. */
export function childBytes(name: string, entry: Known): number {
  return CHILD_OVERHEAD + 2 * name.length + entryBytes(entry);
}

export class MetaCache {
  /** Values as they are (no wrapper object: 9 MiB of a million-file walk's 300,000 entries). */
  private readonly entries: LRUCache<string, Cached>;
  private readonly listings: LRUCache<string, Listing>;
  private readonly listingBytes = new WeakMap<Listing, number>();
  /**
   * Listings being read from their start and not yet kept whole, by directory key: their
   * children so far answer lookups (find stats the first 100,000 entries of a directory
   * before its listing has ended: each was asked of the store alone, not by its page).
   */
  private readonly partial = new Map<string, Listing>();
  /** The largest listing kept whole, bytes. */
  readonly maxListingBytes: number;

  constructor(ttlMs: number, budgetBytes: number) {
    const ttl = Math.max(1, ttlMs);
    const half = Math.max(1, Math.floor(budgetBytes / 2));
    this.maxListingBytes = Math.floor(budgetBytes / 4);
    this.entries = new LRUCache({ maxSize: half, sizeCalculation: (e, key) => entryBytes(e === MISSING ? null : e) + 2 * key.length, ttl, ttlAutopurge: false });
    this.listings = new LRUCache({ maxSize: half, sizeCalculation: (l) => Math.max(1, this.listingBytes.get(l) ?? 1), ttl, ttlAutopurge: false });
  }

  /** The cached entry (a file by name alone too), `null` when known missing, `undefined` when unknown. */
  get(key: string, parent: string, name: string): Known | null | undefined {
    const hit = this.entries.get(key);
    if (hit) return hit === MISSING ? null : hit;
    const listing = this.listings.get(parent);
    if (listing) return listing.get(name) ?? null;
    return this.partial.get(parent)?.get(name);
  }

  /** A listing being read of the directory `key`, whose children so far answer lookups until it is dropped. */
  setPartial(key: string, listing: Listing): void {
    this.partial.delete(key);
    this.partial.set(key, listing);
    for (const old of this.partial.keys()) {
      if (this.partial.size <= MAX_PARTIAL_LISTINGS) break;
      this.partial.delete(old);
    }
  }

  /** The listing being read of `key` is kept whole now, or its entries one by one, or no longer read. */
  dropPartial(key: string, listing: Listing): void {
    if (this.partial.get(key) === listing) this.partial.delete(key);
  }

  /** Whether a listing of the directory `key` is being read (and answers lookups as it goes). */
  isListing(key: string): boolean {
    return this.partial.has(key);
  }

  /** The entry cached for `key` itself (not from its parent's listing): `null` when known missing, `undefined` when unknown. */
  entry(key: string): Known | null | undefined {
    const hit = this.entries.get(key);
    return hit && (hit === MISSING ? null : hit);
  }

  set(key: string, entry: Known | null): void {
    this.entries.set(key, entry ?? MISSING);
  }

  listing(key: string): Listing | undefined {
    return this.listings.get(key);
  }

  /** Keeps a complete listing of `bytes` (estimated); false when it is too large to keep whole. */
  setListing(key: string, listing: Listing, bytes: number): boolean {
    if (bytes > this.maxListingBytes) return false;
    this.listingBytes.set(listing, bytes);
    this.listings.set(key, listing);
    return true;
  }

  /** Forgets what is known of a key (e.g. its object changed under a reader). */
  invalidate(key: string, parent: string): void {
    this.entries.delete(key);
    this.listings.delete(key);
    this.listings.delete(parent);
    this.partial.delete(key);
    this.partial.delete(parent);
  }

  /** Estimated bytes held. */
  get bytes(): number {
    return this.entries.calculatedSize + this.listings.calculatedSize;
  }
}
