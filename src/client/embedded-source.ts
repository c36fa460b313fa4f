/**
 * The block source of a mount without a cluster (and of a sharing mount's own
 * worker): reads through a local cache in-process. How a block is served is the read
 * policy's (cache/read-policy.ts): cached blocks and fetched ones through
 * `CachedBlocks`, a small random read of a cold block by a ranged GET while the block
 * is filled in the background. Prefetches of consecutive blocks go out as one UFS read
 * per run (prefetch-runs.ts), and stop when the file handle that asked for them is
 * released and no reader waits for them. Objects larger than a block are kept whole too,
 * once all their blocks are cached, for opens that pass through (cache/whole-objects.ts).
 */
import type { BlockRef, ObjectRef } from '../block/block.js';
import type { CachedBlocks } from '../cache/cached-blocks.js';
import { PrefetchRuns } from '../cache/prefetch-runs.js';
import type { EnsuredBlock } from '../cache/read-through.js';
import { wholeRef, WholeObjects } from '../cache/whole-objects.js';
import { rangedMiss, runBlocks, type ReadPolicy } from '../cache/read-policy.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { BlockRead, BlockSource, FillOutcome, LocalFile, ReadHandle } from './block-source.js';

export class EmbeddedSource implements BlockSource {
  private readonly prefetches: PrefetchRuns<EnsuredBlock>;
  private readonly bytes;

  constructor(
    private readonly blocks: CachedBlocks,
    private readonly policy: ReadPolicy,
    metrics: Metrics,
    log: Logger,
    /** Blocks prefetched at once (each holds a block buffer while in flight). */
    prefetchBlocks: number,
    private readonly blockSize: number,
    /** Whole-object files of the store: one per store, shared with the worker whose store it is (a sharing mount's). */
    private readonly wholes = new WholeObjects(blocks, metrics, log),
  ) {
    const readThrough = blocks.readThrough;
    this.prefetches = new PrefetchRuns(
      (run, signal) => {
        const flights = readThrough.fetchRun(run, signal);
        for (const f of flights) f.catch((err: unknown) => log.debug({ err: (err as Error).message }, 'prefetch failed'));
        return flights;
      },
      prefetchBlocks,
      runBlocks(policy, blockSize),
      (ref) => Boolean(readThrough.cached(ref)) || readThrough.isFetching(ref),
    );
    this.bytes = { cache: metrics.clientReadBytes.labels({ path: 'cache' }), ufs: metrics.clientReadBytes.labels({ path: 'ufs' }) };
  }

  async read(req: BlockRead): Promise<number> {
    const { ref } = req;
    const readThrough = this.blocks.readThrough;
    if (!readThrough.cached(ref)) {
      if (rangedMiss(this.policy, req, readThrough.isFetching(ref))) return this.readRange(req);
      void this.prefetches.startNow(ref); // a queued prefetch of this block goes out now (its failures are logged)
    }
    const { bytes, from } = await this.blocks.read(ref, req.offset, req.length, req.dest, req.destOffset, req.signal);
    this.bytes[from].inc(bytes);
    return bytes;
  }

  prefetch(ref: BlockRef, _streaming: boolean, handle?: ReadHandle): void {
    const readThrough = this.blocks.readThrough;
    if (readThrough.cached(ref) || readThrough.isFetching(ref)) return;
    this.prefetches.add(ref, handle?.signal);
  }

  async fill(ref: BlockRef, signal: AbortSignal): Promise<FillOutcome> {
    const readThrough = this.blocks.readThrough;
    if (readThrough.cached(ref) || readThrough.isFetching(ref)) return 'cached';
    const { stored } = await readThrough.ensure(ref, signal);
    return stored ? 'fetched' : 'skipped';
  }

  /** The block's file when it is cached: nothing holds it in the tier, the kernel keeps its own reference to what it was given. */
  async localFile(ref: BlockRef): Promise<LocalFile | undefined> {
    const held = await this.blocks.hold(ref);
    return held && { fd: held.fd, release: held.release, storeId: ref.id };
  }

  /** The object's whole-object file when the tier has one (assembled once all its blocks are cached); held the same way. */
  async wholeFile(object: ObjectRef): Promise<LocalFile | undefined> {
    const held = await this.wholes.hold(object, this.blockSize);
    return held && { fd: held.fd, release: held.release, storeId: wholeRef(object).id };
  }

  onLocalFileRemoved(listener: (storeId: string) => void): void {
    this.blocks.readThrough.store.onRemoved(listener);
  }

  /** A small random read of a cold block: its range from the UFS now, the whole block in the background. */
  private async readRange(req: BlockRead): Promise<number> {
    const dest = req.dest.subarray(req.destOffset, req.destOffset + req.length);
    const n = await this.blocks.readThrough.ufs.readInto(req.ref, req.offset, dest, { signal: req.signal });
    this.bytes.ufs.inc(n);
    this.prefetch(req.ref, false, req.handle);
    return n;
  }

  async close(): Promise<void> {
    await this.blocks.readThrough.drain();
    await this.wholes.close();
    this.blocks.close();
  }
}
