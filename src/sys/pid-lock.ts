/**
 * An exclusive claim on a directory by one process (a cache dir by its mount or
 * worker, a meta dir by its master). The lock file holds the owner's pid and
 * appears with its content at once (written aside, then hard-linked into place),
 * so a starting process never reads a half-written lock. A lock left by a process
 * that is gone (`kill -9`, a container restart where we are pid 1 again) is taken
 * over.
 */
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError } from '../errors.js';

export interface PidLockOptions {
  /** Lock file name inside the directory. */
  file: string;
  /** How messages name the directory, e.g. `cache dir`. */
  what: string;
  /** How messages name a live owner, e.g. `master process`. */
  owner: string;
  /** Added to the in-use message: what the user should do. */
  hint: string;
}

export class PidLock {
  private constructor(private readonly file: string) {}

  /** Creates the directory if needed and takes the lock. */
  static async acquire(dir: string, options: PidLockOptions): Promise<PidLock> {
    const file = path.join(dir, options.file);
    const draft = `${file}.${process.pid}.tmp`;
    const notWritable = (err: unknown): CachefsError =>
      new CachefsError('INVALID_ARGUMENT', `${options.what} '${dir}' is not writable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    try {
      await mkdir(dir, { recursive: true });
      await writeFile(draft, `${process.pid}\n`, { mode: 0o644 });
    } catch (err) {
      throw notWritable(err);
    }
    try {
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          await link(draft, file);
          return new PidLock(file);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw notWritable(err);
          const owner = Number((await readFile(file, 'utf8').catch(() => '')).trim());
          if (Number.isSafeInteger(owner) && owner > 0 && owner !== process.pid && isAlive(owner)) {
            throw new CachefsError('CONFLICT', `${options.what} '${dir}' is in use by ${options.owner} ${owner}: ${options.hint}`);
          }
          await unlink(file).catch(() => undefined);
        }
      }
      throw new CachefsError('CONFLICT', `cannot lock ${options.what} '${dir}'`);
    } finally {
      await unlink(draft).catch(() => undefined);
    }
  }

  async release(): Promise<void> {
    await unlink(this.file).catch(() => undefined);
  }
}

/** Whether a process with this pid exists (EPERM: it does, owned by someone else). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
