/**
 * `BlockClient`: turns a read of an object range into block reads on a
 * `BlockSource`, and drives readahead for sequential streams. Knows nothing of
 * paths or FUSE; a `vfs` file handle owns one `Readahead` and passes it in.
 */
import { blockCount, blockRef, blocksCovering, type ObjectRef } from '../block/block.js';
import type { BlockRead, BlockSource, ReadHandle } from './block-source.js';
import { Readahead } from './readahead.js';

export interface BlockClientConfig {
  blockSize: number;
  /** Upper bound of the readahead window, in bytes. */
  readaheadBytes: number;
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
   * Reads up to `length` bytes at `position` into `dest`; returns the count (short only at
   * end of object), without a promise when the source has the bytes in memory. With
   * `view`, bytes held in memory come back as a view instead, uncopied, good only until
   * this turn of the event loop ends.
   */
  read(object: ObjectRef, position: number, dest: Buffer, length: number, readahead: Readahead, handle?: ReadHandle, view = false): number | Buffer | Promise<number> {
    const refs = blocksCovering(object, this.blockSize, position, length);
    if (refs.length === 0) return 0;
    const pattern = readahead.observe(position, length);
    const streaming = readahead.streaming;
    if (pattern === 'sequential' && this.maxWindowBlocks > 0) {
      const last = refs[refs.length - 1]!.index;
      for (const i of readahead.blocksToPrefetch(last, blockCount(object.size, this.blockSize))) {
        this.source.prefetch(blockRef(object, this.blockSize, i), streaming, handle);
      }
    }
    const end = Math.min(object.size, position + length);
    const reads = refs.map((ref): BlockRead => {
      const from = Math.max(position, ref.offset);
      const to = Math.min(end, ref.offset + ref.length);
      return { ref, offset: from - ref.offset, length: to - from, dest, destOffset: from - position, pattern, streaming, handle };
    });
    if (reads.length === 1) {
      const req = reads[0]!;
      return (view ? this.source.viewNow?.(req) : undefined) ?? this.source.readNow?.(req) ?? this.source.read(req);
    }
    return settleAll(reads.map((req) => this.source.read(req)));
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
