/**
 * Read-through of blocks into a tiered store: a block that is not cached is fetched
 * from the UFS (one fetch per block, however many readers wait for it), stored, and
 * handed to the waiters together with its bytes so that the first readers need not
 * read the file back. Readers that only copy the bytes (`fetched`) get them as soon as
 * they are in, without waiting for the block's file to be written; until it is, later
 * readers join the same fetch.
 *
 * Each reader joins a fetch with its own signal and stops waiting when it aborts; the
 * fetch (one GET for a run of blocks) is cancelled only once every reader of every
 * block of the run has gone (`SharedWork`), and then gives its buffers back.
 */
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import { CachefsError } from '../errors.js';
import { SharedWork, waitFor } from '../lib/shared-work.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { StoredBlock, TieredStore } from './tiered-store.js';
import type { UfsReader } from './ufs-reader.js';

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
  /** The fetch of the run the block is in, and who still waits for it. */
  work: SharedWork;
}

export class ReadThrough {
  private readonly flights = new Map<string, Flight>();
  /** Block writes under way: their bytes are in, maybe already handed to readers. */
  private readonly writes = new Set<Promise<void>>();

  constructor(
    readonly store: TieredStore,
    readonly ufs: UfsReader,
    readonly metrics: Metrics,
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
    return this.live(ref.id) !== undefined;
  }

  /** The fetch of a block under way, unless it is being cancelled (a reader that comes now starts another). */
  private live(id: string): Flight | undefined {
    const flight = this.flights.get(id);
    return flight && !flight.work.signal.aborted ? flight : undefined;
  }

  /** Makes sure the block is cached, fetching it from the UFS if needed. */
  async ensure(ref: BlockRef, signal?: AbortSignal): Promise<EnsuredBlock> {
    const stored = this.hit(ref);
    return stored ? { stored } : this.join(ref, 'stored', signal);
  }

  /**
   * The block for a reader that copies its bytes at once: from a fetch as soon as the
   * fetch has them (`data`), before they are stored; from the cache (`stored`) when it
   * holds the block.
   */
  async fetched(ref: BlockRef, signal?: AbortSignal): Promise<EnsuredBlock> {
    const stored = this.hit(ref);
    return stored ? { stored } : this.join(ref, 'bytes', signal);
  }

  /**
   * Fetches consecutive blocks of one object with one UFS read, each into a block
   * buffer of its own (a sequential stream's readahead: one GET per run costs the
   * object store and this process less than one per block). Each block is stored and
   * its waiters answered as soon as its bytes are in, not when the run ends. The run
   * stops before the first block that is cached or already being fetched; returns the
   * flights started, one per block, each settling once its block is stored. The run is
   * cancelled once every one of `signals` (the prefetching readers') has aborted and no
   * reader waits for any of its blocks; an undefined signal holds it to its end.
   */
  fetchRun(refs: readonly BlockRef[], signals: readonly (AbortSignal | undefined)[] = [undefined]): Promise<EnsuredBlock>[] {
    const flights = this.startRun(refs);
    if (flights.length > 0) for (const s of signals) flights[0]!.work.join(s);
    return flights.map((f) => f.stored);
  }

  /** The cached block, counted as a cache hit. */
  private hit(ref: BlockRef): StoredBlock | undefined {
    const stored = this.cached(ref);
    if (stored) this.metrics.cacheHits.inc();
    return stored;
  }

  /** Waits for the fetch of a block that is not cached (the one under way, or a new one) until `signal` aborts. */
  private join(ref: BlockRef, until: 'bytes' | 'stored', signal?: AbortSignal): Promise<EnsuredBlock> {
    const flight = this.live(ref.id) ?? this.startRun([ref])[0]!;
    flight.work.join(signal);
    return waitFor(flight[until], signal);
  }

  private startRun(refs: readonly BlockRef[]): Flight[] {
    const run: BlockRef[] = [];
    for (const ref of refs) {
      const prev = run[run.length - 1];
      if (this.cached(ref) || this.live(ref.id)) break;
      if (prev && (ref.object !== prev.object || ref.offset !== prev.offset + prev.length)) break;
      run.push(ref);
    }
    if (run.length === 0) return [];
    const work = new SharedWork();
    const early: Waiter[] = [];
    const waiting: Waiter[] = [];
    const flights = run.map((ref) => {
      const bytes = new Promise<EnsuredBlock>((resolve, reject) => early.push({ resolve, reject }));
      const stored = new Promise<EnsuredBlock>((resolve, reject) => waiting.push({ resolve, reject })).finally(() => {
        if (this.flights.get(ref.id) === flight) this.flights.delete(ref.id);
      });
      // A failure reaches whoever waits on either; a reader may wait on only one, or none (a prefetch).
      bytes.catch(() => {});
      stored.catch(() => {});
      const flight: Flight = { bytes, stored, work };
      this.flights.set(ref.id, flight);
      return flight;
    });
    // Settles every waiter itself and never rejects; the readers it had are let go at the end.
    void this.fill(run, early, waiting, work.signal).finally(() => work.finish());
    return flights;
  }

  /** Waits for the block writes under way: a block a reader got before it was stored is cached by the time a mount closes. */
  async drain(): Promise<void> {
    await Promise.all(this.writes);
  }

  /**
   * Drops a block whose file `path` turned out damaged; the next `ensure` refetches it.
   * Readers that found the same file damaged at the same time drop and count it once.
   */
  async discard(ref: BlockRef, path: string, why: string): Promise<void> {
    if (this.store.lookup(ref.id)?.path !== path) return;
    this.metrics.cacheCorrupt.inc();
    this.log.warn({ block: ref.id, key: ref.object.key, index: ref.index, why }, 'dropping damaged cached block');
    await this.store.remove(ref.id);
  }

  private async fill(run: BlockRef[], early: Waiter[], waiting: Waiter[], signal: AbortSignal): Promise<void> {
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
        this.metrics.cacheWritesInFlight.inc();
        void write.then(() => this.metrics.cacheWritesInFlight.dec());
        void write.then(() => this.writes.delete(write));
        settled.push(write);
      }
    };
    this.metrics.cacheMisses.inc(run.length);
    try {
      const n = await this.ufs.readInto(first, 0, buffers, { signal, onProgress: progress });
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
