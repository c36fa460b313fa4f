/**
 * The worker registry: which workers exist, in which cache group, where to
 * reach them and how full they are. Workers register, then heartbeat; a worker
 * whose heartbeats stop for `workerTimeoutMs` is marked lost and leaves the live
 * list of its group (clients build their rings from that list). Records live in
 * the `MetaStore` under `worker/<id>`, so a restarted master still knows the
 * workers; it gives each of them a full timeout to heartbeat again before it
 * declares any lost. Registrations and state changes are durable before they are
 * acknowledged; heartbeat usage figures are written in batches, since losing a
 * few seconds of them costs nothing. Knows nothing about HTTP.
 */
import { performance } from 'node:perf_hooks';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  decodeWorkerRecord,
  instanceOf,
  type CacheGroupSummary,
  type HeartbeatRequest,
  type RegisterWorkerRequest,
  type WorkerRecord,
  type WorkerState,
  type WorkerTiming,
} from './api.js';
import type { MetaStore, MetaWrite } from './meta-store.js';
import { Serial } from './serial.js';

const PREFIX = 'worker/';
/** How often heartbeat usage figures are written back, at most. */
const USAGE_PERSIST_MS = 5000;

export const DEFAULT_WORKER_TIMEOUT_MS = 10_000;
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 2000;

export interface WorkerRegistryOptions {
  workerTimeoutMs?: number;
  /** The interval workers are told to heartbeat at; default min(2s, timeout/3). */
  heartbeatIntervalMs?: number;
}

export interface WorkerFilter {
  cacheGroup?: string;
  state?: WorkerState;
}

export class WorkerRegistry {
  private readonly serial = new Serial();
  /** Monotonic time each worker was last heard from (wall clocks jump; timeouts must not). */
  private readonly seen = new Map<string, number>();
  private readonly dirty = new Set<string>();
  private lastUsagePersist = performance.now();
  private lost = 0;
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  readonly timing: WorkerTiming;

  private constructor(
    private readonly store: MetaStore,
    private readonly workers: Map<string, WorkerRecord>,
    private readonly logger: Logger,
    options: WorkerRegistryOptions,
  ) {
    const workerTimeoutMs = options.workerTimeoutMs ?? DEFAULT_WORKER_TIMEOUT_MS;
    if (!(workerTimeoutMs > 0)) throw new CachefsError('INVALID_ARGUMENT', `invalid worker timeout ${workerTimeoutMs}ms: must be more than 0`);
    const heartbeatIntervalMs = options.heartbeatIntervalMs ?? Math.max(1, Math.min(DEFAULT_HEARTBEAT_INTERVAL_MS, Math.floor(workerTimeoutMs / 3)));
    this.timing = { heartbeatIntervalMs, workerTimeoutMs };
    const now = performance.now();
    for (const id of workers.keys()) this.seen.set(id, now);
  }

  /** Loads the records from the store; a record that cannot be decoded is logged and left out. */
  static async load(store: MetaStore, logger: Logger, options: WorkerRegistryOptions = {}): Promise<WorkerRegistry> {
    const workers = new Map<string, WorkerRecord>();
    for (const { key, value } of await store.list(PREFIX)) {
      try {
        const record = decodeWorkerRecord(value, `stored worker record ${key}`);
        workers.set(record.id, record);
      } catch (err) {
        logger.error({ key, err: (err as Error).message }, 'skipping unreadable worker record');
      }
    }
    return new WorkerRegistry(store, workers, logger, options);
  }

  /** Times a worker was marked lost since this master started. */
  get lostTotal(): number {
    return this.lost;
  }

  /** Starts the expiry sweep. */
  start(): void {
    if (this.timer) return;
    const every = Math.max(10, Math.min(1000, Math.floor(this.timing.workerTimeoutMs / 4)));
    this.timer = setInterval(() => {
      if (this.sweeping) return;
      this.sweeping = this.sweep()
        .catch((err: unknown) => this.logger.error({ err: (err as Error).message }, 'worker expiry sweep failed'))
        .finally(() => {
          this.sweeping = undefined;
        });
    }, every);
    this.timer.unref();
  }

  /** Stops the sweep and writes back pending usage figures. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.sweeping;
    await this.serial.run(() => this.persistUsage());
  }

  /**
   * Registers a worker or refreshes its registration. The same process may
   * register again at any time. Another process may take over the id when the
   * registered one is lost or overdue, or when it advertises the very same
   * address on the same host (then the old process no longer holds that port);
   * otherwise two live processes claim one id, which is a CONFLICT.
   */
  register(req: RegisterWorkerRequest): Promise<WorkerRecord> {
    return this.serial.run(async () => {
      const existing = this.workers.get(req.id);
      if (existing && instanceOf(existing) !== instanceOf(req) && this.effectiveState(existing) === 'alive') {
        const sameEndpoint = existing.address === req.address && existing.hostname === req.hostname;
        if (!sameEndpoint) {
          const ago = Math.round((performance.now() - (this.seen.get(req.id) ?? 0)) / 1000);
          throw new CachefsError(
            'CONFLICT',
            `worker id '${req.id}' is already registered by a live worker at ${existing.address} on ${existing.hostname} ` +
              `(last heartbeat ${ago}s ago): give each worker its own id, or wait ${Math.ceil(this.timing.workerTimeoutMs / 1000)}s for it to expire`,
          );
        }
      }
      const now = Date.now();
      const record: WorkerRecord = { ...structuredClone(req), registeredAt: now, lastHeartbeat: now, state: 'alive' };
      await this.store.put(PREFIX + record.id, record);
      this.workers.set(record.id, record);
      this.seen.set(record.id, performance.now());
      this.dirty.delete(record.id);
      this.logger.info(
        { id: record.id, cacheGroup: record.cacheGroup, address: record.address, hostname: record.hostname, restarted: existing !== undefined && instanceOf(existing) !== instanceOf(req) },
        existing ? 'worker registered again' : 'worker registered',
      );
      return structuredClone(record);
    });
  }

