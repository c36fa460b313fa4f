/**
 * `cachefs umount MOUNTPOINT`: unmounts cleanly, or lazily when files are still
 * open (the mount disappears now, the kernel lets go when the last file closes).
 */
import path from 'node:path';
import type { Command } from 'commander';
import { CachefsError } from '../errors.js';
import { unmountPath } from '../fuse/fuse-mount.js';
import { readMountTable } from '../sys/mountinfo.js';
import { runAction } from './exit.js';

export function registerUmountCommand(program: Command): void {
  program
    .command('umount')
    .alias('unmount')
    .description('unmount a cachefs mount (lazily if it is busy)')
    .argument('<mountpoint>')
    .action(
      runAction(async (mountpoint: string) => {
        const abs = path.resolve(mountpoint);
        const mount = (await readMountTable()).find((m) => m.mountpoint === abs);
        if (!mount) throw new CachefsError('INVALID_ARGUMENT', `${abs} is not mounted`);
        if (!mount.fstype.startsWith('fuse')) throw new CachefsError('INVALID_ARGUMENT', `${abs} is a ${mount.fstype} mount, not cachefs`);
        const how = await unmountPath(abs);
        if (how === 'lazy') process.stderr.write(`cachefs: ${abs} was busy: detached lazily, released when its last file closes\n`);
      }),
    );
}
