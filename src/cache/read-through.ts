/**
 * Read-through of blocks into a worker's store: a block that is not cached is
 * fetched from the UFS (one fetch per block, however many readers wait for it),
 * stored, and handed to the waiters together with its bytes so that the first
 * readers need not read the file back. Readers that only copy the bytes (`fetched`)
 * get them as soon as they are in, without waiting for the block's file to be
 * written; until it is, later readers join the same fetch.
 */
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { StoredBlock, TieredStore } from './tiered-store.js';
import type { Ufs } from '../ufs/ufs.js';

/** Finds the UFS that backs a mount id (the embedded mount has exactly one). */
export type UfsResolver = (mount: string) => Promise<Ufs>;

export interface EnsuredBlock {
  /** Where the block lives, or undefined when it could not be stored (every tier pinned full). */
  stored?: StoredBlock;
  /** The block's bytes when this call (or one it joined) fetched it; absent on a cache hit. */
  data?: Buffer;
}

interface Waiter {
  resolve(block: EnsuredBlock): void;
  reject(err: unknown): void;
}

/** A block being fetched: registered from the start of its fetch until it is stored (or the fetch fails). */
interface Flight {
  /** Settles with the block's bytes as soon as they are all in. */
  bytes: Promise<EnsuredBlock>;
  /** Settles once the block is stored, or could not be. */
  stored: Promise<EnsuredBlock>;
}

export class ReadThrough {
  private readonly flights = new Map<string, Flight>();
  /** Block writes under way: their bytes are in, maybe already handed to readers. */
  private readonly writes = new Set<Promise<void>>();

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
    const stored = this.hit(ref);
    return stored ? { stored } : this.flightOf(ref, signal).stored;
  }

  /**
   * The block for a reader that copies its bytes at once: from a fetch as soon as the
   * fetch has them (`data`), before they are stored; from the cache (`stored`) when it
   * holds the block.
   */
  async fetched(ref: BlockRef, signal?: AbortSignal): Promise<EnsuredBlock> {
    const stored = this.hit(ref);
    return stored ? { stored } : this.flightOf(ref, signal).bytes;
  }

  /**
   * Fetches consecutive blocks of one object with one UFS read, each into a block
   * buffer of its own (a sequential stream's readahead: one GET per run costs the
   * object store and this process less than one per block). Each block is stored and
   * its waiters answered as soon as its bytes are in, not when the run ends. The run
   * stops before the first block that is cached or already being fetched; returns the
   * flights started, one per block, each settling once its block is stored.
   */
  fetchRun(refs: readonly BlockRef[], signal?: AbortSignal): Promise<EnsuredBlock>[] {
    return this.startRun(refs, signal).map((f) => f.stored);
  }

  /** The cached block, counted as a cache hit. */
  private hit(ref: BlockRef): StoredBlock | undefined {
    const stored = this.cached(ref);
    if (stored) this.metrics.cacheHits.inc();
    return stored;
  }

  /** The fetch of a block that is not cached: the one under way, or a new one. */
  private flightOf(ref: BlockRef, signal?: AbortSignal): Flight {
    return this.flights.get(ref.id) ?? this.startRun([ref], signal)[0]!;
  }

  private startRun(refs: readonly BlockRef[], signal?: AbortSignal): Flight[] {
    const run: BlockRef[] = [];
    for (const ref of refs) {
      const prev = run[run.length - 1];
      if (this.cached(ref) || this.flights.has(ref.id)) break;
      if (prev && (ref.object !== prev.object || ref.offset !== prev.offset + prev.length)) break;
      run.push(ref);
    }
    if (run.length === 0) return [];
    const early: Waiter[] = [];
    const waiting: Waiter[] = [];
    const flights = run.map((ref) => {
      const bytes = new Promise<EnsuredBlock>((resolve, reject) => early.push({ resolve, reject }));
      const stored = new Promise<EnsuredBlock>((resolve, reject) => waiting.push({ resolve, reject })).finally(() => this.flights.delete(ref.id));
      // A failure reaches whoever waits on either; a reader may wait on only one, or none (a prefetch).
      bytes.catch(() => {});
      stored.catch(() => {});
      const flight = { bytes, stored };
      this.flights.set(ref.id, flight);
      return flight;
    });
    void this.fill(run, early, waiting, signal); // settles every waiter itself; never rejects
    return flights;
  }

  /** Waits for the block writes under way: a block a reader got before it was stored is cached by the time a mount closes. */
  async drain(): Promise<void> {
    await Promise.all(this.writes);
  }

  /** Drops a block whose file turned out damaged; the next `ensure` refetches it. */
  async discard(ref: BlockRef, why: string): Promise<void> {
    this.metrics.cacheCorrupt.inc();
    this.log.warn({ block: ref.id, key: ref.object.key, index: ref.index, why }, 'dropping damaged cached block');
    await this.store.remove(ref.id);
  }

  private async fill(run: BlockRef[], early: Waiter[], waiting: Waiter[], signal?: AbortSignal): Promise<void> {
    const first = run[0]!;
    const buffers = run.map((ref) => this.buffers?.take(ref.length) ?? Buffer.allocUnsafeSlow(ref.length));
    const settled: Promise<unknown>[] = [];
    let done = 0;
    // Blocks whose bytes are all in go to their early waiters and to the store (then to its waiters), in order.
    const progress = (filled: number): void => {
      while (done < run.length && filled >= run[done]!.offset + run[done]!.length - first.offset) {
        const i = done++;
        early[i]!.resolve({ data: buffers[i] });
        const write = this.store.put(run[i]!.id, buffers[i]!).then(
          (stored) => waiting[i]!.resolve({ stored, data: buffers[i] }),
          (err: unknown) => {
            this.log.warn({ block: run[i]!.id, err: (err as Error).message }, 'block not cached');
            waiting[i]!.resolve({ data: buffers[i] });
          },
        );
        this.writes.add(write);
        this.metrics.cacheWritesInFlight.inc(); void write.then(() => this.metrics.cacheWritesInFlight.dec());
        void write.then(() => this.writes.delete(write));
        settled.push(write);
      }
    };
    this.metrics.cacheMisses.inc(run.length);
    this.metrics.ufsRequests.inc({ op: 'read' });
    try {
      const ufs = await this.resolveUfs(first.object.mount);
      let n: number;
      try {
        n = await ufs.readInto(first.object.key, first.offset, buffers, { etag: first.object.etag, signal, onProgress: progress });
      } catch (err) {
        const e = asCachefsError(err);
        this.metrics.ufsErrors.inc({ op: 'read', code: e.code });
        throw e;
      }
      this.metrics.ufsReadBytes.inc(n);
      progress(n);
      if (done < run.length) {
        const short = run[done]!;
        throw new CachefsError('STALE', `object ${first.object.key} is shorter than when it was opened (block ${short.index}: ${Math.max(0, n - (short.offset - first.offset))} of ${short.length} bytes)`);
      }
    } catch (err) {
      for (const w of [...early.slice(done), ...waiting.slice(done)]) w.reject(err);
    } finally {
      await Promise.all(settled);
      // Waiters copy from their block's buffer as its flight settles, before the pool hands it out again.
      for (const b of buffers) this.buffers?.giveLater(b);
    }
  }
}
