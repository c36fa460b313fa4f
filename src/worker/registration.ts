/**
 * A worker's membership in its cache group: registers with the master, sends
 * heartbeats at the interval the master asks for, registers again when the master
 * forgot it (restart, expiry), and keeps retrying with capped backoff while the
 * master is down. A duplicate id held by another live worker is fatal.
 */
import { randomUUID } from 'node:crypto';
import { CachefsError, isCachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RegisterWorkerRequest, WorkerUsage } from '../master/api.js';
import type { MasterClient } from '../master/client.js';

const MAX_BACKOFF_MS = 5000;

export class Registration {
  readonly instance = randomUUID();
  readonly startedAt = Date.now();
  private timer?: NodeJS.Timeout;
  private closed = false;
  private registered = false;
  private intervalMs = 2000;
  private backoffMs = 200;

  constructor(
    private readonly master: MasterClient,
    private readonly identity: Omit<RegisterWorkerRequest, keyof WorkerUsage | 'startedAt' | 'instance'>,
    private readonly usage: () => WorkerUsage,
    private readonly log: Logger,
    private readonly onFatal: (err: CachefsError) => void,
  ) {}

  /** Registers once (CONFLICT for a duplicate id is thrown; an unreachable master is retried in the background). */
  async start(): Promise<void> {
    try {
      await this.register();
    } catch (err) {
      if (isCachefsError(err, 'CONFLICT') || isCachefsError(err, 'INVALID_ARGUMENT')) throw err;
      this.log.warn({ err: (err as Error).message }, 'master not reachable: registering in the background');
    }
    this.schedule(this.registered ? this.intervalMs : this.backoffMs);
  }

  private request(): RegisterWorkerRequest {
    return { ...this.identity, ...this.usage(), startedAt: this.startedAt, instance: this.instance };
  }

  private async register(): Promise<void> {
    const res = await this.master.registerWorker(this.request(), { retries: 0 });
    this.intervalMs = res.heartbeatIntervalMs;
    this.registered = true;
    this.backoffMs = 200;
    this.log.info({ id: this.identity.id, cacheGroup: this.identity.cacheGroup, address: this.identity.address }, 'registered with the master');
  }

  private async beat(): Promise<void> {
    try {
      if (!this.registered) await this.register();
      else {
        const res = await this.master.heartbeat({ id: this.identity.id, startedAt: this.startedAt, instance: this.instance, ...this.usage() }, { retries: 0 });
        this.intervalMs = res.heartbeatIntervalMs;
      }
      this.schedule(this.intervalMs);
    } catch (err) {
      if (isCachefsError(err, 'NOT_FOUND')) {
        this.registered = false;
        this.schedule(0);
        return;
      }
      if (isCachefsError(err, 'CONFLICT')) {
        this.onFatal(new CachefsError('CONFLICT', `worker id '${this.identity.id}' is taken by another live worker: ${(err as Error).message}`));
        return;
      }
      this.log.warn({ err: (err as Error).message }, 'heartbeat failed; retrying');
      this.schedule(this.backoffMs);
      this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
    }
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.beat(), ms);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }
}