  /**
   * Records a heartbeat. NOT_FOUND when the id is unknown or was marked lost
   * (the worker registers again); CONFLICT when the id belongs to another process.
   */
  heartbeat(req: HeartbeatRequest): WorkerTiming {
    const record = this.workers.get(req.id);
    if (!record) throw new CachefsError('NOT_FOUND', `worker '${req.id}' is not registered: register first`);
    if (instanceOf(record) !== instanceOf(req)) {
      throw new CachefsError('CONFLICT', `worker id '${req.id}' is registered by another process (at ${record.address}): this process must not use it`);
    }
    if (this.effectiveState(record) === 'lost') throw new CachefsError('NOT_FOUND', `worker '${req.id}' was marked lost: register again`);
    if (req.capacityBytes !== undefined) record.capacityBytes = req.capacityBytes;
    if (req.usedBytes !== undefined) record.usedBytes = req.usedBytes;
    if (req.blocks !== undefined) record.blocks = req.blocks;
    if (req.tiers !== undefined) record.tiers = structuredClone(req.tiers);
    if (req.shortCircuitBytes !== undefined) record.shortCircuitBytes = req.shortCircuitBytes;
    record.lastHeartbeat = Date.now();
    this.seen.set(req.id, performance.now());
    this.dirty.add(req.id);
    return this.timing;
  }

  /** Records matching the filter, alive and lost, ordered by cache group then id. */
  list(filter: WorkerFilter = {}): WorkerRecord[] {
    return [...this.workers.values()]
      .map((w) => ({ ...structuredClone(w), state: this.effectiveState(w) }))
      .filter((w) => (filter.cacheGroup === undefined || w.cacheGroup === filter.cacheGroup) && (filter.state === undefined || w.state === filter.state))
      .sort((a, b) => compare(a.cacheGroup, b.cacheGroup) || compare(a.id, b.id));
  }

  /** The workers a client may send reads to. */
  live(cacheGroup: string): WorkerRecord[] {
    return this.list({ cacheGroup, state: 'alive' });
  }

  groups(): CacheGroupSummary[] {
    const byName = new Map<string, CacheGroupSummary>();
    for (const w of this.list()) {
      let g = byName.get(w.cacheGroup);
      if (!g) byName.set(w.cacheGroup, (g = { name: w.cacheGroup, alive: 0, lost: 0, capacityBytes: 0, usedBytes: 0, blocks: 0 }));
      if (w.state === 'lost') {
        g.lost++;
        continue;
      }
      g.alive++;
      g.capacityBytes += w.capacityBytes;
      g.usedBytes += w.usedBytes;
      g.blocks += w.blocks;
    }
    return [...byName.values()];
  }

  /** Forgets a worker (decommissioned); NOT_FOUND when unknown. */
  remove(id: string): Promise<WorkerRecord> {
    return this.serial.run(async () => {
      const record = this.workers.get(id);
      if (!record) throw new CachefsError('NOT_FOUND', `worker '${id}' is not registered`);
      const state = this.effectiveState(record);
      await this.store.delete(PREFIX + id);
      this.workers.delete(id);
      this.seen.delete(id);
      this.dirty.delete(id);
      this.logger.info({ id, cacheGroup: record.cacheGroup, address: record.address }, 'worker removed');
      return { ...record, state };
    });
  }

  /** Marks overdue workers lost (durably) and writes back usage figures now and then. */
  sweep(): Promise<void> {
    return this.serial.run(async () => {
      const writes: MetaWrite[] = [];
      const lost: WorkerRecord[] = [];
      for (const w of this.workers.values()) {
        if (w.state === 'alive' && this.effectiveState(w) === 'lost') {
          lost.push(w);
          writes.push({ key: PREFIX + w.id, value: { ...w, state: 'lost' } });
        }
      }
      if (writes.length > 0) {
        await this.store.commit(writes);
        for (const w of lost) {
          w.state = 'lost';
          this.lost++;
          this.dirty.delete(w.id);
          this.logger.warn({ id: w.id, cacheGroup: w.cacheGroup, address: w.address, lastHeartbeat: new Date(w.lastHeartbeat).toISOString() }, 'worker lost: no heartbeat within the timeout');
        }
      }
      if (performance.now() - this.lastUsagePersist >= USAGE_PERSIST_MS) await this.persistUsage();
    });
  }

  private async persistUsage(): Promise<void> {
    this.lastUsagePersist = performance.now();
    const writes: MetaWrite[] = [];
    for (const id of this.dirty) {
      const w = this.workers.get(id);
      if (w) writes.push({ key: PREFIX + id, value: w });
    }
    this.dirty.clear();
    if (writes.length > 0) await this.store.commit(writes);
  }

  /** The state as of now, even when the sweep has not caught up yet. */
  private effectiveState(w: WorkerRecord): WorkerState {
    const seenAt = this.seen.get(w.id);
    if (w.state === 'lost' || seenAt === undefined) return 'lost';
    return performance.now() - seenAt > this.timing.workerTimeoutMs ? 'lost' : 'alive';
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
