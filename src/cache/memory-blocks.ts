/**
 * Whole blocks held in memory by a client that reads them from elsewhere (a remote
 * worker, or the UFS when no worker answers): fetched once (single-flight), kept in
 * an LRU bounded by bytes, so the many FUSE reads of a block and the
 * readahead of a sequential stream are served from memory.
 */
import { LRUCache } from 'lru-cache';
import type { BufferPool } from '../block/buffer-pool.js';
import { SingleFlight } from '../lib/single-flight.js';

/** A block in memory and where its bytes came from (for the read-path metrics). */
export interface HeldBlock {
  data: Buffer;
  from: 'remote' | 'ufs' | 'domain_socket';
}

interface Entry extends HeldBlock {
  /** Bytes handed to sequential readers so far. */
  consumed: number;
}

export class MemoryBlocks {
  private readonly blocks: LRUCache<string, Entry>;
  private readonly flights = new SingleFlight<HeldBlock>();

  /**
   * Every block that leaves memory (read to the end, pushed out, cleared) gives its buffer
   * back to the pool, which owns a fixed number of them: one never given back is gone for good.
   */
  constructor(maxBytes: number, private readonly buffers?: BufferPool) {
    this.blocks = new LRUCache({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (b) => Math.max(1, b.data.length),
      dispose: (b) => this.buffers?.giveLater(b.data),
    });
  }

  get(id: string): HeldBlock | undefined {
    return this.blocks.get(id);
  }

  isFetching(id: string): boolean {
    return this.flights.has(id);
  }

  /**
   * The block from memory, or fetched by `fetch` (once, however many callers wait). A
   * caller stops waiting when its `signal` aborts; the fetch's own signal aborts once
   * every caller's has.
   */
  load(id: string, fetch: (signal: AbortSignal) => Promise<HeldBlock>, signal?: AbortSignal): Promise<HeldBlock> {
    const hit = this.blocks.get(id);
    if (hit) return Promise.resolve(hit);
    return this.flights.do(id, async (shared) => {
      const held = await fetch(shared);
      this.blocks.set(id, { ...held, consumed: 0 });
      // Larger than the whole budget: only the callers waiting now read it.
      if (!this.blocks.has(id)) this.buffers?.giveLater(held.data);
      return held;
    }, signal);
  }

  /**
   * Records bytes of the block read by a sequential stream. A block read to the end is
   * dropped: the page cache has it now, and keeping it would push out the blocks fetched
   * ahead of the reader, which are older in LRU order but needed sooner. Its buffer goes
   * back to the pool: readers copy from a block in the turn they obtain it, and the pool
   * takes it only after this turn.
   */
  consumed(id: string, bytes: number): void {
    const e = this.blocks.peek(id);
    if (!e) return;
    e.consumed += bytes;
    if (e.consumed >= e.data.length) this.blocks.delete(id);
  }

  clear(): void {
    this.blocks.clear();
  }
}
