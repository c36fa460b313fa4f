/**
 * Whole-object files: an object larger than one block, once every block of it is cached,
 * is also kept as one file in the tier, so that an open of it can be handed to the kernel
 * (FUSE passthrough, vfs/passthrough.ts) as an object of one block is handed its block file.
 *
 * The file is the object as one block of its own size (`wholeRef`: the id of block 0 at a
 * block size of the object's size, so its ETag is in the id and a new version is another
 * file), and the tier keeps it as it keeps a block: `<id>.<xxh64>` in its shard, counted
 * against the quota, in the LRU, evicted, indexed at restart. The object's blocks stay too
 * (ordinary reads use them): each file counts its own bytes. Opens that pass through touch
 * the whole file only, so under pressure the blocks go first.
 *
 * Assembled in the background when the last block of the object is stored, or at an open
 * that finds every block cached and no whole file (after it was evicted, or a restart):
 * the blocks are pinned, read through the kept, checked block fds (each file's length and
 * xxh64 checked before its first byte is used, its ctime after every read), written in
 * order to the tier's `tmp/` while the xxh64 of those bytes is made, flushed to disk and
 * then renamed under that checksum (Tier.writeParts): a crash leaves a partial file only in
 * `tmp/`, which a start drops. This process trusts the file it wrote without reading it
 * back (the store vouches for every file it writes: TieredStore.onWritten, BlockFiles.vouch);
 * another process (after a restart) reads and hashes it whole at its first open, as any
 * block file.
 */
import { blockCount, blockRef, type BlockRef, type ObjectRef } from '../block/block.js';
import { RunningSum } from '../block/checksum.js';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { HeldBlockFile } from './block-files.js';
import type { CachedBlocks } from './cached-blocks.js';
import type { StoredBlock } from './tiered-store.js';

/** The whole object as one block: the id its whole-object file is stored under. */
export function wholeRef(object: ObjectRef): BlockRef {
  return blockRef(object, object.size, 0);
}

export class WholeObjects {
  /** Assemblies under way, by whole-object id. */
  private readonly assembling = new Map<string, Promise<void>>();
  /** Whether anyone asked for whole files yet: a mount that passes nothing through assembles nothing. */
  private wanted = false;
  private closed = false;

  constructor(
    private readonly blocks: CachedBlocks,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    blocks.readThrough.onStored((ref) => {
      if (this.wanted && ref.object.size > ref.blockSize) this.assembleIfWhole(ref.object, ref.blockSize);
    });
  }

  /**
   * The object's whole file, checked and held open until `release()`, when the tier has it;
   * undefined otherwise, and then it is assembled in the background if every block of
   * `blockSize` is cached.
   */
  async hold(object: ObjectRef, blockSize: number): Promise<HeldBlockFile | undefined> {
    this.wanted = true;
    const held = await this.blocks.hold(wholeRef(object));
    if (!held) this.assembleIfWhole(object, blockSize);
    return held;
  }

  /** The whole file where the store holds it, checked (as `hold`, which it calls), for its path. */
  async checked(object: ObjectRef, blockSize: number): Promise<StoredBlock | undefined> {
    const held = await this.hold(object, blockSize);
    if (!held) return undefined;
    held.release();
    return this.blocks.readThrough.cached(wholeRef(object));
  }

  /**
   * Calls `use` with the whole file's checked descriptor and checksum, open while `use` runs
   * (a worker passing it to a co-located mount), when the tier has it; undefined otherwise
   * (then assembled as by `hold`). Never fetches anything.
   */
  async lend<T>(object: ObjectRef, blockSize: number, use: (fd: number, sum: string) => T): Promise<{ value: T } | undefined> {
    const held = await this.hold(object, blockSize);
    if (!held) return undefined;
    try {
      const stored = this.blocks.readThrough.cached(wholeRef(object));
      return stored && { value: use(held.fd, stored.sum) };
    } finally {
      held.release();
    }
  }

  /** Stops the assemblies under way (their partial files are removed) and waits for them. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.assembling.values());
  }

  private assembleIfWhole(object: ObjectRef, blockSize: number): void {
    const whole = wholeRef(object);
    const store = this.blocks.readThrough.store;
    if (this.closed || this.assembling.has(whole.id) || store.heldOf([whole.id]).length > 0) return;
    // The file and the blocks it is made of must fit side by side, the blocks pinned meanwhile.
    if (object.size > Math.max(...store.tiers.map((t) => t.quotaBytes)) / 2) return;
    const refs = Array.from({ length: blockCount(object.size, blockSize) }, (_, i) => blockRef(object, blockSize, i));
    if (store.heldOf(refs.map((r) => r.id)).length < refs.length) return;
    const run = this.assemble(whole, refs, blockSize)
      .catch((err: unknown) => {
        if (!this.closed) this.log.warn({ key: object.key, err: (err as Error).message }, 'could not assemble the whole-object file: opens of it are read through cachefs');
      })
      .finally(() => this.assembling.delete(whole.id));
    this.assembling.set(whole.id, run);
  }

  private async assemble(whole: BlockRef, refs: BlockRef[], blockSize: number): Promise<void> {
    const { readThrough } = this.blocks;
    const store = readThrough.store;
    for (const ref of refs) store.pin(ref.id);
    try {
      const buf = Buffer.allocUnsafeSlow(blockSize);
      await store.putParts(whole.id, whole.length, async (append) => {
        const sum = new RunningSum();
        for (const ref of refs) {
          if (this.closed) throw new CachefsError('INTERRUPTED', 'the cache is closing');
          // Pinned, a block is not evicted; one dropped meanwhile (found damaged) ends this, one found damaged by this read is fetched again by it (the object's version, as any read's).
          if (!readThrough.cached(ref)) throw new CachefsError('IO', `block ${ref.index} of ${ref.object.key} left the cache`);
          const bytes = buf.subarray(0, ref.length);
          const { bytes: n } = await this.blocks.read(ref, 0, ref.length, bytes, 0);
          if (n !== ref.length) throw new CachefsError('IO', `block ${ref.index} of ${ref.object.key}: ${n} of ${ref.length} bytes read`);
          sum.update(bytes);
          await append(bytes);
        }
        return sum.digest();
      });
      this.metrics.cacheWholeObjects.inc();
      this.log.debug({ key: whole.object.key, bytes: whole.length }, 'whole-object file assembled');
    } finally {
      for (const ref of refs) store.unpin(ref.id);
    }
  }
}
