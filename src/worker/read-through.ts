/**
 * Read-through of blocks into a worker's store: a block that is not cached is
 * fetched from the UFS (one fetch per block, however many readers wait for it),
 * stored, and handed to the waiters together with its bytes so that the first
 * readers need not read the file back.
 */
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { StoredBlock, TieredStore } from '../store/tiered-store.js';
import type { Ufs } from '../ufs/ufs.js';
import { SingleFlight } from './single-flight.js';

/** Finds the UFS that backs a mount id (the embedded mount has exactly one). */
export type UfsResolver = (mount: string) => Promise<Ufs>;

export interface EnsuredBlock {
  /** Where the block lives, or undefined when it could not be stored (every tier pinned full). */
  stored?: StoredBlock;
  /** The block's bytes when this call (or one it joined) fetched it; absent on a cache hit. */
  data?: Buffer;
}

export class ReadThrough {
  private readonly flights = new SingleFlight<EnsuredBlock>();

  constructor(
    readonly store: TieredStore,
    private readonly resolveUfs: UfsResolver,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /**
     * Block buffers to reuse, when every reader of `EnsuredBlock.data` is done with it
     * within the turn of the event loop that hands it out (see BufferPool); a worker
     * that writes it to sockets has none.
     */
    private readonly buffers?: BufferPool,
  ) {}

  /** The cached block, if present and whole. */
  cached(ref: BlockRef): StoredBlock | undefined {
    const stored = this.store.lookup(ref.id);
    return stored && stored.length === ref.length ? stored : undefined;
  }

  isFetching(ref: BlockRef): boolean {
    return this.flights.has(ref.id);
  }

  /** Makes sure the block is cached, fetching it from the UFS if needed. */
  async ensure(ref: BlockRef, signal?: AbortSignal): Promise<EnsuredBlock> {
    const stored = this.cached(ref);
    if (stored) {
      this.metrics.cacheHits.inc();
      return { stored };
    }
    return this.flights.do(ref.id, () => this.fetch(ref, signal));
  }

  /** Drops a block whose file turned out damaged; the next `ensure` refetches it. */
  async discard(ref: BlockRef, why: string): Promise<void> {
    this.metrics.cacheCorrupt.inc();
    this.log.warn({ block: ref.id, key: ref.object.key, index: ref.index, why }, 'dropping damaged cached block');
    await this.store.remove(ref.id);
  }

  private async fetch(ref: BlockRef, signal?: AbortSignal): Promise<EnsuredBlock> {
    this.metrics.cacheMisses.inc();
    const ufs = await this.resolveUfs(ref.object.mount);
    const data = this.buffers?.take(ref.length) ?? Buffer.allocUnsafeSlow(ref.length);
    try {
      let n: number;
      try {
        this.metrics.ufsRequests.inc({ op: 'read' });
        n = await ufs.readInto(ref.object.key, ref.offset, data, { etag: ref.object.etag, signal });
      } catch (err) {
        const e = asCachefsError(err);
        this.metrics.ufsErrors.inc({ op: 'read', code: e.code });
        throw e;
      }
      this.metrics.ufsReadBytes.inc(n);
      if (n !== ref.length) {
        throw new CachefsError('STALE', `object ${ref.object.key} is shorter than when it was opened (block ${ref.index}: ${n} of ${ref.length} bytes)`);
      }
      try {
        return { stored: await this.store.put(ref.id, data), data };
      } catch (err) {
        this.log.warn({ block: ref.id, err: (err as Error).message }, 'block not cached');
        return { data };
      }
    } finally {
      // Waiters copy from `data` as the flight settles, before the pool hands it out again.
      this.buffers?.giveLater(data);
    }
  }
}
