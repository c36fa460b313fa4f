/**
 * Directory prefetch of small files: the policy that decides when a directory's small
 * files are fetched into the cache before anyone opens them, and which. A data loader
 * reads a dataset's files whole, one after another in a shuffled order, a few readers at
 * a time; against an object store every cold file then costs a GET's time to first byte
 * (tens of ms), and four readers wait for four GETs at once, whatever a client does per
 * file. Fetching the files before they are opened is what goes faster.
 *
 * When: once `triggerFiles` distinct files of one directory, each at most one block, have
 * been read whole (from offset 0 to their end, or passed through to the kernel) within
 * `windowMs`. It stops when the pattern does: a directory none of whose files is opened
 * for `windowMs`, or one of whose small files is read in part, is dropped, and its
 * fetches not yet done are cancelled.
 *
 * What: the directory's other files of at most one block, as the listing the metadata
 * cache holds has them (no LIST is made for it; a directory whose listing is not cached
 * is not prefetched), fetched whole into the cache with up to `files` at once across
 * directories (`BackgroundQueue`), taking directories in turn. Bounded by the bytes
 * fetched ahead and not opened yet: `dirAheadBytes` per directory, and a share of the
 * cache's capacity in all (`capacityShare`), so that a prefetch never pushes out of the
 * cache what it fetched, nor much of what was there. A reader's open takes its file off
 * the bytes ahead, and the prefetch moves on.
 *
 * How a file is fetched is the block source's (`BlockClient.fillFile`): through the
 * read-through's single flight, so a reader who opens a file being prefetched joins its
 * GET, and a reader of a file not yet started fetches it at once, never waiting behind
 * the prefetch (demand reads come first); in a cluster mount, through the block's owner
 * worker, which fills its tier. A file that changed since it was listed (the store has
 * another ETag) is not cached: the filesystem is told to forget what it knew of it, and
 * its next open looks afresh.
 */
