/**
 * Mounting and unmounting through fuse-native, with cachefs's kernel options:
 * read-only at the kernel (`ro`: writes fail with EROFS before reaching us), page
 * cache kept across opens while size and mtime are unchanged (`auto_cache`; a
 * changed object has a new mtime), and a larger kernel readahead so sequential
 * reads keep several requests in flight.
 */
import { execFile } from 'node:child_process';
import Fuse, { type FuseOps } from 'fuse-native';
import { CachefsError } from '../errors.js';
import { isMountpoint } from './mountpoint.js';

/** How often the serving process checks that its mount still exists (it may be unmounted from outside). */
const WATCH_INTERVAL_MS = 1000;

export interface FuseMountOptions {
  attrTimeoutSec: number;
  entryTimeoutSec: number;
  allowOther: boolean;
  /** Kernel readahead per file, bytes. */
  maxReadahead: number;
  /** Longest a single op may take before the kernel gets ETIMEDOUT. */
  opTimeoutMs: number;
}

export class FuseMount {
  private watch?: NodeJS.Timeout;

  private constructor(private readonly fuse: Fuse, readonly mountpoint: string) {}

  /** Resolves when the mount disappears without `unmount()` (fusermount -u, umount from outside). */
  whenGone(): Promise<void> {
    return new Promise((resolve) => {
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
  }

  static async mount(mountpoint: string, ops: FuseOps, options: FuseMountOptions): Promise<FuseMount> {
    const fuse = new Fuse(mountpoint, ops, {
      fsname: 'cachefs',
      // fuse-native has no generic option pass-through (and drops a timeout of 0); libfuse
      // splits each -o value at commas, so options ride along after the subtype.
      subtype: [
        'cachefs',
        'ro',
        `max_readahead=${options.maxReadahead}`,
        `attr_timeout=${options.attrTimeoutSec}`,
        `entry_timeout=${options.entryTimeoutSec}`,
      ].join(','),
      autoCache: true,
      allowOther: options.allowOther,
      timeout: options.opTimeoutMs,
    });
    await new Promise<void>((resolve, reject) => {
      fuse.mount((err) => (err ? reject(new CachefsError('IO', `cannot mount ${mountpoint}: ${err.message}`, { cause: err })) : resolve()));
    });
    return new FuseMount(fuse, mountpoint);
  }

  /** Unmounts (lazily, so open files do not keep a dying mount); nothing to do if already gone. */
  async unmount(): Promise<void> {
    clearInterval(this.watch);
    await new Promise<void>((resolve, reject) => {
      this.fuse.unmount((err) => {
        if (!err) return resolve();
        isMountpoint(this.mountpoint).then(
          (mounted) => (mounted ? reject(new CachefsError('IO', `cannot unmount ${this.mountpoint}: ${err.message}`, { cause: err })) : resolve()),
          reject,
        );
      });
    });
  }
}

/** Unmounts a mount point from outside the serving process: clean first, lazy when busy. */
export async function unmountPath(mountpoint: string): Promise<'clean' | 'lazy'> {
  try {
    await run('fusermount', ['-u', mountpoint]);
    return 'clean';
  } catch (first) {
    const message = (first as Error).message;
    if (!/busy/i.test(message)) {
      // Not a FUSE mount of ours or fusermount missing: try the kernel directly.
      try {
        await run('umount', [mountpoint]);
        return 'clean';
      } catch (second) {
        if (!/busy/i.test((second as Error).message)) throw new CachefsError('INVALID_ARGUMENT', `cannot unmount ${mountpoint}: ${oneLine(message)}`);
      }
    }
    await run('fusermount', ['-uz', mountpoint]).catch(() => run('umount', ['-l', mountpoint]));
    return 'lazy';
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, _stdout, stderr) => (err ? reject(new Error(stderr.trim() || err.message)) : resolve()));
  });
}

function oneLine(s: string): string {
  return s.split('\n')[0]!.replace(/^fusermount: /, '');
}
