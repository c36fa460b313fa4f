/**
 * Wiring of a mount: backend (embedded cache, or cluster) → BlockClient →
 * Filesystem (the tree) → Vfs (nodes, handles, reads) → FUSE. Everything that can fail (URI, credentials, bucket, master,
 * cache dir, mount point, metrics port) is checked before the kernel mount is
 * made, so a failure leaves nothing mounted.
 *
 * On the supervisor's descriptor, the mount's runtime dir (`controlDirFor`) holds what
 * a serving process taking the connection over needs: what INIT settled
 * (`fuse-init.json`) and the journal of the nodes and handles the kernel holds
 * (`kernel-journal`). Taking over (`resume`) skips the mount point's checks: a stat
 * of it would wait for this very process to answer.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError } from '../errors.js';
import { asNegotiated, type Negotiated } from '../fuse/ops.js';
import { BlockClient } from '../client/block-client.js';
import { FuseMount } from '../fuse/fuse-mount.js';
import { MountAnchor } from '../heal/mount-anchor.js';
import { checkMountpoint } from '../sys/mountpoint.js';
import { loadMappedFiles } from '../sys/mapped-file.js';
import type { Logger } from '../log.js';
import { Metrics } from '../metrics/metrics.js';
import { MetricsServer } from '../metrics/metrics-server.js';
import { Filesystem } from '../vfs/filesystem.js';
import { Vfs } from '../vfs/vfs.js';
import { DirectoryPrefetch } from '../vfs/directory-prefetch.js';
import { KernelJournal, type HeldState } from '../vfs/kernel-journal.js';
import { ControlSocket, controlDirFor } from '../worker/control-socket.js';
import { DatasetRoutes } from '../worker/dataset-routes.js';
import { openBackend } from './mount-backends.js';
import type { MountConfig } from './mount-config.js';

const OP_TIMEOUT_MS = 60_000;
/** How long a drain waits for the requests read to be answered; the rest go to the next process. */
const DRAIN_TIMEOUT_MS = 10_000;

export interface RunningMount {
  readonly mountpoint: string;
  readonly metricsPort?: number;
  /** Resolves if the mount is unmounted from outside the process. */
  readonly gone: Promise<void>;
  /** Unmounts and releases everything; safe to call twice. */
  close(): Promise<void>;
  /** Stops serving, the mount left for the next serving process on the supervisor's descriptor (an upgrade); the process then exits. */
  drain(): Promise<void>;
}

/** The supervisor's /dev/fuse, and whether to take over the connection on it (mounted by a serving process that died). */
export interface KeptConnection {
  deviceFd: number;
  resume: boolean;
  /** Started ahead of need: waits to be told to take over (`cli/mount.ts`); never reaches `serveMount` so. */
  standby?: boolean;
}

export async function serveMount(config: MountConfig, log: Logger, kept?: KeptConnection): Promise<RunningMount> {
  const closers: (() => Promise<void>)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const close of closers.splice(0).reverse()) {
      await close().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'error while closing'));
    }
  };
  try {
    const metrics = new Metrics();
    const mountpoint = kept?.resume ? config.mountpoint : await checkMountpoint(config.mountpoint, { nonempty: config.nonempty, log });
    const handover = kept && (await Handover.open(mountpoint, kept.resume));
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
    const dirPrefetch =
      config.prefetchFiles > 0
        ? new DirectoryPrefetch({
            files: config.prefetchFiles,
            blockSize: config.blockSize,
            capacityBytes: config.cacheSize,
            listedFiles: (dirKey) => fs.listedFiles(dirKey),
            fill: (object, signal) => client.fillFile(object, signal),
            changed: (key) => fs.objectChanged(key),
            metrics,
            log,
          })
        : undefined;
    if (dirPrefetch) closers.push(async () => dirPrefetch.close());
    closers.push(async () => fs.close());
    const vfs = new Vfs({ fs, client, metrics, metaBudgetBytes: config.metaCacheBytes, dirPrefetch, journal: handover && { file: handover.journalFile, held: handover.held, mapped: await loadMappedFiles() } });
    const fuse = await FuseMount.mount(mountpoint, vfs, metrics, log, {
      attrTimeoutSec: config.attrTimeoutMs / 1000,
      entryTimeoutSec: config.entryTimeoutMs / 1000,
      allowOther: config.allowOther,
      maxReadahead: Math.max(128 * 1024, Math.min(config.readaheadBytes, 8 * 1024 * 1024)),
      opTimeoutMs: OP_TIMEOUT_MS,
      alsoMountedAt: [path.join(MountAnchor.dirFor(mountpoint), 'mount')],
      source: config.source,
      passthrough: config.passthrough,
      deviceFd: kept?.deviceFd,
      resume: handover?.negotiated,
      onInit: handover && ((negotiated) => handover.initSettled(negotiated)),
    });
    mounted = true;
    closers.push(async () => {
      mounted = false;
      await fuse.unmount();
    });
    log.info({ mountpoint, source: config.source, cacheDir: config.cacheDir, metricsPort }, 'mounted');
    return { mountpoint, metricsPort, gone: fuse.whenGone(), close: closeAll, drain: () => fuse.drain(DRAIN_TIMEOUT_MS) };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/** The files of the runtime dir by which one serving process hands the kernel connection to the next. */
class Handover {
  private constructor(
    private readonly initFile: string,
    readonly journalFile: string,
    /** When taking over: what INIT settled, and what the kernel holds. */
    readonly negotiated?: Negotiated,
    readonly held?: HeldState,
  ) {}

  /** The runtime dir's hand-over files; `resume`: read what the dead serving process left, else clear it. */
  static async open(mountpoint: string, resume: boolean): Promise<Handover> {
    const dir = controlDirFor(mountpoint);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    const initFile = path.join(dir, 'fuse-init.json');
    const journalFile = path.join(dir, 'kernel-journal');
    if (!resume) {
      // A crash before INIT is answered must leave nothing that a replacement could take for it.
      rmSync(initFile, { force: true });
      return new Handover(initFile, journalFile);
    }
    let negotiated: Negotiated | undefined;
    try {
      negotiated = asNegotiated(JSON.parse(readFileSync(initFile, 'utf8')));
    } catch (err) {
      throw new CachefsError('NOT_FOUND', `cannot take over the FUSE connection of ${mountpoint}: ${initFile}: ${(err as Error).message}`, { cause: err });
    }
    if (!negotiated) throw new CachefsError('IO', `cannot take over the FUSE connection of ${mountpoint}: ${initFile} holds no minor and flags`);
    return new Handover(initFile, journalFile, negotiated, KernelJournal.read(journalFile));
  }

  /** Written once INIT is answered: only then can the connection be taken over. */
  initSettled(negotiated: Negotiated): void {
    const tmp = `${this.initFile}.new`;
    writeFileSync(tmp, `${JSON.stringify(negotiated)}\n`, { mode: 0o600 });
    renameSync(tmp, this.initFile);
  }
}
