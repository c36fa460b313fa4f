/**
 * An exclusive lock on a cache directory, so two processes never manage the same
 * blocks. The lock file holds the owner's pid; a lock whose owner is gone is taken
 * over.
 */
import { mkdir, open, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError } from '../errors.js';

export class DirLock {
  private constructor(private readonly file: string) {}

  static async acquire(dir: string): Promise<DirLock> {
    const file = path.join(dir, '.lock');
    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `cache dir '${dir}' is not writable: ${(err as Error).message}`, { cause: err });
    }
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const handle = await open(file, 'wx');
        await handle.writeFile(`${process.pid}\n`);
        await handle.close();
        return new DirLock(file);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== 'EEXIST') throw new CachefsError('INVALID_ARGUMENT', `cache dir '${dir}' is not writable: ${(err as Error).message}`, { cause: err });
        const owner = Number((await readFile(file, 'utf8').catch(() => '')).trim());
        if (owner > 0 && owner !== process.pid && isAlive(owner)) {
          throw new CachefsError('CONFLICT', `cache dir ${dir} is in use by process ${owner}: give each mount or worker its own cache dir`);
        }
        await unlink(file).catch(() => undefined);
      }
    }
    throw new CachefsError('CONFLICT', `cannot lock cache dir ${dir}`);
  }

  async release(): Promise<void> {
    await unlink(this.file).catch(() => undefined);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}
