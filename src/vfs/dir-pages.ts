/**
 * The listing of one open directory as readdir pages through it: a sequence of the
 * store's pages, each remembered by the cursor that reads it again and the offset
 * of its first entry, so that an offset the kernel passes back always resumes the
 * listing. Only a window of pages keeps its entries (the one being read, the one
 * before it, and up to AHEAD read ahead of it, one request at a time), so a
 * directory of any size is listed in bounded memory; a page dropped from the window
 * and asked for again (a seekdir back) is read again with its cursor.
 *
 * Offsets: 0 is `.`, 1 is `..`, 2 + i the listing's i-th child; an entry's `next`
 * is its offset + 1. A page read again that came back shorter (the directory
 * changed) leaves a gap in the offsets, which readdir steps over; one that came back
 * longer is cut to its first length, so that later pages keep their offsets.
 */
import type { Child, ListCursor, ListedPage } from './filesystem.js';
import { LISTING_START, type ListingStream } from './listing.js';

/** Pages read ahead of the one readdir is in (each one store request, made one after the other). */
const AHEAD = 2;
/** Offsets of `.` and `..`: the listing's children start after them. */
export const FIRST_CHILD = 2;

interface Page {
  /** Index (among the children) of its first child. */
  start: number;
  /** Reads it again. */
  cursor: ListCursor;
  count: number;
  /** Its children while it is in the window. */
  children: readonly Child[] | undefined;
  /** Reading it again, when it is. */
  reading?: Promise<Child[]>;
}

/** A child with its offset in the listing. */
export interface PlacedChild {
  child: Child;
  offset: number;
}

export class DirPages {
  private readonly pages: Page[] = [];
  /** The cursor of the page after the last one read; undefined when the listing has ended. */
  private next: ListCursor | undefined;
  private reading?: Promise<void>;
  /** The reading ahead failed: the next readdir that needs the page reads it itself, and gets the error. */
  private failed = false;
  /** Aborted when the directory is released: a page being read for it alone stops. */
  private readonly closed = new AbortController();

  private constructor(private readonly stream: ListingStream | undefined) {}

  /** The listing read page by page from `stream`; resolves once its first page is read. */
  static async open(stream: ListingStream, signal?: AbortSignal): Promise<DirPages> {
    const pages = new DirPages(stream);
    pages.add(LISTING_START, await stream.page(LISTING_START, signal));
    return pages;
  }

  /** A listing known whole (from the metadata cache). */
  static whole(children: readonly Child[]): DirPages {
    const pages = new DirPages(undefined);
    pages.add(LISTING_START, { children });
    return pages;
  }

  /** The whole listing, when it is one page that ended it. */
  get complete(): readonly Child[] | undefined {
    return this.next === undefined && this.pages.length === 1 ? this.pages[0]!.children : undefined;
  }

  /** Children known so far (all of them once the listing has ended). */
  get known(): number {
    const last = this.pages.at(-1);
    return last ? last.start + last.count : 0;
  }

  get ended(): boolean {
    return this.next === undefined;
  }

  /**
   * The children from offset `offset` on, as far as the window holds them; a promise when
   * the page with `offset` must be read first. Empty only at the end of the listing.
   */
  from(offset: number): Iterable<PlacedChild> | Promise<Iterable<PlacedChild>> {
    const index = Math.max(0, offset - FIRST_CHILD);
    const at = this.pageOf(index);
    if (at < 0) {
      if (this.next === undefined) return [];
      return this.readNext().then(() => this.from(offset));
    }
    const page = this.pages[at]!;
    if (!page.children) return this.reread(page).then(() => this.from(offset));
    this.slide(at);
    return this.walk(at, index);
  }

  /** The directory is released: reads under way for it alone stop, and no more are made. */
  close(): void {
    this.closed.abort();
    this.failed = true;
    this.stream?.close();
  }

  private *walk(at: number, index: number): Generator<PlacedChild> {
    for (let p = at; p < this.pages.length; p++) {
      const page = this.pages[p]!;
      if (!page.children) return;
      const children = page.children;
      for (let i = Math.max(0, index - page.start); i < children.length; i++) yield { child: children[i]!, offset: FIRST_CHILD + page.start + i };
    }
  }

  /** The page holding child `index`, -1 past the pages read so far. */
  private pageOf(index: number): number {
    let lo = 0;
    let hi = this.pages.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const page = this.pages[mid]!;
      if (index < page.start) hi = mid - 1;
      else if (index >= page.start + page.count) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  /** readdir is in page `at`: pages before the one before it are dropped, and pages ahead are read. */
  private slide(at: number): void {
    for (let p = at - 2; p >= 0 && this.pages[p]!.children; p--) this.pages[p]!.children = undefined;
    for (let p = at + AHEAD + 1; p < this.pages.length; p++) this.pages[p]!.children = undefined;
    if (this.next !== undefined && !this.reading && !this.failed && this.pages.length - 1 - at < AHEAD) {
      // After this answer is written: the kernel has the first entries before the store is asked for more.
      setImmediate(() => this.readAhead(at));
    }
  }

  private readAhead(at: number): void {
    if (this.next === undefined || this.reading || this.failed || this.closed.signal.aborted || this.pages.length - 1 - at >= AHEAD) return;
    this.readNext().then(
      () => this.readAhead(at),
      () => (this.failed = true),
    );
  }

  /** Reads the page after the last one read (one request at a time). */
  private readNext(): Promise<void> {
    this.failed = false;
    const cursor = this.next!;
    this.reading ??= this.stream!.page(cursor, this.closed.signal)
      .then((page) => this.add(cursor, page))
      .finally(() => (this.reading = undefined));
    return this.reading;
  }

  private add(cursor: ListCursor, page: { children: readonly Child[]; next?: ListCursor }): void {
    const start = this.known;
    this.pages.push({ start, cursor, count: page.children.length, children: page.children });
    this.next = page.next;
  }

  /** Reads a page dropped from the window again, at its old offsets. */
  private async reread(page: Page): Promise<void> {
    page.reading ??= this.stream!.page(page.cursor, this.closed.signal).then((p) => p.children.slice(0, page.count));
    try {
      page.children = await page.reading;
    } finally {
      page.reading = undefined;
    }
  }
}
