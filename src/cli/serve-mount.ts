/**
 * Wiring of a mount with the embedded cache: UFS → tiered store → read-through →
 * embedded block source → BlockClient → Filesystem → FUSE. Everything that can
 * fail (URI, credentials, bucket, cache dir, mount point, metrics port) is checked
 * before the kernel mount is made, so a failure leaves nothing mounted.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { BlockClient } from '../client/block-client.js';
import { EmbeddedSource } from '../client/embedded-source.js';
import { FuseMount } from '../fuse/fuse-mount.js';
import { checkMountpoint } from '../fuse/mountpoint.js';
import { fuseOps } from '../fuse/ops.js';
import type { Logger } from '../log.js';
import { Metrics } from '../metrics/metrics.js';
import { MetricsServer } from '../metrics/metrics-server.js';
import { TieredStore } from '../store/tiered-store.js';
import { openUfs } from '../ufs/open-ufs.js';
import type { Ufs } from '../ufs/ufs.js';
import { Filesystem } from '../vfs/filesystem.js';
import { ReadThrough } from '../worker/read-through.js';
import type { MountConfig } from './mount-config.js';

const UFS_CHECK_TIMEOUT_MS = 6_000;
const PREFETCH_CONCURRENCY = 16;
const OP_TIMEOUT_MS = 60_000;

export interface RunningMount {
  readonly mountpoint: string;
  readonly metricsPort?: number;
  /** Resolves if the mount is unmounted from outside the process. */
  readonly gone: Promise<void>;
  /** Unmounts and releases everything; safe to call twice. */
  close(): Promise<void>;
}

/** The embedded store of a UFS lives in its own subdirectory, so mounts of different sources can share a --cache-dir. */
export function embeddedStoreDir(cacheDir: string, ufsUri: string): string {
  return path.join(cacheDir, createHash('sha256').update(ufsUri).digest('hex').slice(0, 16));
}

export async function serveMount(config: MountConfig, log: Logger): Promise<RunningMount> {
  const closers: (() => Promise<void>)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const close of closers.splice(0).reverse()) {
      await close().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'error while closing'));
    }
  };
  try {
    const metrics = new Metrics();
    const mountpoint = await checkMountpoint(config.mountpoint);
    const ufs: Ufs = await openUfs(config.ufs, config.ufsOptions);
    closers.push(() => ufs.close());
    await ufs.check(AbortSignal.timeout(UFS_CHECK_TIMEOUT_MS));

    const store = new TieredStore(
      { tiers: [{ medium: 'SSD', dir: embeddedStoreDir(config.cacheDir, config.ufs.text), quotaBytes: config.cacheSize }], high: 0.95, low: 0.7 },
      metrics,
      log,
    );
    await store.open();
    closers.push(() => store.close());
    const resolveUfs = async (): Promise<Ufs> => ufs;
    const readThrough = new ReadThrough(store, resolveUfs, metrics, log);
    const source = new EmbeddedSource(readThrough, resolveUfs, metrics, log, PREFETCH_CONCURRENCY);
    const client = new BlockClient(source, { blockSize: config.blockSize, readaheadBytes: config.readaheadBytes });
    closers.push(() => client.close());
    const fs = new Filesystem({
      ufs,
      client,
      mountId: config.ufs.text,
      metaTtlMs: config.metaTtlMs,
      owner: { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
      capacityBytes: config.cacheSize,
      metrics,
      log,
    });

    let metricsPort: number | undefined;
    if (config.metricsPort !== undefined) {
      const server = await MetricsServer.start(metrics.registry, config.metricsPort, config.metricsHost);
      metricsPort = server.port;
      closers.push(() => server.close());
    }
    const fuse = await FuseMount.mount(mountpoint, fuseOps(fs, metrics, log), {
      attrTimeoutSec: config.attrTimeoutMs / 1000,
      entryTimeoutSec: config.entryTimeoutMs / 1000,
      allowOther: config.allowOther,
      maxReadahead: Math.max(128 * 1024, Math.min(config.readaheadBytes, 8 * 1024 * 1024)),
      opTimeoutMs: OP_TIMEOUT_MS,
    });
    closers.push(() => fuse.unmount());
    log.info({ mountpoint, ufs: config.ufs.text, cacheDir: config.cacheDir, blocks: store.blockCount, metricsPort }, 'mounted');
    return { mountpoint, metricsPort, gone: fuse.whenGone(), close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
