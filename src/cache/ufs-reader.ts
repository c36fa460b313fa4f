/**
 * Reads of block ranges from the object store, counted: the one place a block's bytes
 * are asked of the UFS (a whole block or a run of them for the read-through, a range
 * for a small random read or a cluster mount whose workers do not answer). Every
 * request names the object's ETag, so a changed object fails with STALE.
 */
import type { BlockRef } from '../block/block.js';
import { abortError, asCachefsError } from '../errors.js';
import type { Metrics } from '../metrics/metrics.js';
import type { UfsReadOptions, UfsResolver } from '../ufs/ufs.js';

export class UfsReader {
  constructor(readonly resolve: UfsResolver, private readonly metrics: Metrics) {}

  /**
   * Reads from `offset` inside block `ref` into `dest` (one buffer, or the buffers of a
   * run of consecutive blocks starting at `ref`); returns the byte count.
   */
  async readInto(ref: BlockRef, offset: number, dest: Buffer | readonly Buffer[], options: Omit<UfsReadOptions, 'etag'> = {}): Promise<number> {
    this.metrics.ufsRequests.inc({ op: 'read' });
    let n: number;
    try {
      const ufs = await this.resolve(ref.object.mount);
      n = await ufs.readInto(ref.object.key, ref.offset + offset, dest, { ...options, etag: ref.object.etag });
    } catch (err) {
      if (options.signal?.aborted) throw abortError(options.signal);
      const e = asCachefsError(err);
      this.metrics.ufsErrors.inc({ op: 'read', code: e.code });
      throw e;
    }
    this.metrics.ufsReadBytes.inc(n);
    return n;
  }
}
