/**
 * Where a `BlockClient` gets block bytes from. The embedded source reads the
 * in-process cache; cluster sources read from workers (short-circuit, domain
 * socket, network) and fall back to the UFS. Each source counts the bytes it
 * returns under the path that served them.
 */
import type { BlockRef, ObjectRef } from '../block/block.js';
import type { HeldBlockFile } from '../cache/block-files.js';

/** How the reader is moving through the file: random readers get no readahead and small cold reads go straight to the UFS. */
export type AccessPattern = 'sequential' | 'random';

/**
 * The open file a read belongs to: it holds short-circuit pins, and its prefetches
 * stop when it is released (its signal aborts).
 */
export interface ReadHandle {
  readonly id: number;
  /** Aborted when the file handle is released. */
  readonly signal: AbortSignal;
}

/** A local file holding exactly an object's bytes, checked, open until `release()`: for the kernel to read itself (FUSE passthrough). */
export interface LocalFile extends HeldBlockFile {
  /**
   * Its id in an in-process store that tells of its removal (`BlockSource.onLocalFileRemoved`),
   * so that it may be kept registered with the kernel past its last open; absent for a file
   * whose removal is not seen here (a co-located worker's).
   */
  readonly storeId?: string;
}

export interface BlockRead {
  ref: BlockRef;
  /** Offset inside the block. */
  offset: number;
  length: number;
  dest: Buffer;
  destOffset: number;
  pattern: AccessPattern;
  /**
   * The reader has read a long contiguous run (Readahead.streaming): whole blocks taken
   * into memory pay off. Never set for reads that only look sequential by chance.
   */
  streaming?: boolean;
  /** The open file handle the read belongs to. */
  handle?: ReadHandle;
  /** Aborted when the request is interrupted or times out: the work under it stops. */
  signal?: AbortSignal;
}

/**
 * What a background fill did: the block was fetched into the cache (or its owner worker
 * was made to hold it), was there already (or being fetched by a reader), or could not
 * be filled here (no tier to fill: a cluster mount with no worker to ask).
 */
export type FillOutcome = 'fetched' | 'cached' | 'skipped';

export interface BlockSource {
  /** Copies `length` bytes of the block into `dest`; returns the byte count (short only at end of object). */
  read(req: BlockRead): Promise<number>;
  /**
   * Copies the bytes now, without a promise, when the block is held in memory; undefined
   * otherwise (then `read`). A stream of FUSE reads from memory spent more of the
   * event loop on promise turns than on copying.
   */
  readNow?(req: BlockRead): number | undefined;
  /**
   * The bytes as a view of the block held in memory, without copying (`dest` is not
   * touched); undefined when the block is not in memory. The view is good only until
   * this turn of the event loop ends (the block's buffer may then go back to its pool):
   * write it out at once.
   */
  viewNow?(req: BlockRead): Buffer | undefined;
  /**
   * Starts caching the block in the background if it is not cached (for a streaming reader:
   * in memory too, where that helps, held for `handle` as its reads would hold it); never throws.
   */
  prefetch(ref: BlockRef, streaming: boolean, handle?: ReadHandle): void;
  /**
   * Makes sure the block is cached where a later read will look for it (this mount's tier,
   * or its owner worker's), without reading it anywhere; resolves once it is. Through the
   * read-through's single flight: a reader of the block meanwhile joins this fetch. A
   * directory's small files are prefetched so (vfs/directory-prefetch.ts).
   */
  fill?(ref: BlockRef, signal: AbortSignal): Promise<FillOutcome>;
  /**
   * A local file holding exactly the block's bytes, checked, open until `release()`, when
   * this source has one now (the block cached in a local tier); undefined otherwise. What
   * keeps the file in its tier (a worker's pin) is held for `handle` until its release.
   * The file is not read here: it is handed to the kernel (FUSE passthrough).
   */
  localFile?(ref: BlockRef, handle: ReadHandle): Promise<LocalFile | undefined>;
  /**
   * The same for an object larger than one block: a local file holding exactly all its
   * bytes (its whole-object file, cache/whole-objects.ts), when this source has one now.
   */
  wholeFile?(object: ObjectRef, handle: ReadHandle): Promise<LocalFile | undefined>;
  /** Calls `listener` with the `storeId` of each local file the source's own store drops (evicted, or found damaged). */
  onLocalFileRemoved?(listener: (storeId: string) => void): void;
  /** The file handle is gone: let go of what it held (pins). */
  release?(handle: ReadHandle): void;
  close(): Promise<void>;
}
