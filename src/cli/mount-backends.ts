/**
 * What a mount reads through, by mode: one UFS with an in-process cache (the
 * embedded default), or the cluster namespace of a master with the workers of a
 * cache group (plus an embedded worker that joins the group when sharing).
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { BufferPool } from '../block/buffer-pool.js';
import type { BlockSource } from '../client/block-source.js';
import { ClusterSource } from '../client/cluster-source.js';
import { EmbeddedSource } from '../client/embedded-source.js';
import { Membership } from '../client/membership.js';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { MasterClient } from '../master/client.js';
import type { Metrics } from '../metrics/metrics.js';
import { TieredStore } from '../cache/tiered-store.js';
import { NAMESPACE_MOUNT_ID } from '../ufs/namespace.js';
import { NamespaceSync } from '../master/namespace-sync.js';
import { openUfs } from '../ufs/open-ufs.js';
import type { Ufs } from '../ufs/ufs.js';
import { CachedBlocks } from '../cache/cached-blocks.js';
import { ReadThrough } from '../cache/read-through.js';
import { READ_POLICY } from '../cache/read-policy.js';
import { UfsReader } from '../cache/ufs-reader.js';
import { Worker } from '../worker/worker.js';
import type { ClusterConfig, MountConfig } from './mount-config.js';
import { defaultAdvertiseHost } from './worker-config.js';

const UFS_CHECK_TIMEOUT_MS = 6_000;

export interface MountBackend {
  ufs: Ufs;
  source: BlockSource;
  /** Identity of the source in block ids. */
  mountId: string;
  closers: (() => Promise<void>)[];
}

/** The embedded store of a source lives in its own subdirectory, so mounts of different sources can share a --cache-dir. */
export function embeddedStoreDir(cacheDir: string, sourceId: string): string {
  return path.join(cacheDir, createHash('sha256').update(sourceId).digest('hex').slice(0, 16));
}

export async function openBackend(config: MountConfig, metrics: Metrics, log: Logger): Promise<MountBackend> {
  const closers: (() => Promise<void>)[] = [];
  try {
    const backend = config.cluster ? await clusterBackend(config, config.cluster, metrics, log, closers) : await embeddedBackend(config, metrics, log, closers);
    return { ...backend, closers };
  } catch (err) {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    throw err;
  }
}

async function embeddedBackend(config: MountConfig, metrics: Metrics, log: Logger, closers: (() => Promise<void>)[]): Promise<Omit<MountBackend, 'closers'>> {
  const uri = config.ufs!;
  const ufs = await openUfs(uri, config.ufsOptions);
  closers.push(() => ufs.close());
  await ufs.check(AbortSignal.timeout(UFS_CHECK_TIMEOUT_MS));
  const store = new TieredStore({ tiers: [{ medium: 'SSD', dir: embeddedStoreDir(config.cacheDir, uri.text), quotaBytes: config.cacheSize }], high: 0.95, low: 0.7 }, metrics, log);
  await store.open();
  closers.push(() => store.close());
  const buffers = new BufferPool(config.blockSize, READ_POLICY.embeddedBuffers);
  const readThrough = new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, log, buffers);
  const source = new EmbeddedSource(new CachedBlocks(readThrough), READ_POLICY, metrics, log, READ_POLICY.embeddedFetches, config.blockSize);
  return { ufs, source, mountId: uri.text };
}

async function clusterBackend(config: MountConfig, cluster: ClusterConfig, metrics: Metrics, log: Logger, closers: (() => Promise<void>)[]): Promise<Omit<MountBackend, 'closers'>> {
  const master = new MasterClient(cluster.master, { cacheDir: path.join(config.cacheDir, 'master-state'), logger: log, retries: 2 });
  closers.push(() => master.close());
  const namespace = new NamespaceSync(master, log);
  try {
    await namespace.start();
  } catch (err) {
    throw new CachefsError('UNREACHABLE', `cannot get the mount table from the master at ${cluster.master} and no cached copy exists: ${(err as Error).message}`, { cause: err });
  }
  closers.push(() => namespace.close());
  const resolveUfs = namespace.resolver();
  let local: { workerId: string; source: BlockSource } | undefined;
  if (cluster.sharing) {
    const hostname = os.hostname();
    const id = `${hostname}-mount-${createHash('sha256').update(config.mountpoint).digest('hex').slice(0, 8)}`;
    const worker = await Worker.start(
      {
        id,
        cacheGroup: cluster.cacheGroup,
        tiers: [{ medium: 'SSD', dir: embeddedStoreDir(config.cacheDir, NAMESPACE_MOUNT_ID), quotaBytes: config.cacheSize }],
        high: 0.95,
        low: 0.7,
        host: '0.0.0.0',
        port: cluster.workerPort,
        advertiseHost: cluster.advertiseHost ?? defaultAdvertiseHost('0.0.0.0'),
        hostname,
        domainSocketPath: '',
      },
      { master, resolveUfs, metrics, log, onFatal: (err) => log.error({ err: err.message }, 'embedded worker stopped') },
    );
    closers.push(() => worker.close());
    local = { workerId: id, source: new EmbeddedSource(worker.blocks, READ_POLICY, metrics, log, READ_POLICY.clusterPrefetches, config.blockSize) };
  }
  const membership = new Membership(master, cluster.cacheGroup, log);
  await membership.start();
  closers.push(() => membership.close());
  const source = new ClusterSource({ membership, shortCircuit: cluster.shortCircuit, hostname: cluster.hostname, local, ufs: new UfsReader(resolveUfs, metrics), blockSize: config.blockSize, policy: READ_POLICY, metrics, log });
  return { ufs: namespace.ufs, source, mountId: NAMESPACE_MOUNT_ID };
}
