/**
 * Options from the environment (`CACHEFS_` + the long flag in upper snake case), the way a
 * container is configured: one mechanism for every command, the command line winning, a bad
 * value named with its variable, and the rule stated in every command's --help.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, sh, stopAllMounts } from './support/cachefs.js';
import { waitFor } from './support/processes.js';

let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-env-'));
});

afterAll(async () => {
  await stopAllMounts();
  await rm(work, { recursive: true, force: true });
});

describe('options from CACHEFS_* variables', () => {
  it('takes a value option from its variable, and the flag wins over it', async () => {
    const fromEnv = await cachefs(['report'], { CACHEFS_MASTER: '127.0.0.1:7' });
    expect(fromEnv.code).toBe(5);
    expect(fromEnv.stderr).toContain('cannot reach master 127.0.0.1:7:');
    const flagWins = await cachefs(['report', '--master', '127.0.0.1:9'], { CACHEFS_MASTER: '127.0.0.1:7' });
    expect(flagWins.stderr).toContain('cannot reach master 127.0.0.1:9:');
  });

  it('refuses a switch variable that is not true or false, naming the variable', async () => {
    const r = await cachefs(['report'], { CACHEFS_JSON: 'maybe', CACHEFS_MASTER: '127.0.0.1:7' });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe("cachefs: invalid CACHEFS_JSON 'maybe' (for --json): expected true or false");
  });

  it('states the rule in the --help of every command', async () => {
    for (const cmd of [['mount'], ['umount'], ['master'], ['worker'], ['report'], ['mount-table', 'add'], ['mount-table', 'list'], ['mount-table', 'apply']]) {
      const r = await cachefs([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.stdout.replace(/\s+/g, ' '), cmd.join(' ')).toContain('CACHEFS_CACHE_DIR=DIR');
    }
  });

  it('mounts with --ufs and --block-size given only by CACHEFS_UFS and CACHEFS_BLOCK_SIZE', async () => {
    const src = path.join(work, 'src');
    await sh(`mkdir -p ${src} && head -c 3000000 /dev/urandom > ${src}/blob`);
    const mount = await mountCachefs({ env: { CACHEFS_UFS: `file://${src}`, CACHEFS_BLOCK_SIZE: '1MiB' } });
    try {
      const r = await sh(`cmp ${src}/blob ${mount.mountpoint}/blob && echo same`);
      expect(r.stdout.trim()).toBe('same');
      // 3,000,000 bytes in 1 MiB blocks: three block files of at most 1 MiB in the cache dir (written just after the
      // reads are answered; the whole-object file assembled from them once all are in is larger).
      const count = async (): Promise<string> => (await sh(`find ${mount.cacheDir} -type f -size +0 -size -1025k | grep -Ec '/[0-9a-f]{40}\\.[0-9a-f]{16}$'`)).stdout.trim();
      await waitFor(async () => (await count()) === '3', { timeoutMs: 10_000 }).catch(() => undefined);
      expect(await count()).toBe('3');
    } finally {
      await mount.stop();
    }
  });
});
