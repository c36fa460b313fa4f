/**
 * Checks of a mount point before mounting: a missing path, a non-directory, or a
 * path that is already a mount (live or a dead FUSE connection) are refused with a
 * message that says what to do.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError } from '../errors.js';
import { readMountTable } from './mountinfo.js';

export async function isMountpoint(dir: string): Promise<boolean> {
  const abs = path.resolve(dir);
  return (await readMountTable()).some((m) => m.mountpoint === abs);
}

/** Resolves and validates a mount point for a new mount. */
export async function checkMountpoint(dir: string): Promise<string> {
  const abs = path.resolve(dir);
  let st;
  try {
    st = await stat(abs);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOTCONN') throw new CachefsError('CONFLICT', `mount point ${abs} is a dead FUSE mount: run 'cachefs umount ${abs}' first`);
    if (code === 'ENOENT') throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} does not exist: create the directory first`);
    throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} cannot be used: ${(err as Error).message}`);
  }
  if (!st.isDirectory()) throw new CachefsError('INVALID_ARGUMENT', `mount point ${abs} is not a directory`);
  if (await isMountpoint(abs)) throw new CachefsError('CONFLICT', `mount point ${abs} is already a mount: unmount it first`);
  return abs;
}

