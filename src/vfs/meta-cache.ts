/**
 * Metadata cache of the filesystem: entries by key (negative entries too) and
 * complete directory listings by key, each with a TTL and bounded by LRU. A fresh
 * listing of a directory also answers lookups of its children, so `ls -l` and
 * `find` cost one listing per directory, not one request per file.
 */
import { LRUCache } from 'lru-cache';
import type { Entry } from './entry.js';

export interface Listing {
  /** Children by name, in byte order of their names. */
  children: Map<string, Entry>;
}

const MISSING = Symbol('missing');
type Cached = Entry | typeof MISSING;

export class MetaCache {
  private readonly entries: LRUCache<string, { value: Cached }>;
  private readonly listings: LRUCache<string, Listing>;

  constructor(ttlMs: number, maxEntries = 200_000, maxListedChildren = 2_000_000) {
    const ttl = Math.max(1, ttlMs);
    this.entries = new LRUCache({ max: maxEntries, ttl, ttlAutopurge: false });
    this.listings = new LRUCache({ maxSize: maxListedChildren, sizeCalculation: (l) => Math.max(1, l.children.size), ttl, ttlAutopurge: false });
  }

  /** The cached entry, `null` when known missing, `undefined` when unknown. */
  get(key: string, parent: string, name: string): Entry | null | undefined {
    const hit = this.entries.get(key);
    if (hit) return hit.value === MISSING ? null : hit.value;
    const listing = this.listings.get(parent);
    if (listing) return listing.children.get(name) ?? null;
    return undefined;
  }

  set(key: string, entry: Entry | null): void {
    this.entries.set(key, { value: entry ?? MISSING });
  }

  listing(key: string): Listing | undefined {
    return this.listings.get(key);
  }

  setListing(key: string, listing: Listing): void {
    this.listings.set(key, listing);
  }

  /** Forgets what is known of a key (e.g. its object changed under a reader). */
  invalidate(key: string, parent: string): void {
    this.entries.delete(key);
    this.listings.delete(key);
    this.listings.delete(parent);
  }
}
