/**
 * Listing a directory whose names are looked up one by one: the policy that decides when a
 * lookup that missed the metadata cache makes cachefs list the name's directory. A data
 * loader opens its dataset's files by name, from an index, and never lists their
 * directory. Against an object store every such name then costs the two requests of a
 * lookup (the object's HEAD and a LIST of what is below its name), and in a cluster two
 * requests to the master, each going to the store on the master's own miss: a cold epoch
 * of 2,000 files took 26.8 s, against 1.9 s once the names were known.
 *
 * When: `afterMisses` lookups of one directory's names missed within `windowMs`, and no
 * listing of it is cached or being read. What: the directory's listing, read in
 * order in the background as readdir reads it (`Filesystem.streamListing`), so that the
 * metadata cache keeps it whole (or its entries one by one, if it is too large) and the
 * lookups that come next are answered from it, names that are absent included; the
 * lookups made meanwhile go to the store as before. How far: `maxPages` pages, plus one
 * for each lookup of the directory that missed while it was read: a loader that goes on
 * opening its files keeps the listing going to the end, a few names looked up in a large
 * directory do not list all of it. A listing that stops short keeps the entries it read;
 * that directory, or one whose listing failed, is not listed again for `retryMs`.
 *
 * Not for stores whose listings give names alone (a local folder): a lookup there is a
 * stat of the file, which a listing would not save.
 */
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ListCursor } from './filesystem.js';
import { LISTING_START, type ListingStream } from './listing.js';

export const LOOKUP_LISTING = {
  afterMisses: 16,
  windowMs: 10_000,
  /** 10,000 names at the store's 1,000 a page. */
  maxPages: 10,
  retryMs: 5 * 60_000,
  /** Directories whose misses are counted at once (the most recent). */
  trackedDirs: 256,
};

export type LookupListingPolicy = typeof LOOKUP_LISTING;

/** A listing under way: the pages it may still read. */
interface Reading {
  pagesLeft: number;
}

export class LookupListing {
  private readonly misses = new Map<string, { count: number; since: number }>();
  private readonly reading = new Map<string, Reading>();
  /** Directories not listed for lookups again before the time. */
  private readonly notBefore = new Map<string, number>();
  private readonly closed = new AbortController();

  constructor(
    private readonly stream: (dirKey: string) => ListingStream,
    /** Whether a listing of the directory is being read already (a readdir's). */
    private readonly beingListed: (dirKey: string) => boolean,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly policy: LookupListingPolicy = LOOKUP_LISTING,
    private readonly now: () => number = Date.now,
  ) {}

  /** A lookup of a name in the directory `dirKey` missed the metadata cache. */
  missed(dirKey: string): void {
    const reading = this.reading.get(dirKey);
    if (reading) return void (reading.pagesLeft += 1);
    if (this.beingListed(dirKey)) return;
    const now = this.now();
    const until = this.notBefore.get(dirKey);
    if (until !== undefined) {
      if (until > now) return;
      this.notBefore.delete(dirKey);
    }
    let counted = this.misses.get(dirKey);
    if (!counted || now - counted.since > this.policy.windowMs) {
      counted = { count: 0, since: now };
      this.misses.delete(dirKey);
      this.misses.set(dirKey, counted);
      for (const old of this.misses.keys()) {
        if (this.misses.size <= this.policy.trackedDirs) break;
        this.misses.delete(old);
      }
    }
    if (++counted.count < this.policy.afterMisses) return;
    this.misses.delete(dirKey);
    void this.list(dirKey);
  }

  /** Lists no more: listings under way stop after their current page. */
  close(): void {
    this.closed.abort();
  }

  private async list(dirKey: string): Promise<void> {
    const reading: Reading = { pagesLeft: this.policy.maxPages };
    this.reading.set(dirKey, reading);
    const stream = this.stream(dirKey);
    let outcome: 'whole' | 'partial' | 'failed' = 'whole';
    try {
      let cursor: ListCursor | undefined = LISTING_START;
      while (cursor) {
        if (reading.pagesLeft <= 0 || this.closed.signal.aborted) {
          outcome = 'partial';
          stream.abandon();
          break;
        }
        reading.pagesLeft -= 1;
        cursor = (await stream.page(cursor, this.closed.signal)).next;
      }
    } catch (err) {
      outcome = 'failed';
      stream.close();
      this.log.debug({ directory: dirKey || '/', err: (err as Error).message }, 'listing a directory whose names are looked up one by one failed: its lookups go on one by one');
    } finally {
      this.reading.delete(dirKey);
    }
    if (outcome !== 'whole') {
      this.notBefore.set(dirKey, this.now() + this.policy.retryMs);
      for (const old of this.notBefore.keys()) {
        if (this.notBefore.size <= this.policy.trackedDirs) break;
        this.notBefore.delete(old);
      }
    }
    this.metrics.lookupListings.inc({ outcome });
  }
}
