/**
 * Readiness beside liveness on every process that serves metrics: a mount's supervisor
 * answers /readyz 200 once mounted; a worker answers /healthz as soon as it serves and
 * /readyz only once registered with the master; the master's /readyz answers too.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CACHEFS_BIN, mountCachefs, stopAllMounts } from './support/cachefs.js';
import { startMaster, startWorker, stopAllServices } from './support/cluster.js';
import { freePort, isAlive, waitFor } from './support/processes.js';

let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-readyz-'));
});

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await rm(work, { recursive: true, force: true });
});

async function status(url: string): Promise<number> {
  return (await fetch(url).catch(() => ({ status: 0 }))).status;
}

describe('/readyz', () => {
  it("answers 200 on a mount's metrics port once mounted, beside /healthz", async () => {
    const mount = await mountCachefs({ ufs: `file://${work}` });
    try {
      expect(await status(`http://127.0.0.1:${mount.metricsPort}/healthz`)).toBe(200);
      expect(await status(`http://127.0.0.1:${mount.metricsPort}/readyz`)).toBe(200);
    } finally {
      await mount.stop();
    }
  });

  it('a worker is ready only while registered with the master, live before that', async () => {
    const master = await startMaster();
    expect(await status(`http://${master.address}/readyz`)).toBe(200);
    const stateDir = path.join(work, 'wstate');
    const first = await startWorker({ master: master.address, id: 'ready-1', stateDir });
    expect(await status(`http://${first.address}/readyz`)).toBe(200);
    await first.stop();
    await master.kill();
    // The same worker again while the master is down: it serves (from the mount table it kept) but is not ready.
    const port = await freePort();
    const worker = spawn(process.execPath, [CACHEFS_BIN, 'worker', '--master', master.address, '--cache-group', 'g', '--id', 'ready-1', '--host', '127.0.0.1', '--port', String(port), '--tier', `SSD:${first.tierDir}:1GiB`, '--state-dir', stateDir, '--domain-socket-dir', 'none'], { stdio: 'ignore' });
    try {
      await waitFor(async () => (await status(`http://127.0.0.1:${port}/healthz`)) === 200, { timeoutMs: 30_000 });
      expect(await status(`http://127.0.0.1:${port}/readyz`)).toBe(503);
      await startMaster({ port: master.port, metaDir: master.metaDir });
      await waitFor(async () => (await status(`http://127.0.0.1:${port}/readyz`)) === 200, { timeoutMs: 20_000 });
    } finally {
      worker.kill('SIGTERM');
      await waitFor(() => !isAlive(worker.pid!), { timeoutMs: 10_000 }).catch(() => worker.kill('SIGKILL'));
    }
  });
});
