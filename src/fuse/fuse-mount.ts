/**
 * A cachefs mount: the kernel connection (`session.ts`) served by the FUSE ops
 * (`ops.ts`) over a filesystem addressed by node ids (`vfs/vfs.ts`), with
 * cachefs's kernel options: read-only at the kernel (`ro`: writes
 * fail with EROFS before reaching us), reads of up to 1 MiB and a readahead of
 * `maxReadahead` so sequential reads keep several large requests in flight, and the
 * page cache kept across opens while size and mtime are unchanged (auto_cache), and,
 * unless turned off, FUSE passthrough of files cached whole (`passthrough.ts`).
 * On the supervisor's descriptor the mount may also be taken over from a serving
 * process that died (`resume`), without mounting again.
 */
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { runCommand } from '../sys/mount-commands.js';
import { isMountpoint } from '../sys/mountpoint.js';
import { NotifyThread } from './notify-thread.js';
import { FuseOps, type FuseFilesystem, type Negotiated } from './ops.js';
import { DeviceBackingFiles } from './passthrough.js';
import { FuseSession } from './session.js';

/** How often the serving process checks that its mount still exists (it may be unmounted lazily from outside). */
const WATCH_INTERVAL_MS = 1000;

export interface FuseMountOptions {
  attrTimeoutSec: number;
  entryTimeoutSec: number;
  allowOther: boolean;
  /** Kernel readahead per file, bytes. */
  maxReadahead: number;
  /** Longest a single op may take before the kernel gets ETIMEDOUT. */
  opTimeoutMs: number;
  /** Where else the mount may be reachable when it ends (the supervisor's anchor bind). */
  alsoMountedAt?: readonly string[];
  /** What /proc/mounts shows as the mount's source. */
  source: string;
  /** Ask the kernel for FUSE passthrough (`--no-passthrough` does not). */
  passthrough: boolean;
  /** The supervisor's open /dev/fuse: it keeps a copy, so the connection outlives this process. */
  deviceFd?: number;
  /** Take over the connection of `deviceFd`, mounted and negotiated so by a serving process that died. */
  resume?: Negotiated;
  /** Told what INIT settled, for a later serving process that takes the connection over. */
  onInit?(negotiated: Negotiated): void;
}

/** Regular-file nodes offered to the session for waking its device read. */
const WAKE_NODES = 8;

export class FuseMount {
  private watch?: NodeJS.Timeout;

  private constructor(
    private readonly session: FuseSession,
    readonly mountpoint: string,
    private readonly notifications: NotifyThread | undefined,
  ) {}

  /** Resolves when the mount disappears without `unmount()` (umount from outside, the connection aborted). */
  whenGone(): Promise<void> {
    const unmounted = new Promise<void>((resolve) => {
      this.watch = setInterval(() => {
        isMountpoint(this.mountpoint).then(
          (mounted) => {
            if (mounted) return;
            clearInterval(this.watch);
            resolve();
          },
          () => undefined,
        );
      }, WATCH_INTERVAL_MS);
      this.watch.unref();
    });
    return Promise.race([unmounted, this.session.ended]);
  }

  static async mount(mountpoint: string, fs: FuseFilesystem, metrics: Metrics, log: Logger, options: FuseMountOptions): Promise<FuseMount> {
    const sessionOptions = { allowOther: options.allowOther, opTimeoutMs: options.opTimeoutMs, source: options.source, deviceFd: options.deviceFd };
    const session =
      options.resume && options.deviceFd !== undefined ? await FuseSession.resume(options.deviceFd, mountpoint, sessionOptions, log) : await FuseSession.mount(mountpoint, sessionOptions, log);
    const backings = options.passthrough ? await passthroughBackings(session.device, log) : undefined;
    const notifications =
      fs.nodesToLetGo &&
      NotifyThread.start(
        session.device,
        (id) => fs.nodeKept?.(id),
        (code) => log.info({ code }, 'the kernel takes no NOTIFY_PRUNE (before 6.18): file entries are asked back one at a time (NOTIFY_INVAL_ENTRY)'),
      );
    const ops = new FuseOps(fs, session.requests, { ...options, deviceId: session.deviceId, backings, resumed: options.resume, notifications }, metrics, log);
    session.start(ops, { fileNodes: () => fs.heldFiles(WAKE_NODES), paths: options.alsoMountedAt ?? [] });
    void session.ended.finally(() => notifications?.close());
    return new FuseMount(session, mountpoint, notifications);
  }

  /** Stops serving without unmounting, for the next serving process on the same connection (an upgrade). */
  async drain(timeoutMs: number): Promise<void> {
    clearInterval(this.watch);
    this.notifications?.close();
    await this.session.drain(timeoutMs);
  }

  /** Unmounts (lazily, so open files do not keep a dying mount); nothing to do if already gone. */
  async unmount(): Promise<void> {
    clearInterval(this.watch);
    this.notifications?.close(); // before the device is closed: no ask is written to a descriptor number reused since
    await this.session.close();
    if (await isMountpoint(this.mountpoint)) throw new CachefsError('IO', `cannot unmount ${this.mountpoint}`);
  }
}

/** The connection's backing files for passthrough; none (said once) where libc's ioctl cannot be reached. */
async function passthroughBackings(device: number, log: Logger): Promise<DeviceBackingFiles | undefined> {
  try {
    return await DeviceBackingFiles.load(device, log);
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'FUSE passthrough is off for this mount: files are read through cachefs');
    return undefined;
  }
}

/** Unmounts a mount point from outside the serving process: clean first, lazy when busy. */
export async function unmountPath(mountpoint: string): Promise<'clean' | 'lazy'> {
  try {
    await runCommand('fusermount', ['-u', mountpoint]);
    return 'clean';
  } catch (first) {
    const message = (first as Error).message;
    if (!/busy/i.test(message)) {
      // Not a FUSE mount of ours or fusermount missing: try the kernel directly.
      try {
        await runCommand('umount', [mountpoint]);
        return 'clean';
      } catch (second) {
        if (!/busy/i.test((second as Error).message)) throw new CachefsError('INVALID_ARGUMENT', `cannot unmount ${mountpoint}: ${oneLine(message)}`);
      }
    }
    await runCommand('fusermount', ['-uz', mountpoint]).catch(() => runCommand('umount', ['-l', mountpoint]));
    return 'lazy';
  }
}

function oneLine(s: string): string {
  return s.split('\n')[0]!.replace(/^fusermount: /, '');
}
