/**
 * The read policy of cachefs, in one place: how a read of a block is served, and its
 * tuning in one typed object. Every source (the embedded cache, the cluster client) and
 * the worker's services decide through these functions.
 *
 * - A cached block is read from its file; a damaged file is dropped and the block
 *   fetched again, once (`CachedBlocks`).
 * - A small random read of a block that is not cached is answered with a ranged GET
 *   while the whole block is filled in the background (`rangedMiss`).
 * - Any other read of a block that is not cached joins (or starts) one fetch of the
 *   whole block, and gets its bytes as soon as they are in (`ReadThrough`).
 * - A sequential stream's readahead fetches runs of consecutive blocks, one GET per
 *   run of up to `prefetchRunBytes` (`PrefetchRuns`).
 * - Bytes from elsewhere (a remote worker, the UFS, a worker's socket) are taken into
 *   memory a whole block at a time for sequential readers, by range for random ones
 *   (`wholeBlock`).
 * - A worker that fails a read is skipped for the next in rendezvous order, then the
 *   UFS, and suspected for a while; one that is only busy (over its in-flight budget)
 *   is skipped for this read alone (`isBusy`); an error any of them would answer alike
 *   is final (`isFinal`).
 * - Version check: a block names its object's ETag; a changed object fails with STALE
 *   rather than mixing old and new bytes.
 */
import type { CachefsError, ErrorCode } from '../errors.js';

/** How the reader is moving through the file: random readers get no readahead and small cold reads go straight to the UFS. */
export type AccessPattern = 'sequential' | 'random';

/** What the policy needs to know of a read. */
export interface ReadShape {
  pattern: AccessPattern;
  length: number;
}

export interface ReadPolicy {
  /** Random reads up to this size of a block that is not cached skip the whole-block fetch. */
  smallRandomRead: number;
  /** Bytes one prefetch GET fetches at most. */
  prefetchRunBytes: number;
  /** Blocks the embedded cache prefetches from the UFS at once (each holds a block buffer). */
  embeddedFetches: number;
  /** Block buffers the embedded cache keeps. */
  embeddedBuffers: number;
  /** Prefetches a cluster mount keeps in flight. */
  clusterPrefetches: number;
  /** Memory for whole blocks a cluster mount reads from remote workers or the UFS. */
  clusterMemoryBytes: number;
  /** Blocks one file handle keeps pinned on a co-located worker. */
  pinsPerHandle: number;
}

export const READ_POLICY: ReadPolicy = {
  smallRandomRead: 512 * 1024,
  /**
   * Two blocks at the default block size, so that the 8 blocks in flight are 4 GETs. Cold
   * 1 GiB reads from s3rver, alternating rounds: 301 MB/s median against 277 with a GET per
   * block (6 rounds), with ~10% less CPU in both the mount and the server; 16 MiB runs
   * (2 GETs in flight) did no better.
   */
  prefetchRunBytes: 8 * 1024 * 1024,
  /**
   * 8 x 4 MiB reads as fast as 16 here (s3rver on loopback, 512 MiB cold: 331-346 vs
   * 330-349 MB/s) with 50 MiB less RSS (172-179 vs 214-232 MiB).
   */
  embeddedFetches: 8,
  /**
   * The prefetches', a demand read's run and blocks waiting out the turn that gave them
   * back. A cold 1 GiB read held at most 12 at once; with 10, six fetches a read took a
   * buffer outside the pool, written through the page cache and left to the GC.
   */
  embeddedBuffers: 12,
  clusterPrefetches: 16,
  clusterMemoryBytes: 96 * 1024 * 1024,
  /** A long sequential read of a file larger than the tier must not pin the whole tier. */
  pinsPerHandle: 16,
};

/** A small random read of a block that is not cached, nor being fetched: answered with a ranged GET (the block is filled in the background). */
export function rangedMiss(policy: ReadPolicy, read: ReadShape, fetching: boolean): boolean {
  return read.pattern === 'random' && read.length <= policy.smallRandomRead && !fetching;
}

/** Bytes from elsewhere come a whole block at a time for a sequential reader; a random reader fetches just its range. */
export function wholeBlock(read: ReadShape): boolean {
  return read.pattern === 'sequential';
}

/** Prefetch runs of blocks of `blockSize`: how many blocks one GET covers. */
export function runBlocks(policy: ReadPolicy, blockSize: number): number {
  return Math.max(1, Math.floor(policy.prefetchRunBytes / blockSize));
}

/** Errors that another worker or the UFS would answer the same way (or that the reader asked for): no point falling back. */
const FINAL: ReadonlySet<ErrorCode> = new Set(['STALE', 'NOT_FOUND', 'INVALID_ARGUMENT', 'INTERRUPTED']);

export function isFinal(err: CachefsError): boolean {
  return FINAL.has(err.code);
}

/** A worker over its in-flight budget: skipped for this read, not suspected of failing. */
export function isBusy(err: CachefsError): boolean {
  return err.code === 'THROTTLED';
}
