/**
 * A worker's block store: tiers ordered fastest first (MEM, SSD, HDD). A new block
 * goes to the fastest tier with room; when a tier's usage passes `high × quota`,
 * least-recently-used blocks are evicted until it is at or below `low × quota`.
 * Pinned blocks (open readers, short-circuit clients) are never evicted; a tier left
 * above `high` because its blocks were pinned is trimmed when the last pin goes. Bytes
 * being written count toward a tier's usage from the start, so concurrent fills never
 * overrun its quota.
 */
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { CachefsError } from '../errors.js';
import { FileLock } from '../sys/file-lock.js';
import { blockSum } from '../block/checksum.js';
import { Tier, type TierBlock, type TierConfig } from './tier.js';

export interface StoreConfig {
  tiers: TierConfig[];
  high: number;
  low: number;
  /** The group that may read block files (a worker's short-circuit readers); the process's own when absent. */
  group?: number;
}

export interface StoredBlock extends TierBlock {
  tier: Tier;
}

const MEDIUM_ORDER = { MEM: 0, SSD: 1, HDD: 2 } as const;

export class TieredStore {
  readonly tiers: Tier[];
  private readonly pins = new Map<string, number>();
  /** Tiers whose last watermark eviction stopped short of `low` because of pins. */
  private readonly shortOfLow = new Set<Tier>();
  /** Bytes of blocks being written, by tier. */
  private readonly writing = new Map<Tier, number>();
  private readonly locks: FileLock[] = [];
  private readonly high: number;
  private readonly low: number;
  private readonly removedListeners: ((id: string) => void)[] = [];
  private readonly writtenListeners: ((id: string, identity: string, sum: string) => void)[] = [];

