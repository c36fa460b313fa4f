/**
 * A client's view of its cache group: the live workers as a `WorkerRing`,
 * refreshed from the master (or the master client's on-disk copy while the
 * master is down), plus short-lived suspicion of workers that just failed a read
 * so the next reads skip them until the master confirms or clears them. Workers
 * of another block size are left out (they refuse this mount's block requests),
 * with a warning.
 */
import type { Logger } from '../log.js';
import type { WorkerRecord } from '../master/api.js';
import type { MasterClient } from '../master/client.js';
import { Poller } from '../lib/poller.js';
import { WorkerRing } from './worker-ring.js';

const SUSPECT_MS = 5000;

export class Membership {
  private current = new WorkerRing<WorkerRecord>([]);
  private readonly suspects = new Map<string, number>();
  private readonly poller: Poller;
  private warnedEmpty = false;
  private readonly warnedBlockSize = new Set<string>();
  private readonly listeners: ((workers: readonly WorkerRecord[]) => void)[] = [];

  constructor(private readonly master: MasterClient, readonly cacheGroup: string, private readonly blockSize: number, private readonly log: Logger, intervalMs = 2000) {
    this.poller = new Poller(`worker list of cache group '${cacheGroup}'`, intervalMs, () => this.refresh(), log);
  }

  /** Starts polling; an unreachable master only means reading from the UFS until it answers. */
  async start(): Promise<void> {
    await this.poller.start(true);
  }

  get ring(): WorkerRing<WorkerRecord> {
    return this.current;
  }

  /** Calls `listener` with the live workers whenever the set changes (not for the set of now). */
  onChange(listener: (workers: readonly WorkerRecord[]) => void): void {
    this.listeners.push(listener);
  }

  /** Workers to try for a block, most preferred first, skipping recent failures. */
  candidates(blockId: string): WorkerRecord[] {
    const now = Date.now();
    return this.current.order(blockId).filter((w) => (this.suspects.get(w.id) ?? 0) < now);
  }

  /** The worker failed a request: skip it for a while and ask the master for news. */
  suspect(workerId: string): void {
    this.suspects.set(workerId, Date.now() + SUSPECT_MS);
    void this.poller.poke();
  }

  private async refresh(): Promise<void> {
    const live = await this.master.liveWorkers(this.cacheGroup);
    live.value = live.value.filter((w) => this.sameBlockSize(w));
    const before = new Set(this.current.all.map((w) => `${w.id}@${w.address}/${w.instance ?? w.startedAt}`));
    const after = new Set(live.value.map((w) => `${w.id}@${w.address}/${w.instance ?? w.startedAt}`));
    const changed = before.size !== after.size || [...after].some((k) => !before.has(k));
    this.current = new WorkerRing(live.value);
    if (changed) {
      // A worker that re-registered is trusted again.
      for (const w of live.value) if (!before.has(`${w.id}@${w.address}/${w.instance ?? w.startedAt}`)) this.suspects.delete(w.id);
      this.log.info({ cacheGroup: this.cacheGroup, workers: live.value.map((w) => w.id), source: live.source }, 'cache group membership changed');
      for (const listener of this.listeners) listener(live.value);
    }
    if (live.value.length === 0 && !this.warnedEmpty) {
      this.warnedEmpty = true;
      this.log.warn({ cacheGroup: this.cacheGroup }, 'cache group has no live workers: reading from the UFS');
    } else if (live.value.length > 0) this.warnedEmpty = false;
  }

  private sameBlockSize(w: WorkerRecord): boolean {
    if (w.blockSize === undefined || w.blockSize === this.blockSize) return true;
    if (!this.warnedBlockSize.has(w.id)) {
      this.warnedBlockSize.add(w.id);
      this.log.warn({ worker: w.id, workerBlockSize: w.blockSize, blockSize: this.blockSize }, 'worker serves another block size: not reading from it (give mounts and workers the same --block-size)');
    }
    return false;
  }

  async close(): Promise<void> {
    await this.poller.close();
  }
}
