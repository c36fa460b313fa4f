/**
 * A block's bytes through the cache, for whoever serves them — the embedded mount, the
 * worker's HTTP block service and its socket stream: a cached block is read from its
 * file through a kept fd (closed when the store evicts the block); a block that is not
 * cached is fetched once (`ReadThrough`) and its bytes handed over as soon as they are
 * in. A block file that turns out short, missing, unreadable or not the bytes it was
 * filled with (its checksum, checked before its first byte is served) is dropped,
 * counted, and the block fetched again — once; a second failure is the read's.
 */
import type { BlockRef } from '../block/block.js';
import { CachefsError } from '../errors.js';
import { BlockFiles, type HeldBlockFile } from './block-files.js';
import type { ReadThrough } from './read-through.js';

/** Where a read's bytes came from: the cache, or the fetch from the UFS it joined. */
export type ServedFrom = 'cache' | 'ufs';

export interface CachedRead {
  bytes: number;
  from: ServedFrom;
}

export class CachedBlocks {
  private readonly files: BlockFiles;

  constructor(readonly readThrough: ReadThrough) {
    this.files = new BlockFiles(undefined, () => readThrough.metrics.cacheFileChecks.inc());
    // An fd kept on an evicted block's file would hold its disk space past the cache quota.
    readThrough.store.onRemoved((id) => this.files.invalidate(id));
    readThrough.store.onWritten((id, identity, sum) => this.files.vouch(id, identity, sum));
  }

  /** Copies `length` bytes at `offset` inside the block into `dest` at `destOffset`. */
  async read(ref: BlockRef, offset: number, length: number, dest: Buffer, destOffset: number, signal?: AbortSignal): Promise<CachedRead> {
    for (let attempt = 0; ; attempt++) {
      const block = await this.readThrough.fetched(ref, signal);
      if (block.data) return { bytes: block.data.copy(dest, destOffset, offset, offset + length), from: 'ufs' };
      const { path, sum } = block.stored!;
      try {
        return { bytes: await this.files.read({ id: ref.id, path, length: ref.length, sum }, dest, destOffset, length, offset), from: 'cache' };
      } catch (err) {
        this.files.invalidate(ref.id);
        const why = (err as Error).message;
        if (attempt > 0) throw new CachefsError('CORRUPT_BLOCK', `block ${ref.index} of ${ref.object.key} is damaged in the cache again after a refetch: ${why}`, { cause: err });
        await this.readThrough.discard(ref, path, why);
      }
    }
  }

  /**
   * The block's file, checked and held open until `release()`, when the block is cached;
   * undefined otherwise. A damaged file is dropped (the next read fetches the block again).
   */
  async hold(ref: BlockRef): Promise<HeldBlockFile | undefined> {
    const stored = this.readThrough.cached(ref);
    if (!stored) return undefined;
    try {
      return await this.files.hold({ id: ref.id, path: stored.path, length: ref.length, sum: stored.sum });
    } catch (err) {
      this.files.invalidate(ref.id);
      await this.readThrough.discard(ref, stored.path, (err as Error).message);
      return undefined;
    }
  }

  /**
   * Makes sure the block is cached and calls `use` with the open descriptor of its file,
   * checked (length and checksum), for as long as `use` runs; a damaged file is dropped and
   * the block fetched again, once. Undefined when the block could not be stored.
   */
  async lendFile<T>(ref: BlockRef, use: (fd: number, sum: string) => T, signal?: AbortSignal): Promise<{ value: T } | undefined> {
    for (let attempt = 0; ; attempt++) {
      const { stored } = await this.readThrough.ensure(ref, signal);
      if (!stored) return undefined;
      const { path, sum } = stored;
      try {
        return { value: await this.files.lend({ id: ref.id, path, length: ref.length, sum }, (fd) => use(fd, sum)) };
      } catch (err) {
        this.files.invalidate(ref.id);
        const why = (err as Error).message;
        if (attempt > 0) throw new CachefsError('CORRUPT_BLOCK', `block ${ref.index} of ${ref.object.key} is damaged in the cache again after a refetch: ${why}`, { cause: err });
        await this.readThrough.discard(ref, path, why);
      }
    }
  }

  close(): void {
    this.files.closeAll();
  }
}
