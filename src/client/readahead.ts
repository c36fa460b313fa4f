/**
 * Readahead policy, one instance per open file handle. A read that starts where
 * the previous one ended (give or take the reordering of the kernel's concurrent
 * readahead requests) continues a sequential stream; each new block the stream
 * enters doubles the window of blocks fetched ahead, up to the maximum. Any other
 * read is random: the window closes and nothing is prefetched.
 */
import type { AccessPattern } from './block-source.js';

/**
 * The kernel's readahead issues many requests (of up to 1 MiB) at once, up to its
 * readahead size ahead of the reader, and they are answered out of order: a read
 * this close to the stream still belongs to it.
 */
const REORDER_SLACK = 16 * 1024 * 1024;

export class Readahead {
  private nextOffset = 0;
  /** Bytes read by the current sequential run. */
  private runBytes = 0;
  private window = 0;
  private currentBlock = -1;
  /** Highest block index already handed to prefetch. */
  private prefetchedThrough = -1;

  constructor(
    private readonly maxWindowBlocks: number,
    private readonly streamingBytes = Infinity,
  ) {}

  /**
   * The current run has read at least `streamingBytes`: a stream, not random reads that
   * land near each other by chance (with the reorder slack, one random read in
   * eight of a 256 MiB file looks sequential; dozens in a row do not happen).
   */
  get streaming(): boolean {
    return this.runBytes >= this.streamingBytes;
  }

  /** Records a read and says which pattern it belongs to. */
  observe(offset: number, length: number): AccessPattern {
    const sequential = Math.abs(offset - this.nextOffset) <= REORDER_SLACK;
    if (sequential) {
      this.nextOffset = Math.max(this.nextOffset, offset + length);
      this.runBytes += length;
    } else {
      this.runBytes = length;
      this.window = 0;
      this.currentBlock = -1;
      this.prefetchedThrough = -1;
      this.nextOffset = offset + length;
    }
    return sequential ? 'sequential' : 'random';
  }

  /** Block indexes to prefetch after a sequential read that ended in block `current` of a file of `blockCount` blocks. */
  blocksToPrefetch(current: number, blockCount: number): number[] {
    if (current !== this.currentBlock) {
      this.currentBlock = current;
      this.window = Math.min(this.maxWindowBlocks, Math.max(1, this.window * 2));
    }
    const from = Math.max(current + 1, this.prefetchedThrough + 1);
    const to = Math.min(blockCount - 1, current + this.window);
    const out: number[] = [];
    for (let i = from; i <= to; i++) out.push(i);
    if (to > this.prefetchedThrough) this.prefetchedThrough = to;
    return out;
  }
}
