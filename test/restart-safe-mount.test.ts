/**
 * Mounting where the last mount's processes died: `cachefs mount` on a dead cachefs FUSE
 * mount (supervisor and serving process SIGKILLed together, as in a container restart)
 * clears it, mounts again and logs it; a live mount is still refused (exit 6); a
 * non-empty mount point is refused unless --nonempty.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, sh, stopAllMounts, type TestMount } from './support/cachefs.js';
import { forceUnmount, isAlive, isMounted, waitFor } from './support/processes.js';

let work: string;
let src: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-restart-'));
  src = path.join(work, 'src');
  await mkdir(src);
  await sh(`head -c 2000000 /dev/urandom > ${src}/blob`);
});

afterAll(async () => {
  await stopAllMounts();
  await rm(work, { recursive: true, force: true });
});

/** Waits for the supervisor's word: mountCachefs returns at once over a dead mount (it is a mount too). */
async function supervising(m: TestMount): Promise<void> {
  await waitFor(() => {
    if (m.process.exitCode !== null) throw new Error(`the second mount exited with ${m.process.exitCode}: ${m.output()}`);
    return m.output().includes('supervising the mount');
  }, { timeoutMs: 30_000 });
}

/**
 * The children of a supervisor once both are there: the serving process and its standby, which
 * also holds the connection's descriptor (killed with the rest, the connection dies).
 */
async function servingAndStandby(mount: TestMount): Promise<number[]> {
  let pids: number[] = [];
  await waitFor(async () => {
    pids = (await sh(`pgrep -P ${mount.process.pid} -f -- --supervised`)).stdout.trim().split('\n').map(Number).filter((pid) => pid > 0);
    return pids.length >= 2;
  }, { timeoutMs: 15_000, what: 'the serving process and its standby' });
  return pids;
}

describe('restart-safe mounts', () => {
  it('clears a dead cachefs mount left by a SIGKILLed supervisor and serving process, and mounts again', async () => {
    const mnt = path.join(work, 'mnt-dead');
    await mkdir(mnt);
    const first = await mountCachefs({ ufs: `file://${src}`, mountpoint: mnt });
    const serving = await servingAndStandby(first);
    // Both at once, like an OOM kill of the container: nobody is left to clean up.
    first.process.kill('SIGKILL');
    for (const pid of serving) process.kill(pid, 'SIGKILL');
    await waitFor(() => !isAlive(first.process.pid!) && serving.every((pid) => !isAlive(pid)), { timeoutMs: 10_000 });
    const dead = await sh(`stat ${mnt} 2>&1`);
    expect(dead.stdout).toContain('Transport endpoint is not connected');

    const second = await mountCachefs({ ufs: `file://${src}`, mountpoint: mnt });
    try {
      await supervising(second);
      expect((await sh(`cmp ${src}/blob ${mnt}/blob && echo same`)).stdout.trim()).toBe('same');
      expect(second.output()).toContain('cleared a dead cachefs mount');
      // The live mount is refused, with the conflict's exit code.
      const again = await cachefs(['mount', mnt, '--ufs', `file://${src}`, '--foreground']);
      expect(again.code).toBe(6);
      expect(again.stderr).toContain(`mount point ${mnt} is already a mount`);
    } finally {
      await second.stop();
      await first.stop();
    }
    expect(await isMounted(mnt)).toBe(false);
  });

  it('clears a dead mount whose root the kernel still answers stat for from its attribute cache (statfs tells)', async () => {
    const mnt = path.join(work, 'mnt-cached');
    await mkdir(mnt);
    const first = await mountCachefs({ ufs: `file://${src}`, mountpoint: mnt, args: ['--attr-timeout', '3600'] });
    const serving = await servingAndStandby(first);
    await sh(`stat ${mnt}`); // the root's attributes now held for an hour
    first.process.kill('SIGKILL');
    // pgrep may also have seen a short-lived child (mount(8)) that is gone by now.
    for (const pid of serving) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    await waitFor(() => !isAlive(first.process.pid!) && serving.every((pid) => !isAlive(pid)), { timeoutMs: 10_000 });
    // As a restarted container sees it: stat still answers, statfs does not.
    expect((await sh(`stat -c %F ${mnt} 2>&1`)).stdout.trim()).toBe('directory');
    expect((await sh(`stat -f ${mnt} 2>&1`)).stdout).toContain('Transport endpoint is not connected');

    const second = await mountCachefs({ ufs: `file://${src}`, mountpoint: mnt });
    try {
      await supervising(second);
      expect(second.output()).toContain('cleared a dead cachefs mount');
      expect((await sh(`cmp ${src}/blob ${mnt}/blob && echo same`)).stdout.trim()).toBe('same');
    } finally {
      await second.stop();
      await first.stop();
    }
    expect(await isMounted(mnt)).toBe(false);
  });

  it('refuses a mount point with files in it unless --nonempty', async () => {
    const mnt = path.join(work, 'mnt-full');
    await mkdir(mnt);
    await writeFile(path.join(mnt, 'left-here'), 'x');
    const refused = await cachefs(['mount', mnt, '--ufs', `file://${src}`, '--foreground', '--cache-dir', path.join(work, 'cache-full')], {}, 15_000);
    // A mount made anyway (as before --nonempty existed) ends when it is unmounted from outside.
    if (await isMounted(mnt)) await forceUnmount(mnt);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim()).toBe(`cachefs: mount point ${mnt} is not empty (1 entries): use an empty directory, or --nonempty to hide its files under the mount`);
    expect(await isMounted(mnt)).toBe(false);

    const mount = await mountCachefs({ ufs: `file://${src}`, mountpoint: mnt, args: ['--nonempty'] });
    try {
      expect((await sh(`ls ${mnt}`)).stdout.trim()).toBe('blob');
    } finally {
      await mount.stop();
    }
  });
});
