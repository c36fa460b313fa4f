/**
 * An exclusive claim on a directory that the kernel keeps: `flock(LOCK_EX|LOCK_NB)` on a
 * lock file whose descriptor the process holds open for as long as it owns the directory.
 * Unlike a pid file, it holds across PID namespaces (two containers
 * sharing a hostPath tier dir), and it ends with the process however that dies: the
 * kernel drops the lock when the last descriptor closes, so nothing stale is ever left.
 * The file also records the holder's pid (as the holder's PID namespace numbers it), only
 * for the message a second process prints.
 *
 * (Node opens every descriptor close-on-exec, so no child process inherits the lock.)
 *
 * Node has no flock, so libc's is called (`libc.ts`). It guards the cache and tier dirs (`tiered-store.ts`) and the master's meta dir.
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync, constants } from 'node:fs';
import path from 'node:path';
import { CachefsError } from '../errors.js';
import { loadLibc } from './libc.js';

export interface FileLockOptions {
  /** Lock file name inside the directory. */
  file: string;
  /** How messages name the directory, e.g. `cache dir`. */
  what: string;
  /** How messages name the holder, e.g. `master process`. */
  owner: string;
  /** Added to the in-use message: what the user should do. */
  hint: string;
}

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

type Flock = (fd: number, operation: number) => number;

let flockCall: { flock: Flock; errno: () => number } | undefined;

async function libcFlock(): Promise<{ flock: Flock; errno: () => number }> {
  if (flockCall) return flockCall;
  const libc = await loadLibc('kernel file locks');
  const flock = libc.lib.func('int flock(int fd, int operation)') as Flock;
  flockCall = { flock, errno: libc.errno };
  return flockCall;
}

export class FileLock {
  private constructor(private fd: number | undefined) {}

  /** Creates the directory if needed and takes the lock; CONFLICT (exit 6) when another process holds it. */
  static async acquire(dir: string, options: FileLockOptions): Promise<FileLock> {
    const { flock, errno } = await libcFlock();
    const file = path.join(dir, options.file);
    let fd: number;
    try {
      mkdirSync(dir, { recursive: true });
      fd = openSync(file, constants.O_RDWR | constants.O_CREAT, 0o644);
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `${options.what} '${dir}' is not writable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
    if (flock(fd, LOCK_EX | LOCK_NB) !== 0) {
      const code = errno();
      closeSync(fd);
      if (code !== EWOULDBLOCK) throw new CachefsError('IO', `cannot lock ${options.what} '${dir}': flock failed with errno ${code}`);
      const holder = Number(readFileSync(file, 'utf8').trim());
      const who = Number.isSafeInteger(holder) && holder > 0 ? `${options.owner} ${holder} (a pid of its own PID namespace)` : `another ${options.owner}`;
      throw new CachefsError('CONFLICT', `${options.what} '${dir}' is in use by ${who}: ${options.hint}`);
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
    return new FileLock(fd);
  }

  /** Lets the lock go (closing the descriptor is what releases it). */
  async release(): Promise<void> {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }
}
