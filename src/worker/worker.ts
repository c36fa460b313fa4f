/**
 * A cache worker: a tiered block store with read-through from the UFS, served
 * over HTTP to clients of its cache group, registered with the master. Runs as
 * `cachefs worker`, or embedded in a sharing mount.
 */
import { DEFAULT_BLOCK_SIZE } from '../block/block.js';
import { BufferPool } from '../block/buffer-pool.js';
import type { Logger } from '../log.js';
import type { MasterClient } from '../master/client.js';
import type { UfsResolver } from '../ufs/ufs.js';
import type { Metrics } from '../metrics/metrics.js';
import type { TierConfig } from '../cache/tier.js';
import { TieredStore } from '../cache/tiered-store.js';
import { BlockService } from './block-service.js';
import { DomainSocketService } from './domain-socket-service.js';
import { CachedBlocks } from '../cache/cached-blocks.js';
import { ReadThrough } from '../cache/read-through.js';
import { UfsReader } from '../cache/ufs-reader.js';
import { Registration } from './registration.js';

/**
 * Block buffers the block service owns for blocks it reads from the store (blocks of up
 * to the default size; others, and more at once, are allocated per request): as many as
 * a client's connections read at once.
 */
const SERVED_BUFFERS = 8;
/**
 * Bytes the block service holds for requests in flight at most: 16 cold blocks of the
 * default size fetched and answered at once (a client's 8 connections, twice over).
 */
const IN_FLIGHT_BYTES = 16 * 2 * DEFAULT_BLOCK_SIZE;

export interface WorkerConfig {
  id: string;
  cacheGroup: string;
  tiers: TierConfig[];
  high: number;
  low: number;
  /** Address the block service listens on. */
  host: string;
  port: number;
  /** Host clients use to reach this worker. */
  advertiseHost: string;
  hostname: string;
  /** Unix socket for co-located clients (short-circuit and stream); '' for none. */
  domainSocketPath: string;
}

export interface WorkerDeps {
  master: MasterClient;
  resolveUfs: UfsResolver;
  metrics: Metrics;
  log: Logger;
  /** Called when the worker cannot go on (its id was taken over). */
  onFatal: (err: Error) => void;
}

export class Worker {
  private constructor(
    readonly config: WorkerConfig,
    readonly store: TieredStore,
    readonly blocks: CachedBlocks,
    readonly service: BlockService,
    readonly registration: Registration,
    readonly socket: DomainSocketService | undefined,
  ) {}

  get address(): string {
    return `${this.config.advertiseHost}:${this.service.port}`;
  }

  static async start(config: WorkerConfig, deps: WorkerDeps): Promise<Worker> {
    const store = new TieredStore({ tiers: config.tiers, high: config.high, low: config.low }, deps.metrics, deps.log);
    await store.open();
    const blocks = new CachedBlocks(new ReadThrough(store, new UfsReader(deps.resolveUfs, deps.metrics), deps.metrics, deps.log));
    let service: BlockService;
    let socket: DomainSocketService | undefined;
    try {
      const buffers = new BufferPool(DEFAULT_BLOCK_SIZE, SERVED_BUFFERS);
      service = await BlockService.start({ blocks, buffers, inFlightBytes: IN_FLIGHT_BYTES, metrics: deps.metrics, registry: deps.metrics.registry, log: deps.log, host: config.host, port: config.port });
      try {
        if (config.domainSocketPath) socket = await DomainSocketService.start(config.domainSocketPath, blocks, deps.metrics, deps.log);
      } catch (err) {
        await service.close();
        throw err;
      }
    } catch (err) {
      await store.close();
      throw err;
    }
    const registration = new Registration(
      deps.master,
      { id: config.id, cacheGroup: config.cacheGroup, address: `${config.advertiseHost}:${service.port}`, hostname: config.hostname, domainSocketPath: config.domainSocketPath },
      () => ({
        capacityBytes: store.capacityBytes,
        usedBytes: store.usedBytes,
        blocks: store.blockCount,
        tiers: store.tiers.map((t) => ({ medium: t.medium, dir: t.dir, quotaBytes: t.quotaBytes, usedBytes: t.usedBytes })),
        shortCircuitBytes: socket?.shortCircuitBytes ?? 0,
      }),
      deps.log,
      deps.onFatal,
    );
    const worker = new Worker(config, store, blocks, service, registration, socket);
    try {
      await registration.start();
    } catch (err) {
      await worker.close();
      throw err;
    }
    deps.log.info({ id: config.id, cacheGroup: config.cacheGroup, address: worker.address, domainSocket: config.domainSocketPath || undefined, blocks: store.blockCount, usedBytes: store.usedBytes }, 'worker started');
    return worker;
  }

  async close(): Promise<void> {
    this.registration.close();
    await this.socket?.close();
    await this.service.close();
    await this.blocks.readThrough.drain();
    this.blocks.close();
    await this.store.close();
  }
}
