/**
 * A cache worker: a tiered block store with read-through from the UFS, served
 * over HTTP to clients of its cache group, registered with the master. Runs as
 * `cachefs worker`, or embedded in a sharing mount.
 */
import { BufferPool } from '../block/buffer-pool.js';
import type { Logger } from '../log.js';
import type { MasterClient } from '../master/client.js';
import type { UfsResolver } from '../ufs/ufs.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ClusterAuth } from '../net/auth.js';
import type { ServerTls } from '../net/tls.js';
import type { TierConfig } from '../cache/tier.js';
import { TieredStore } from '../cache/tiered-store.js';
import { BlockService } from './block-service.js';
import { DatasetRoutes } from './dataset-routes.js';
import { DomainSocketService } from './domain-socket-service.js';
import { CachedBlocks } from '../cache/cached-blocks.js';
import { WholeObjects } from '../cache/whole-objects.js';
import { ReadThrough } from '../cache/read-through.js';
import { UfsReader } from '../cache/ufs-reader.js';
import { Registration } from './registration.js';

/**
 * Block buffers the block service owns for blocks it reads from the store (more at once
 * are allocated per request): as many as a client's connections read at once.
 */
const SERVED_BUFFERS = 8;
/**
 * Bytes the block service holds for requests in flight at most: 16 cold 4 MiB blocks
 * fetched and answered at once (a client's 8 connections, twice over); with larger
 * blocks, at least two such requests.
 */
const IN_FLIGHT_BYTES = 128 * 1024 * 1024;

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
  /** The group that may use the socket (and, with passDescriptors off, read block files by path); the worker's own when absent. */
  group?: number;
  /** Pass co-located clients block file descriptors (default); off: paths and the stream only. */
  passDescriptors?: boolean;
  /** The block size of the cache group: the only one the block service serves. */
  blockSize: number;
  /** Who the block service admits: holders of the cluster secret, or anyone ('insecure'). */
  auth: ClusterAuth;
  /** Serve the block service over HTTPS. */
  tls?: ServerTls;
  /** Where the registration credential is kept across restarts (see `Registration`). */
  stateDir?: string;
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
    /** Whole-object files of its store, for co-located mounts that pass them through (and a sharing mount's own reads). */
    readonly wholes: WholeObjects,
    readonly service: BlockService,
    readonly registration: Registration,
    readonly socket: DomainSocketService | undefined,
  ) {}

  get address(): string {
    return `${this.config.advertiseHost}:${this.service.port}`;
  }

  static async start(config: WorkerConfig, deps: WorkerDeps): Promise<Worker> {
    // Block files are readable by the socket's group only where clients need their paths: a worker that passes descriptors keeps them its own (0700/0600).
    const store = new TieredStore({ tiers: config.tiers, high: config.high, low: config.low, group: config.passDescriptors === false ? config.group : undefined }, deps.metrics, deps.log);
    await store.open();
    const blocks = new CachedBlocks(new ReadThrough(store, new UfsReader(deps.resolveUfs, deps.metrics), deps.metrics, deps.log));
    const wholes = new WholeObjects(blocks, deps.metrics, deps.log);
    let service: BlockService;
    let registration: Registration | undefined;
    let socket: DomainSocketService | undefined;
    try {
      const buffers = new BufferPool(config.blockSize, SERVED_BUFFERS);
      service = await BlockService.start({
        blocks,
        inFlightBytes: Math.max(IN_FLIGHT_BYTES, 4 * config.blockSize),
        buffers,
        metrics: deps.metrics,
        registry: deps.metrics.registry,
        log: deps.log,
        host: config.host,
        port: config.port,
        auth: config.auth,
        tls: config.tls,
        blockSize: config.blockSize,
        // Registered with the master (which implies the store is open: closing deregisters first).
        ready: () => registration?.isRegistered === true,
        dataset: new DatasetRoutes(blocks, config.blockSize),
      });
      try {
        if (config.domainSocketPath) socket = await DomainSocketService.start({ path: config.domainSocketPath, auth: config.auth, group: config.group, passDescriptors: config.passDescriptors }, blocks, deps.metrics, deps.log, wholes);
      } catch (err) {
        await service.close();
        throw err;
      }
    } catch (err) {
      await store.close();
      throw err;
    }
    registration = new Registration(
      deps.master,
      { id: config.id, cacheGroup: config.cacheGroup, address: `${config.advertiseHost}:${service.port}`, hostname: config.hostname, domainSocketPath: config.domainSocketPath, blockSize: config.blockSize },
      () => ({
        capacityBytes: store.capacityBytes,
        usedBytes: store.usedBytes,
        blocks: store.blockCount,
        tiers: store.tiers.map((t) => ({ medium: t.medium, dir: t.dir, quotaBytes: t.quotaBytes, usedBytes: t.usedBytes })),
        shortCircuitBytes: socket?.shortCircuitBytes ?? 0,
      }),
      deps.log,
      deps.onFatal,
      config.stateDir,
    );
    const worker = new Worker(config, store, blocks, wholes, service, registration, socket);
    try {
      await registration.start();
    } catch (err) {
      await worker.close();
      throw err;
    }
    deps.log.info({ id: config.id, cacheGroup: config.cacheGroup, address: worker.address, blockSize: config.blockSize, tls: config.tls !== undefined, domainSocket: config.domainSocketPath || undefined, blocks: store.blockCount, usedBytes: store.usedBytes }, 'worker started');
    return worker;
  }

  async close(): Promise<void> {
    await this.registration.close();
    await this.socket?.close();
    await this.service.close();
    await this.blocks.readThrough.drain();
    await this.wholes.close();
    this.blocks.close();
    await this.store.close();
  }
}
