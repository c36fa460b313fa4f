/**
 * The worker registry: which workers exist, in which cache group, where to
 * reach them and how full they are. Workers register, then heartbeat; a worker
 * whose heartbeats stop for `workerTimeoutMs` is marked lost and leaves the live
 * list of its group (clients build their rings from that list). Records live in
 * the `MetaStore` under `worker/<id>`, so a restarted master still knows the
 * workers; it gives each of them a full timeout to heartbeat again before it
 * declares any lost. Registrations and state changes are durable before they are
 * acknowledged; heartbeat usage figures are written in batches, since losing a
 * few seconds of them costs nothing.
 *
 * Each registration is answered with a random credential that proves it from then
 * on: heartbeats carry it, a live worker's id is taken over only by a caller that
 * presents it (the worker registering again, or its restart that kept it), and a
 * worker is removed only with it or by an admin's explicit `force`. The registry
 * keeps only the credential's SHA-256 (stored with the record, never listed) and
 * compares in constant time. A record stored without one (by an older master) is
 * held by nobody: the next registration of its id takes it. Knows nothing about HTTP.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
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
import { Fields } from './decode.js';
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

/** Who asks to remove a worker: the worker itself (its credential), or an admin who says `force`. */
export interface RemovalProof {
  credential?: string;
  force?: boolean;
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
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
    /** SHA-256 of each worker's registration credential, by id. */
    private readonly credentials: Map<string, Buffer>,
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
    const credentials = new Map<string, Buffer>();
    for (const { key, value } of await store.list(PREFIX)) {
      try {
        const record = decodeWorkerRecord(value, `stored worker record ${key}`);
        const digest = Fields.of(value, key).optionalString('credentialSha256');
        workers.set(record.id, record);
        if (digest !== undefined) credentials.set(record.id, Buffer.from(digest, 'hex'));
      } catch (err) {
        logger.error({ key, err: (err as Error).message }, 'skipping unreadable worker record');
      }
    }
    return new WorkerRegistry(store, workers, credentials, logger, options);
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
   * Registers a worker or refreshes its registration, and answers with a new
   * credential for it. A lost (or unknown) id is free; a live one is taken only by
   * a caller that presents its current credential (`req.credential`): otherwise two
   * processes claim one id, which is a CONFLICT, whatever address they advertise.
   */
  register(req: RegisterWorkerRequest): Promise<{ worker: WorkerRecord; credential: string }> {
    return this.serial.run(async () => {
      const { credential: presented, ...announced } = req;
      const existing = this.workers.get(req.id);
      if (existing && this.effectiveState(existing) === 'alive' && this.credentials.has(req.id) && !this.holds(req.id, presented)) {
        const ago = Math.round((performance.now() - (this.seen.get(req.id) ?? 0)) / 1000);
        throw new CachefsError(
          'CONFLICT',
          `worker id '${req.id}' is already registered by a live worker at ${existing.address} on ${existing.hostname} ` +
            `(last heartbeat ${ago}s ago): give each worker its own id, or wait ${Math.ceil(this.timing.workerTimeoutMs / 1000)}s for it to expire`,
        );
      }
      const now = Date.now();
      const record: WorkerRecord = { ...structuredClone(announced), registeredAt: now, lastHeartbeat: now, state: 'alive' };
      const credential = randomBytes(32).toString('base64url');
      const digest = sha256(credential);
      await this.store.put(PREFIX + record.id, this.stored(record, digest));
      this.workers.set(record.id, record);
      this.credentials.set(record.id, digest);
      this.seen.set(record.id, performance.now());
      this.dirty.delete(record.id);
      this.logger.info(
        { id: record.id, cacheGroup: record.cacheGroup, address: record.address, hostname: record.hostname, restarted: existing !== undefined && instanceOf(existing) !== instanceOf(req) },
        existing ? 'worker registered again' : 'worker registered',
      );
      return { worker: structuredClone(record), credential };
    });
  }

  /**
   * Records a heartbeat. NOT_FOUND when the id is unknown or was marked lost
   * (the worker registers again); CONFLICT when the credential is not the one of
   * the id's registration (another process holds the id).
   */
  heartbeat(req: HeartbeatRequest): WorkerTiming {
    const record = this.workers.get(req.id);
    if (!record) throw new CachefsError('NOT_FOUND', `worker '${req.id}' is not registered: register first`);
    if (!this.credentials.has(req.id)) throw new CachefsError('NOT_FOUND', `worker '${req.id}' has no registration credential yet: register again`);
    if (!this.holds(req.id, req.credential)) {
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

  /**
   * Forgets a worker (decommissioned); NOT_FOUND when unknown. Only the worker itself
   * (its credential) or an admin who says `force` may: ACCESS_DENIED otherwise.
   */
  remove(id: string, proof: RemovalProof): Promise<WorkerRecord> {
    return this.serial.run(async () => {
      const record = this.workers.get(id);
      if (!record) throw new CachefsError('NOT_FOUND', `worker '${id}' is not registered`);
      const byItself = this.holds(id, proof.credential);
      if (!byItself && proof.force !== true) {
        throw new CachefsError('ACCESS_DENIED', `worker '${id}' may be removed only by itself (with its registration credential) or by an admin with force=1`);
      }
      const state = this.effectiveState(record);
      await this.store.delete(PREFIX + id);
      this.workers.delete(id);
      this.credentials.delete(id);
      this.seen.delete(id);
      this.dirty.delete(id);
      this.logger.info({ id, cacheGroup: record.cacheGroup, address: record.address, by: byItself ? 'the worker' : 'an admin (force)' }, 'worker removed');
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
          writes.push({ key: PREFIX + w.id, value: this.stored({ ...w, state: 'lost' }) });
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
      if (w) writes.push({ key: PREFIX + id, value: this.stored(w) });
    }
    this.dirty.clear();
    if (writes.length > 0) await this.store.commit(writes);
  }

  /** True when `presented` is the credential of the id's registration (constant time). */
  private holds(id: string, presented: string | undefined): boolean {
    const digest = this.credentials.get(id);
    return digest?.length === 32 && presented !== undefined && timingSafeEqual(sha256(presented), digest);
  }

  /** The record as stored: with its credential's digest. */
  private stored(record: WorkerRecord, digest = this.credentials.get(record.id)): Record<string, unknown> {
    return digest ? { ...record, credentialSha256: digest.toString('hex') } : { ...record };
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
