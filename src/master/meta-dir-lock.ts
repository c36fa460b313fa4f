/**
 * An exclusive claim on a `--meta-dir`, so that two masters never serve from
 * the same state. The lock file holds the owner's pid and appears with its
 * content at once (written aside, then hard-linked into place), so a starting
 * master never reads a half-written lock. A lock left by a process that is gone
 * (a `kill -9`, a container restart where we are pid 1 again) is taken over.
 */
import { link, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError } from '../errors.js';

const LOCK_FILE = 'master.pid';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class MetaDirLock {
  private constructor(private readonly file: string) {}

  /** Takes the lock; the directory must exist. */
  static async acquire(dir: string): Promise<MetaDirLock> {
    const file = path.join(dir, LOCK_FILE);
    const draft = `${file}.${process.pid}.tmp`;
    try {
      await writeFile(draft, `${process.pid}\n`, { mode: 0o644 });
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `meta dir '${dir}' is not writable: ${(err as Error).message}`, { cause: err });
    }
    try {
      return await MetaDirLock.claim(dir, file, draft);
    } finally {
      await unlink(draft).catch(() => undefined);
    }
  }

  private static async claim(dir: string, file: string, draft: string): Promise<MetaDirLock> {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await link(draft, file);
        return new MetaDirLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new CachefsError('INVALID_ARGUMENT', `meta dir '${dir}' is not writable: ${(err as Error).message}`, { cause: err });
        }
        const owner = Number((await readFile(file, 'utf8').catch(() => '')).trim());
        if (Number.isSafeInteger(owner) && owner > 0 && owner !== process.pid && isAlive(owner)) {
          throw new CachefsError('CONFLICT', `meta dir '${dir}' is in use by master process ${owner} (remove ${file} if that process is not a cachefs master)`);
        }
        await unlink(file).catch(() => undefined);
      }
    }
    throw new CachefsError('CONFLICT', `cannot lock meta dir '${dir}'`);
  }

  async release(): Promise<void> {
    await unlink(this.file).catch(() => undefined);
  }
}
