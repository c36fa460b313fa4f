/**
 * The mount(8)-level commands that mounting and supervision run: mounting /dev/fuse,
 * detaching a dead FUSE mount, bind-mounting, checking a path. Each runs as a child process
 * with a timeout, so a hung FUSE connection can block a command but never the
 * supervisor's own event loop or thread pool.
 */
import { spawn } from 'node:child_process';
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

/**
 * Runs `cmd`, with `fd` (if given) as its fd 3, killed after a timeout; rejects with its
 * stderr (trimmed), or how it ended when it wrote none.
 */
export function runCommand(cmd: string, args: string[], fd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe', ...(fd === undefined ? [] : [fd])] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), COMMAND_TIMEOUT_MS);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(stderr.trim() || `${cmd} ${signal ? `was killed by ${signal}` : `exited with ${code}`}`));
    });
  });
}

function run(cmd: string, args: string[]): Promise<void> {
  return runCommand(cmd, args).catch((err: unknown) => {
    throw new CachefsError('IO', `${cmd} ${args.join(' ')}: ${(err as Error).message.split('\n')[0]}`, { cause: err });
  });
}
