/**
 * Whole blocks held in memory by a client that reads them from elsewhere (a remote
 * worker, or the UFS when no worker answers): fetched once (single-flight), kept in
 * an LRU bounded by bytes, so the many 128 KiB FUSE reads of a block and the
 * readahead of a sequential stream are served from memory.
 */
import { LRUCache } from 'lru-cache';
import { SingleFlight } from '../worker/single-flight.js';

/** A block in memory and where its bytes came from (for the read-path metrics). */
export interface HeldBlock {
  data: Buffer;
  from: 'remote' | 'ufs';
}

export class MemoryBlocks {
  private readonly blocks: LRUCache<string, HeldBlock>;
  private readonly flights = new SingleFlight<HeldBlock>();

  constructor(maxBytes: number) {
    this.blocks = new LRUCache({ maxSize: Math.max(1, maxBytes), sizeCalculation: (b) => Math.max(1, b.data.length) });
  }

  get(id: string): HeldBlock | undefined {
    return this.blocks.get(id);
  }

  isFetching(id: string): boolean {
    return this.flights.has(id);
  }

  /** The block from memory, or fetched by `fetch` (once, however many callers wait). */
  load(id: string, fetch: () => Promise<HeldBlock>): Promise<HeldBlock> {
    const hit = this.blocks.get(id);
    if (hit) return Promise.resolve(hit);
    return this.flights.do(id, async () => {
      const held = await fetch();
      this.blocks.set(id, held);
      return held;
    });
  }

  clear(): void {
    this.blocks.clear();
  }
}
