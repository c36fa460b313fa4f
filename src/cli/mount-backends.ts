/**
 * What a mount reads through, by mode: one UFS with an in-process cache (the
 * embedded default) or several, each at a path of the mount (a static namespace, as
 * a Fluid Dataset's mounts are), or the cluster namespace of a master with the workers
 * of a cache group (plus an embedded worker that joins the group when sharing), whose
 * listings and stats come from the master's shared namespace cache.
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { BufferPool } from '../block/buffer-pool.js';
import type { BlockSource } from '../client/block-source.js';
import { ClusterSource } from '../client/cluster-source.js';
import { EmbeddedSource } from '../client/embedded-source.js';
import { Membership } from '../client/membership.js';
import { CachefsError, isCachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { MasterClient } from '../master/client.js';
import type { Metrics } from '../metrics/metrics.js';
import { authHeaders } from '../net/auth.js';
import { TieredStore } from '../cache/tiered-store.js';
import { NAMESPACE_MOUNT_ID, NamespaceUfs } from '../ufs/namespace.js';
import { NamespaceSync } from '../master/namespace-sync.js';
import { SharedNamespaceUfs } from '../master/shared-namespace-ufs.js';
import { openUfs } from '../ufs/open-ufs.js';
import type { Ufs } from '../ufs/ufs.js';
import { CachedBlocks } from '../cache/cached-blocks.js';
import { ReadThrough } from '../cache/read-through.js';
import { READ_POLICY } from '../cache/read-policy.js';
import { UfsReader } from '../cache/ufs-reader.js';
import { Worker } from '../worker/worker.js';
import { warnIfInsecure } from './cluster-options.js';
import type { ClusterConfig, MountConfig, NamespaceSource } from './mount-config.js';
import { defaultAdvertiseHost } from './worker-config.js';

const UFS_CHECK_TIMEOUT_MS = 6_000;

export interface MountBackend {
  ufs: Ufs;
  source: BlockSource;
  /** Identity of the source in block ids. */
  mountId: string;
  /** The in-process cache of an embedded mount (what `cachefs load --mount` fills). */
  blocks?: CachedBlocks;
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
  const { ufs, mountId } = config.namespace ? await openNamespace(config.namespace, closers) : await openOne(config, closers);
  await ufs.check(AbortSignal.timeout(UFS_CHECK_TIMEOUT_MS));
  const store = new TieredStore({ tiers: [{ medium: 'SSD', dir: embeddedStoreDir(config.cacheDir, mountId), quotaBytes: config.cacheSize }], high: 0.95, low: 0.7 }, metrics, log);
  await store.open();
  closers.push(() => store.close());
  const buffers = new BufferPool(config.blockSize, READ_POLICY.embeddedBuffers);
  const readThrough = new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, log, buffers);
  const blocks = new CachedBlocks(readThrough);
  const source = new EmbeddedSource(blocks, READ_POLICY, metrics, log, READ_POLICY.embeddedFetches, config.blockSize);
  return { ufs, source, mountId, blocks };
}

async function openOne(config: MountConfig, closers: (() => Promise<void>)[]): Promise<{ ufs: Ufs; mountId: string }> {
  const ufs = await openUfs(config.ufs!, config.ufsOptions);
  closers.push(() => ufs.close());
  return { ufs, mountId: config.ufs!.text };
}

/**
 * The sources of a static namespace behind one NamespaceUfs. Its identity in block ids
 * names every path with its URI, so blocks of one table are never taken for another's.
 */
async function openNamespace(sources: readonly NamespaceSource[], closers: (() => Promise<void>)[]): Promise<{ ufs: Ufs; mountId: string }> {
  const entries = [];
  for (const s of sources) {
    const ufs = await openUfs(s.uri, s.options);
    closers.push(() => ufs.close());
    entries.push({ path: s.path, ufs });
  }
  // One source at the root is that source: the same blocks as a --ufs mount of it.
  if (sources.length === 1 && sources[0]!.path === '/') return { ufs: entries[0]!.ufs, mountId: sources[0]!.uri.text };
  const mountId = `namespace:${sources.map((s) => `${s.path}=${s.uri.text}`).sort().join(',')}`;
  return { ufs: new NamespaceUfs(entries), mountId };
}

async function clusterBackend(config: MountConfig, cluster: ClusterConfig, metrics: Metrics, log: Logger, closers: (() => Promise<void>)[]): Promise<Omit<MountBackend, 'closers'>> {
  const { security } = cluster;
  const stateDir = path.join(config.cacheDir, 'master-state');
  warnIfInsecure(
    security,
    log,
    cluster.sharing ? "anyone who reaches the embedded worker's port can read blocks of every source in the mount table" : 'this mount trusts a master and workers that admit anyone',
  );
  const master = new MasterClient(cluster.master, { cacheDir: stateDir, logger: log, retries: 2, auth: security.secret, tls: security.clientTls });
  closers.push(() => master.close());
  const namespace = new NamespaceSync(master, log);
  try {
    await namespace.start();
  } catch (err) {
    // A master that refuses our secret is not one that is down: no cached copy stands in for it.
    if (isCachefsError(err, 'UNAUTHENTICATED')) throw new CachefsError('UNAUTHENTICATED', `the master at ${cluster.master} refused this mount: ${err.message}`, { cause: err });
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
        blockSize: config.blockSize,
        auth: security.auth,
        tls: security.serverTls,
        stateDir,
      },
      { master, resolveUfs, metrics, log, onFatal: (err) => log.error({ err: err.message }, 'embedded worker stopped') },
    );
    closers.push(() => worker.close());
    local = { workerId: id, source: new EmbeddedSource(worker.blocks, READ_POLICY, metrics, log, READ_POLICY.clusterPrefetches, config.blockSize, worker.wholes) };
  }
  const membership = new Membership(master, cluster.cacheGroup, config.blockSize, log);
  await membership.start();
  closers.push(() => membership.close());
  const workerLink = { headers: authHeaders(security.secret), tls: security.clientTls };
  const source = new ClusterSource({ membership, shortCircuit: cluster.shortCircuit, hostname: cluster.hostname, local, ufs: new UfsReader(resolveUfs, metrics), blockSize: config.blockSize, policy: READ_POLICY, workerLink, secret: security.secret, metrics, log });
  return { ufs: new SharedNamespaceUfs(master, namespace.ufs, log), source, mountId: NAMESPACE_MOUNT_ID };
}
