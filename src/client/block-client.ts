/**
 * `BlockClient`: turns a read of an object range into block reads on a
 * `BlockSource`, and drives readahead for sequential streams. Knows nothing of
 * paths or FUSE: a read names the open file it belongs to (`OpenObject`, which the
 * `vfs` file handle is) and the range; a request's cancellation reaches the
 * block reads as `BlockRead.signal`.
 */
import { blockCount, blockRef, blocksCovering, type BlockRef, type ObjectRef } from '../block/block.js';
import type { AccessPattern, BlockRead, BlockSource, FillOutcome, LocalFile, ReadHandle } from './block-source.js';
import { Readahead } from './readahead.js';

export interface BlockClientConfig {
  blockSize: number;
  /** Upper bound of the readahead window, in bytes. */
  readaheadBytes: number;
}

/** An open object as the client reads it: what it is, how its reader moves, and the handle its blocks are held for. */
export interface OpenObject extends ReadHandle {
  readonly object: ObjectRef;
  readonly readahead: Readahead;
}

/** What a cancellable request offers: its signal, made when first asked for. */
export interface Cancellable {
  readonly signal: AbortSignal;
}

export interface RangeRead {
  position: number;
  length: number;
  dest: Buffer;
  /** Bytes held in memory may come back as a view instead of a copy, good only until this turn of the event loop ends. */
  view?: boolean;
  /**
   * Cancels the block reads that have to wait. Asked for its signal only then: a
   * signal costs tens of microseconds to make, more than a read from memory.
   */
  cancel?: Cancellable;
}

/** A block read whose signal is the request's, fetched only if a source asks for it (a cache miss). */
class CancellableBlockRead implements BlockRead {
  constructor(
    readonly ref: BlockRef,
    readonly offset: number,
    readonly length: number,
    readonly dest: Buffer,
    readonly destOffset: number,
    readonly pattern: AccessPattern,
    readonly streaming: boolean,
    readonly handle: ReadHandle,
    private readonly cancel: Cancellable | undefined,
  ) {}

  get signal(): AbortSignal | undefined {
    return this.cancel?.signal;
  }
}

export class BlockClient {
  readonly blockSize: number;
  private readonly maxWindowBlocks: number;

  constructor(private readonly source: BlockSource, config: BlockClientConfig) {
    this.blockSize = config.blockSize;
    this.maxWindowBlocks = Math.max(0, Math.floor(config.readaheadBytes / config.blockSize));
  }

  newReadahead(): Readahead {
    // Two blocks of contiguous reading before whole blocks go into memory: a random reader
    // of large records pays at most that much extra per record.
    return new Readahead(this.maxWindowBlocks, 2 * this.blockSize);
  }

  /**
   * Reads up to `r.length` bytes at `r.position` of the open object into `r.dest`; returns
   * the count (short only at end of object), without a promise when the source has the
   * bytes in memory. With `r.view`, bytes held in memory come back as a view instead,
   * uncopied, good only until this turn of the event loop ends.
   */
  read(file: OpenObject, r: RangeRead): number | Buffer | Promise<number> {
    const { object, readahead } = file;
    const { position, length, dest } = r;
    const refs = blocksCovering(object, this.blockSize, position, length);
    if (refs.length === 0) return 0;
    const pattern = readahead.observe(position, length);
    const streaming = readahead.streaming;
    if (pattern === 'sequential' && this.maxWindowBlocks > 0) {
      const last = refs[refs.length - 1]!.index;
      for (const i of readahead.blocksToPrefetch(last, blockCount(object.size, this.blockSize))) {
        this.source.prefetch(blockRef(object, this.blockSize, i), streaming, file);
      }
    }
    const end = Math.min(object.size, position + length);
    const reads = refs.map((ref) => {
      const from = Math.max(position, ref.offset);
      const to = Math.min(end, ref.offset + ref.length);
      return new CancellableBlockRead(ref, from - ref.offset, to - from, dest, from - position, pattern, streaming, file, r.cancel);
    });
    if (reads.length === 1) {
      const req = reads[0]!;
      return (r.view ? this.source.viewNow?.(req) : undefined) ?? this.source.readNow?.(req) ?? this.source.read(req);
    }
    return settleAll(reads.map((req) => this.source.read(req)));
  }

  /**
   * A checked local file holding exactly the open object's bytes, open until `release()`,
   * when the source has one now: for an object of one block, its block cached in a local
   * tier (a co-located worker's pinned for the open file until it is released); for a
   * larger one, its whole-object file. Undefined otherwise.
   */
  localFile(file: OpenObject): Promise<LocalFile | undefined> | undefined {
    const { object } = file;
    if (object.size === 0) return undefined;
    if (object.size > this.blockSize) return this.source.wholeFile?.(object, file);
    return this.source.localFile?.(blockRef(object, this.blockSize, 0), file);
  }

  /** Calls `listener` with the `storeId` of each local file (`localFile`) the source's own store drops. */
  onLocalFileRemoved(listener: (storeId: string) => void): void {
    this.source.onLocalFileRemoved?.(listener);
  }

  /**
   * Makes sure an object of one block is cached where its reads will look (the source's
   * `fill`), in the background: a directory prefetch's file. 'skipped' for a larger object
   * or a source that has nothing to fill.
   */
  fillFile(object: ObjectRef, signal: AbortSignal): Promise<FillOutcome> {
    if (!this.source.fill || object.size === 0 || object.size > this.blockSize) return Promise.resolve('skipped');
    return this.source.fill(blockRef(object, this.blockSize, 0), signal);
  }

  release(handle: ReadHandle): void {
    this.source.release?.(handle);
  }

  close(): Promise<void> {
    return this.source.close();
  }
}

/**
 * The total of a read's block reads, once every one of them has ended. A failure is
 * reported only then: the caller gives `dest` back for another read when this settles,
 * and a block read still under way would write into it.
 */
async function settleAll(reads: Promise<number>[]): Promise<number> {
  let total = 0;
  for (const r of await Promise.allSettled(reads)) {
    if (r.status === 'rejected') throw r.reason;
    total += r.value;
  }
  return total;
}
