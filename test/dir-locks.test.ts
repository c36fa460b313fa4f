/**
 * Kernel locks on shared dirs, across PID namespaces (two containers sharing a hostPath):
 * a second worker on a tier dir, or a second embedded mount on a --cache-dir, started in
 * its own PID namespace, exits 6 naming the dir and the holder, while the first goes on.
 * A pid-file lock let both start: the first one's pid means nothing in the second's namespace.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CACHEFS_BIN, mountCachefs, stopAllMounts } from './support/cachefs.js';
import { startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { freePort, isMounted, runCommand } from './support/processes.js';

/** A new PID namespace (and /proc for it); the child dies with unshare. */
const OWN_PID_NAMESPACE = ['unshare', '--pid', '--fork', '--kill-child', '--mount-proc'];

let work: string;
let master: ServiceProcess;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-locks-'));
  master = await startMaster();
});

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await rm(work, { recursive: true, force: true });
});

describe('kernel locks on shared dirs', () => {
  it('refuses a second worker on a tier dir from another PID namespace', async () => {
    const tierDir = path.join(work, 'tier');
    const first = await startWorker({ master: master.address, id: 'lock-1', tierDir, prefix: OWN_PID_NAMESPACE });
    const port = await freePort();
    const second = await runCommand(OWN_PID_NAMESPACE[0]!, [...OWN_PID_NAMESPACE.slice(1), process.execPath, CACHEFS_BIN, 'worker', '--master', master.address, '--id', 'lock-2', '--host', '127.0.0.1', '--port', String(port), '--tier', `SSD:${tierDir}:1GiB`, '--state-dir', path.join(work, 'wstate-2'), '--domain-socket-dir', 'none'], { timeoutMs: 30_000 });
    expect(second.code).toBe(6);
    expect(second.stderr.trim()).toMatch(new RegExp(`^cachefs: cache dir '${tierDir}' is in use by process \\d+ \\(a pid of its own PID namespace\\): `));
    expect(first.child.exitCode).toBeNull();
    await first.stop();
  });

  it('refuses a second embedded mount on a --cache-dir from another PID namespace', async () => {
    const cacheDir = path.join(work, 'cache');
    const src = path.join(work, 'src');
    await mkdir(src);
    const first = await mountCachefs({ ufs: `file://${src}`, cacheDir });
    try {
      const mnt = path.join(work, 'mnt-2');
      await mkdir(mnt);
      const second = await runCommand(OWN_PID_NAMESPACE[0]!, [...OWN_PID_NAMESPACE.slice(1), process.execPath, CACHEFS_BIN, 'mount', mnt, '--ufs', `file://${src}`, '--foreground', '--cache-dir', cacheDir], { timeoutMs: 20_000 });
      expect(second.code).toBe(6);
      expect(second.stderr).toContain(`cache dir '${cacheDir}`);
      expect(second.stderr).toContain('is in use by process');
      expect(await isMounted(first.mountpoint)).toBe(true);
    } finally {
      await first.stop();
    }
  });
});