  constructor(config: StoreConfig, private readonly metrics: Metrics, private readonly log: Logger) {
    if (!(config.low < config.high)) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid watermarks: low ${config.low} must be below high ${config.high}`);
    }
    this.high = config.high;
    this.low = config.low;
    this.tiers = [...config.tiers].sort((a, b) => MEDIUM_ORDER[a.medium] - MEDIUM_ORDER[b.medium]).map((t) => new Tier(t, log, config.group));
  }

  /** Locks and indexes every tier; fails if another process holds one of the dirs. */
  async open(): Promise<void> {
    try {
      for (const tier of this.tiers) {
        this.locks.push(await FileLock.acquire(tier.dir, { file: '.lock', what: 'cache dir', owner: 'process', hint: 'give each mount or worker its own cache dir (the lock holds across containers and PID namespaces)' }));
        await tier.open();
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    this.publish();
  }

  /** Writes each tier's index (so the next start is quick) and lets go of the dirs. */
  async close(): Promise<void> {
    if (this.locks.length === this.tiers.length) for (const tier of this.tiers) await tier.writeIndex();
    for (const lock of this.locks.splice(0)) await lock.release();
  }

  get usedBytes(): number {
    return this.tiers.reduce((n, t) => n + t.usedBytes, 0);
  }

  get capacityBytes(): number {
    return this.tiers.reduce((n, t) => n + t.quotaBytes, 0);
  }

  get blockCount(): number {
    return this.tiers.reduce((n, t) => n + t.blockCount, 0);
  }

  get pinnedCount(): number {
    return this.pins.size;
  }

  lookup(id: string): StoredBlock | undefined {
    for (const tier of this.tiers) {
      const block = tier.blockOf(id);
      if (block) {
        tier.touch(id);
        return { ...block, tier };
      }
    }
    return undefined;
  }

  /**
   * Stores a block under the checksum of its bytes, made now (before any reader sees the
   * file); fails with IO when every tier is full of pinned blocks and blocks being written.
   */
  async put(id: string, data: Buffer): Promise<StoredBlock> {
    const existing = this.lookup(id);
    if (existing && existing.length === data.length) return existing;
    const sum = blockSum(data);
    for (const tier of this.tiers) {
      const writing = (): number => this.writing.get(tier) ?? 0;
      if (tier.usedBytes + writing() + data.length > tier.quotaBytes) await this.evict(tier, tier.quotaBytes - writing() - data.length, id);
      if (tier.usedBytes + writing() + data.length <= tier.quotaBytes) {
        this.writing.set(tier, writing() + data.length);
        try {
          const identity = await tier.write(id, data, sum);
          for (const listener of this.writtenListeners) listener(id, identity, sum);
        } finally {
          this.writing.set(tier, writing() - data.length);
        }
        if (tier.usedBytes > this.high * tier.quotaBytes) {
          await this.evict(tier, this.low * tier.quotaBytes, id);
          if (tier.usedBytes > this.low * tier.quotaBytes) this.shortOfLow.add(tier);
        }
        this.publish();
        return { ...tier.blockOf(id)!, tier };
      }
    }
    this.publish();
    throw new CachefsError('IO', `no room for a ${data.length}-byte block: every tier is full of pinned blocks and blocks being written`);
  }

  /** Drops a block (e.g. found truncated on disk). */
  async remove(id: string): Promise<void> {
    for (const tier of this.tiers) await tier.remove(id);
    this.removed(id);
    this.publish();
  }

  /** The ids among `ids` that the store holds, with their lengths; asks without counting as a use (no LRU touch). */
  heldOf(ids: readonly string[]): { id: string; length: number }[] {
    const held: { id: string; length: number }[] = [];
    for (const id of ids) {
      for (const tier of this.tiers) {
        const block = tier.blockOf(id);
        if (block) {
          held.push({ id, length: block.length });
          break;
        }
      }
    }
    return held;
  }

  /** Drops the blocks among `ids` that are held and not pinned (a dataset evicted on request); returns what went. */
  async drop(ids: readonly string[]): Promise<{ blocks: number; bytes: number; pinned: number }> {
    let blocks = 0;
    let bytes = 0;
    let pinned = 0;
    for (const { id, length } of this.heldOf(ids)) {
      if (this.pins.has(id)) {
        pinned++;
        continue;
      }
      let gone = false;
      for (const tier of this.tiers) gone = (await tier.remove(id)) || gone;
      if (!gone) continue;
      this.removed(id);
      this.metrics.cacheEvictions.inc();
      blocks++;
      bytes += length;
    }
    this.publish();
    return { blocks, bytes, pinned };
  }

  /**
   * Calls `listener` with each block dropped from the store (evicted or removed) once its
   * file is gone: whoever keeps the file open should close it, or the disk keeps its bytes.
   */
  onRemoved(listener: (id: string) => void): void {
    this.removedListeners.push(listener);
  }

  /**
   * Calls `listener` with each block this store writes, its file's identity right after the
   * write (`fileIdentity`) and the checksum of the bytes written: whoever checks block files
   * before serving them need not read this one back.
   */
  onWritten(listener: (id: string, identity: string, sum: string) => void): void {
    this.writtenListeners.push(listener);
  }

  private removed(id: string): void {
    for (const listener of this.removedListeners) listener(id);
  }

  pin(id: string): void {
    this.pins.set(id, (this.pins.get(id) ?? 0) + 1);
    this.metrics.pinnedBlocks.set(this.pins.size);
  }

  unpin(id: string): void {
    const n = this.pins.get(id);
    if (n === undefined) return;
    if (n <= 1) this.pins.delete(id);
    else this.pins.set(id, n - 1);
    this.metrics.pinnedBlocks.set(this.pins.size);
    if (n <= 1) this.trimLater();
  }

  /** Evicts down to `low` any tier still above `high` (its blocks were pinned when it filled). */
  private trimLater(): void {
    const over = this.tiers.filter((t) => this.shortOfLow.has(t) || t.usedBytes > this.high * t.quotaBytes);
    if (!over.length) return;
    Promise.all(
      over.map(async (t) => {
        await this.evict(t, this.low * t.quotaBytes, '');
        if (t.usedBytes <= this.low * t.quotaBytes) this.shortOfLow.delete(t);
      }),
    )
      .then(() => this.publish())
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'trimming the cache failed'));
  }

  isPinned(id: string): boolean {
    return this.pins.has(id);
  }

  /** Evicts unpinned blocks of the tier other than `keep` (the block being stored), oldest first, until its usage is at most `target` bytes. */
  private async evict(tier: Tier, target: number, keep: string): Promise<void> {
    const victims: string[] = [];
    let used = tier.usedBytes;
    for (const [id, length] of tier.lru()) {
      if (used <= target) break;
      if (this.pins.has(id) || id === keep) continue;
      victims.push(id);
      used -= length;
    }
    // Each removal forgets its block at once, before its file is gone: a write running
    // alongside sees the room, and an eviction running alongside neither picks nor counts
    // the same block again.
    await Promise.all(
      victims.map(async (id) => {
        if (!(await tier.remove(id))) return;
        this.removed(id);
        this.metrics.cacheEvictions.inc();
      }),
    );
    if (victims.length) this.log.debug({ tier: tier.medium, evicted: victims.length, used: tier.usedBytes }, 'evicted blocks');
  }

  private publish(): void {
    for (const tier of this.tiers) {
      const label = { tier: `${tier.medium}:${tier.dir}` };
      this.metrics.cacheUsedBytes.set(label, tier.usedBytes);
      this.metrics.cacheCapacityBytes.set(label, tier.quotaBytes);
      this.metrics.cacheBlocks.set(label, tier.blockCount);
    }
  }
}
