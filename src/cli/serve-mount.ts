/**
 * Wiring of a mount: backend (embedded cache, or cluster) → BlockClient →
 * Filesystem (the tree) → Vfs (nodes, handles, reads) → FUSE. Everything that can fail (URI, credentials, bucket, master,
 * cache dir, mount point, metrics port) is checked before the kernel mount is
 * made, so a failure leaves nothing mounted.
 */
import path from 'node:path';
import { BlockClient } from '../client/block-client.js';
import { FuseMount } from '../fuse/fuse-mount.js';
import { MountAnchor } from '../heal/mount-anchor.js';
import { checkMountpoint } from '../sys/mountpoint.js';
import type { Logger } from '../log.js';
import { Metrics } from '../metrics/metrics.js';
import { MetricsServer } from '../metrics/metrics-server.js';
import { Filesystem } from '../vfs/filesystem.js';
import { Vfs } from '../vfs/vfs.js';
import { ControlSocket } from '../worker/control-socket.js';
import { DatasetRoutes } from '../worker/dataset-routes.js';
import { openBackend } from './mount-backends.js';
import type { MountConfig } from './mount-config.js';

const OP_TIMEOUT_MS = 60_000;

export interface RunningMount {
  readonly mountpoint: string;
  readonly metricsPort?: number;
  /** Resolves if the mount is unmounted from outside the process. */
  readonly gone: Promise<void>;
  /** Unmounts and releases everything; safe to call twice. */
  close(): Promise<void>;
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
    const mountpoint = await checkMountpoint(config.mountpoint, { nonempty: config.nonempty, log });
    const backend = await openBackend(config, metrics, log);
    closers.push(...backend.closers);
    if (backend.blocks) {
      // `cachefs load --mount` warms an embedded mount through it; a mount that cannot have one still reads.
      try {
        const control = await ControlSocket.start(mountpoint, new DatasetRoutes(backend.blocks, config.blockSize, { ufs: backend.ufs, mountId: backend.mountId }), log);
        closers.push(() => control.close());
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'no control socket: cachefs load --mount cannot reach this mount');
      }
    }
    const client = new BlockClient(backend.source, { blockSize: config.blockSize, readaheadBytes: config.readaheadBytes });
    closers.push(() => client.close());
    const fs = new Filesystem({
      ufs: backend.ufs,
      mountId: backend.mountId,
      metaTtlMs: config.metaTtlMs,
      metaBudgetBytes: config.metaCacheBytes,
      owner: { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
      capacityBytes: config.cacheSize,
      metrics,
      log,
    });
    let metricsPort: number | undefined;
    let mounted = false;
    if (config.metricsPort !== undefined) {
      const server = await MetricsServer.start(metrics.registry, config.metricsPort, config.metricsHost, () => mounted);
      metricsPort = server.port;
      closers.push(() => server.close());
    }
    const vfs = new Vfs({ fs, client, metrics, metaBudgetBytes: config.metaCacheBytes });
    const fuse = await FuseMount.mount(mountpoint, vfs, metrics, log, {
      attrTimeoutSec: config.attrTimeoutMs / 1000,
      entryTimeoutSec: config.entryTimeoutMs / 1000,
      allowOther: config.allowOther,
      maxReadahead: Math.max(128 * 1024, Math.min(config.readaheadBytes, 8 * 1024 * 1024)),
      opTimeoutMs: OP_TIMEOUT_MS,
      alsoMountedAt: [path.join(MountAnchor.dirFor(mountpoint), 'mount')],
      source: config.source,
      passthrough: config.passthrough,
    });
    mounted = true;
    closers.push(async () => {
      mounted = false;
      await fuse.unmount();
    });
    log.info({ mountpoint, source: config.source, cacheDir: config.cacheDir, metricsPort }, 'mounted');
    return { mountpoint, metricsPort, gone: fuse.whenGone(), close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
