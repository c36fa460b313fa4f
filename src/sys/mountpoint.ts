/**
 * Checks of a mount point before mounting: a missing path or a non-directory is refused;
 * a live mount is refused; a dead cachefs FUSE mount (its serving process and supervisor
 * died together: a container restart, the OOM killer) is detached lazily and mounted
 * over again, so a restarted sidecar heals instead of crash-looping; a directory with
 * files in it is refused unless the caller accepts hiding them. Every refusal says what
 * to do.
 */
import { readdir, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { lazyUnmount } from './mount-commands.js';
import { readMountTable, topMountAt } from './mountinfo.js';

/** The file system type cachefs mounts as (`mount -t fuse.cachefs`, `session.ts`). */
export const CACHEFS_FSTYPE = 'fuse.cachefs';

export async function isMountpoint(dir: string): Promise<boolean> {
  const abs = path.resolve(dir);
  return (await readMountTable()).some((m) => m.mountpoint === abs);
}

export interface MountpointChecks {
  /** Mount over a directory that has files in it (they are hidden while mounted). */
  nonempty?: boolean;
  /** Where clearing a dead mount is logged. */
  log?: Logger;
}

/** Resolves and validates a mount point for a new mount, clearing a dead cachefs mount from it. */
export async function checkMountpoint(dir: string, checks: MountpointChecks = {}): Promise<string> {
  const abs = path.resolve(dir);
  const st = await statClearingDeadMount(abs, checks.log);
  if (!st.isDirectory()) throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} is not a directory`);
  if (await isMountpoint(abs)) throw new CachefsError('CONFLICT', `mount point ${abs} is already a mount: unmount it first`);
  if (!checks.nonempty) {
    const entries = await readdir(abs);
    if (entries.length > 0) {
      throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} is not empty (${entries.length} entries): use an empty directory, or --nonempty to hide its files under the mount`);
    }
  }
  return abs;
}

async function statClearingDeadMount(abs: string, log: Logger | undefined): ReturnType<typeof stat> {
  // Dead mounts can be stacked (one per crash that nobody cleared): detach them one by one.
  for (let cleared = 0; ; cleared++) {
    try {
      const st = await stat(abs);
      // stat of a dead FUSE mount's root may be answered from the kernel's attribute cache; statfs always asks its server.
      if (topMountAt(await readMountTable(), abs)?.fstype === CACHEFS_FSTYPE) await statfs(abs);
      return st;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'ENOTCONN') {
        const top = topMountAt(await readMountTable(), abs);
        if (top?.fstype !== CACHEFS_FSTYPE || cleared >= 8) {
          throw new CachefsError('CONFLICT', `mount point ${abs} is a dead FUSE mount${top ? ` of type ${top.fstype}` : ''}: run 'cachefs umount ${abs}' first`);
        }
        await lazyUnmount(abs);
        log?.warn({ mountpoint: abs, device: top.device }, 'cleared a dead cachefs mount left by processes that died: mounting again');
        continue;
      }
      if (code === 'ENOENT') throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} does not exist: create the directory first`);
      throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} cannot be used: ${(err as Error).message}`);
    }
  }
}
