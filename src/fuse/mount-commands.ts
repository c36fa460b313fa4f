/**
 * The mount(8)-level commands that supervision runs on the mount table: detaching
 * a dead FUSE mount, bind-mounting, checking a path. Each runs as a child process
 * with a timeout, so a hung FUSE connection can block a command but never the
 * supervisor's own event loop or thread pool.
 */
import { execFile } from 'node:child_process';
import { CachefsError } from '../errors.js';

const COMMAND_TIMEOUT_MS = 10_000;

/** Detaches whatever is mounted at `target` now (MNT_DETACH): open files keep the old mount until closed. */
export async function lazyUnmount(target: string): Promise<void> {
  try {
    await run('fusermount', ['-uz', target]);
  } catch (first) {
    // Not a FUSE mount, or fusermount refuses (e.g. a bind of the mount made by someone else): the kernel directly.
    try {
      await run('umount', ['-l', target]);
    } catch {
      throw first;
    }
  }
}

/** `mount --bind source target`, read-only at the bind as well when `readOnly`. */
export async function bindMount(source: string, target: string, readOnly: boolean): Promise<void> {
  await run('mount', ['--bind', source, target]);
  if (readOnly) await run('mount', ['-o', 'remount,bind,ro', target]);
}

/** Makes `dir` a mount of its own with private propagation: mounts made beneath it are seen nowhere else. */
export async function makePrivateMount(dir: string): Promise<void> {
  await run('mount', ['--bind', dir, dir]);
  await run('mount', ['--make-private', dir]);
}

/** Whether `file` can be stat'ed; asked in a child process so that a hung mount cannot hang the caller. */
export async function pathAnswers(file: string): Promise<boolean> {
  try {
    await run('stat', ['--', file]);
    return true;
  } catch {
    return false;
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: COMMAND_TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const why = (stderr.trim().split('\n')[0] ?? '') || err.message;
      reject(new CachefsError('IO', `${cmd} ${args.join(' ')}: ${why}`, { cause: err }));
    });
  });
}