import type { ObjectRef } from '../block/block.js';
import { BackgroundQueue } from '../client/background.js';
import type { FillOutcome } from '../client/block-source.js';
import { isCachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { parentKey } from './names.js';

export const DIRECTORY_PREFETCH = {
  /**
   * Files fetched at once by default (`--prefetch-files`). At 20 ms to first byte a GET of
   * 128 KiB takes ~25 ms: 32 at once bring in ~1,000 files/s, past what the serving process
   * handles per file, while leaving most of the S3 client's 64 connections to readers.
   */
  files: 32,
  /** Distinct small files of one directory read whole within `windowMs` that start its prefetch. */
  triggerFiles: 3,
  /** How recent those reads must be; a prefetched directory none of whose files was opened for this long is dropped. */
  windowMs: 30_000,
  /** Bytes of one directory fetched and not yet opened, at most. */
  dirAheadBytes: 512 * 1024 * 1024,
  /** Share of the cache's capacity the bytes fetched and not yet opened of all directories may take. */
  capacityShare: 0.25,
  /** Directories whose recent reads are remembered (the least recently read are forgotten first). */
  trackedDirs: 4096,
  /** Reads remembered in all those directories, at most (theirs are forgotten with them). */
  trackedReads: 65_536,
};

/** How an open file was read by the time it was released. */
export type ReadShape = 'whole' | 'part' | 'none';

/** Bits of a file handle's read span: a read began at offset 0, a read reached the end. */
export const READ_HEAD = 1;
export const READ_TAIL = 2;

/**
 * How an open was read, from its span and how it was opened: passed through to the kernel,
 * it is read by the kernel (whole, for a small file: its readahead covers it); with the
 * kernel's pages kept from before, reads it did not send say nothing.
 */
export function readShape(span: number, passedThrough: boolean, pagesKept: boolean): ReadShape {
  if (passedThrough || span === (READ_HEAD | READ_TAIL)) return 'whole';
  return span === 0 || pagesKept ? 'none' : 'part';
}

export interface DirectoryPrefetchConfig {
  /** Files fetched at once; 0 turns the prefetch off. */
  files: number;
  /** Files of at most one block are prefetched. */
  blockSize: number;
  /** The cache's capacity, bytes. */
  capacityBytes: number;
  /** The files of a directory's cached listing; undefined when none is cached. */
  listedFiles(dirKey: string): ObjectRef[] | undefined;
  /** Makes sure a file's block is cached (`BlockClient.fillFile`). */
  fill(object: ObjectRef, signal: AbortSignal): Promise<FillOutcome>;
  /** The store has another version of the object than the one listed. */
  changed(key: string): void;
  metrics: Metrics;
  log: Logger;
  /** The clock, in ms. */
  now?: () => number;
}

/** A directory being prefetched. */
class PrefetchedDir {
  readonly abort = new AbortController();
  /** The next of `files` to fetch. */
  next = 0;
  aheadBytes = 0;
  /** Files fetched (or being fetched) and not opened yet. */
  readonly ahead = new Set<string>();

  constructor(
    readonly key: string,
    readonly files: readonly ObjectRef[],
    public lastSeen: number,
  ) {}
}

/** A file fetched (or being fetched) and not opened yet. */
interface AheadFile {
  dir: PrefetchedDir;
  object: ObjectRef;
  /** Its fetch brought it in (not only found it cached). */
  fetched: boolean;
  /** Opened (the same version) before its fetch ended. */
  openedEarly?: boolean;
}

export class DirectoryPrefetch {
  private readonly queue: BackgroundQueue;
  /** Small files read whole lately, by directory, with when (directories not being prefetched). */
  private readonly recent = new Map<string, Map<string, number>>();
  /** Reads held in `recent`. */
  private recentReads = 0;
  private readonly dirs = new Map<string, PrefetchedDir>();
  /** The directories in the order they take turns; `turn` is the next. */
  private order: PrefetchedDir[] = [];
  private turn = 0;
  private readonly ahead = new Map<string, AheadFile>();
  private aheadBytes = 0;
  private readonly maxAheadBytes: number;
  private readonly now: () => number;
  private readonly counters;
  private pumpQueued = false;
  private closed = false;

  constructor(private readonly config: DirectoryPrefetchConfig) {
    // Bounded by the pump, which adds only while fewer than `files` run: nothing waits in the queue.
    this.queue = new BackgroundQueue(config.files, config.files, () => this.schedulePump());
    this.maxAheadBytes = Math.floor(config.capacityBytes * DIRECTORY_PREFETCH.capacityShare);
    this.now = config.now ?? Date.now;
    const m = config.metrics;
    this.counters = { files: m.dirPrefetchFiles, bytes: m.dirPrefetchBytes, hits: m.dirPrefetchHits, dirs: m.dirPrefetchDirs };
  }

  /** Whether a file is one this prefetch would fetch: not empty, at most one block. */
  private small(object: ObjectRef): boolean {
    return object.size > 0 && object.size <= this.config.blockSize;
  }

  /** A file was opened: one fetched ahead for it is a hit, and the prefetch may move on. */
  opened(object: ObjectRef): void {
    const file = this.ahead.get(object.key);
    if (!file) return;
    this.forget(object.key, file);
    file.dir.lastSeen = this.now();
    if (file.object.etag === object.etag) {
      // A file still being fetched is a hit too (the reader joins its GET), once it is in.
      if (file.fetched) this.counters.hits.inc();
      else file.openedEarly = true;
    }
    this.schedulePump();
  }

  /** A file was released, having been read so: the pattern of its directory goes on, starts or stops. */
  released(object: ObjectRef, shape: ReadShape): void {
    if (this.closed || shape === 'none' || !this.small(object)) return;
    const dirKey = parentKey(object.key);
    const now = this.now();
    const dir = this.dirs.get(dirKey);
    if (dir) {
      if (shape === 'whole') dir.lastSeen = now;
      else this.stop(dir, 'a file of it was read in part');
      return;
    }
    if (shape === 'part') {
      this.forgetReads(dirKey);
      return;
    }
    const reads = this.forgetReads(dirKey) ?? new Map<string, number>();
    // Re-inserted last, so that the directories are in the order of their last read, and
    // each directory's reads in the order they were made: those gone out of the window, or
    // past the bound, are the first ones. A release costs the same however many files the
    // directory has (a walk over all of them at each release made an epoch of n files n²).
    reads.delete(object.key);
    reads.set(object.key, now);
    for (const [key, at] of reads) {
      if (now - at <= DIRECTORY_PREFETCH.windowMs && reads.size <= DIRECTORY_PREFETCH.trackedReads) break;
      reads.delete(key);
    }
    for (const key of this.recent.keys()) {
      if (this.recent.size < DIRECTORY_PREFETCH.trackedDirs && this.recentReads + reads.size <= DIRECTORY_PREFETCH.trackedReads) break;
      this.forgetReads(key);
    }
    this.recent.set(dirKey, reads);
    this.recentReads += reads.size;
    if (reads.size >= DIRECTORY_PREFETCH.triggerFiles) this.start(dirKey, reads, now);
  }

  /** Forgets the recent reads of a directory; answers them. */
  private forgetReads(dirKey: string): Map<string, number> | undefined {
    const reads = this.recent.get(dirKey);
    if (!reads) return undefined;
    this.recent.delete(dirKey);
    this.recentReads -= reads.size;
    return reads;
  }

  private start(dirKey: string, read: Map<string, number>, now: number): void {
    const listed = this.config.listedFiles(dirKey);
    if (!listed) return; // listed by nobody yet: maybe at a later read
    this.forgetReads(dirKey);
    const files = listed.filter((f) => this.small(f) && !read.has(f.key));
    if (files.length === 0) return;
    const dir = new PrefetchedDir(dirKey, files, now);
    this.dirs.set(dirKey, dir);
    this.order.push(dir);
    this.counters.dirs.inc();
    this.config.log.debug({ directory: dirKey || '/', files: files.length }, 'prefetching the small files of a directory being read whole');
    this.schedulePump();
  }

  /** Stops prefetching a directory: its fetches under way are cancelled, its bytes ahead forgotten. */
  private stop(dir: PrefetchedDir, why: string): void {
    if (this.dirs.get(dir.key) !== dir) return;
    this.dirs.delete(dir.key);
    this.order = this.order.filter((d) => d !== dir);
    dir.abort.abort();
    for (const key of dir.ahead) this.forget(key, this.ahead.get(key)!);
    this.config.log.debug({ directory: dir.key || '/', why, fetched: dir.next }, 'directory prefetch stopped');
  }

  private forget(key: string, file: AheadFile): void {
    this.ahead.delete(key);
    file.dir.ahead.delete(key);
    file.dir.aheadBytes -= file.object.size;
    this.aheadBytes -= file.object.size;
  }

  /** After the caller's turn: opens and fetches ending together refill the queue once. */
  private schedulePump(): void {
    if (this.pumpQueued || this.closed) return;
    this.pumpQueued = true;
    queueMicrotask(() => {
      this.pumpQueued = false;
      this.pump();
    });
  }

  /** Hands files to the queue while it has room and some directory has a file within the bounds. */
  private pump(): void {
    const now = this.now();
    for (const dir of this.order) if (now - dir.lastSeen > DIRECTORY_PREFETCH.windowMs) this.stop(dir, `none of its files opened for ${DIRECTORY_PREFETCH.windowMs / 1000} s`);
    while (this.queue.active < this.config.files) {
      const picked = this.pick();
      if (!picked) return;
      const { dir, object } = picked;
      const file: AheadFile = { dir, object, fetched: false };
      this.ahead.set(object.key, file);
      dir.ahead.add(object.key);
      dir.aheadBytes += object.size;
      this.aheadBytes += object.size;
      this.queue.add(object.key, () => this.fetch(file));
    }
  }

  /** The next file to fetch, directories taking turns; none when every directory is done or at its bound. */
  private pick(): { dir: PrefetchedDir; object: ObjectRef } | undefined {
    for (let tried = 0; tried < this.order.length; tried++) {
      const at = (this.turn + tried) % this.order.length;
      const dir = this.order[at]!;
      const object = dir.files[dir.next];
      if (!object) continue;
      if (dir.aheadBytes + object.size > DIRECTORY_PREFETCH.dirAheadBytes || this.aheadBytes + object.size > this.maxAheadBytes) continue;
      dir.next += 1;
      this.turn = at + 1;
      return { dir, object };
    }
    // Directories whose files are all handed out are done; they stay (their bytes ahead count) until they go idle.
    return undefined;
  }

  private async fetch(file: AheadFile): Promise<void> {
    const { dir, object } = file;
    let outcome: FillOutcome;
    try {
      outcome = await this.config.fill(object, dir.abort.signal);
    } catch (err) {
      if (this.ahead.get(object.key) === file) this.forget(object.key, file);
      if (dir.abort.signal.aborted) return;
      if (isCachefsError(err, 'STALE')) {
        // Changed since it was listed: its next open looks afresh rather than asking for the listed version.
        this.config.changed(object.key);
        return;
      }
      // A store that fails these is not asked for more of them; readers still read.
      this.config.log.warn({ key: object.key, err: (err as Error).message }, 'directory prefetch failed: stopping it for the directory');
      this.stop(dir, 'a fetch failed');
      return;
    }
    if (outcome !== 'fetched') {
      // Cached already: not this prefetch's bytes.
      if (this.ahead.get(object.key) === file) this.forget(object.key, file);
      return;
    }
    file.fetched = true;
    this.counters.files.inc();
    this.counters.bytes.inc(object.size);
    if (file.openedEarly) this.counters.hits.inc();
  }

  /** Stops every directory's prefetch (the mount is closing). */
  close(): void {
    this.closed = true;
    for (const dir of [...this.order]) this.stop(dir, 'the mount is closing');
  }
}
