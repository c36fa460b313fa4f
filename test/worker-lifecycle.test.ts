/**
 * A worker's clean lifecycle: SIGTERM deregisters it from the master at once (not after the
 * heartbeat timeout) and removes its socket; uuid sockets of killed workers, which nobody
 * listens on, are swept when a worker starts on the same socket dir.
 */
import { lstat, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUTH_HEADER, startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';

let master: ServiceProcess;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-lifecycle-'));
  // A long heartbeat timeout: a worker that is gone within it was deregistered, not expired.
  master = await startMaster({ workerTimeout: '60s' });
});

afterAll(async () => {
  await stopAllServices();
  await rm(work, { recursive: true, force: true });
});

async function workerStates(): Promise<Record<string, string>> {
  const res = await fetch(`http://${master.address}/v1/workers`, { headers: { authorization: AUTH_HEADER } });
  const body = (await res.json()) as { workers: { id: string; state: string }[] };
  return Object.fromEntries(body.workers.map((w) => [w.id, w.state]));
}

async function socketsIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(dir)) if ((await lstat(path.join(dir, name))).isSocket()) out.push(name);
  return out.sort();
}

describe('worker lifecycle', () => {
  it('deregisters and removes its socket on SIGTERM', async () => {
    const socketDir = path.join(work, 'sock-term');
    const worker = await startWorker({ master: master.address, id: 'term-1', socketDir });
    expect(await workerStates()).toMatchObject({ 'term-1': 'alive' });
    expect(await socketsIn(socketDir)).toHaveLength(1);
    await worker.stop();
    expect(worker.child.exitCode).toBe(0);
    expect((await workerStates())['term-1']).toBeUndefined();
    expect(worker.output()).toContain('deregistered from the master');
    expect(await socketsIn(socketDir)).toEqual([]);
  });

  it('sweeps the uuid sockets of killed workers at start, and keeps a live one', async () => {
    const socketDir = path.join(work, 'sock-kill');
    const live = await startWorker({ master: master.address, id: 'live-1', socketDir });
    const [liveSocket] = await socketsIn(socketDir);
    const killed = await startWorker({ master: master.address, id: 'killed-1', socketDir });
    await killed.kill();
    // The SIGKILL leaves its socket behind, beside the live one.
    expect(await socketsIn(socketDir)).toHaveLength(2);
    const next = await startWorker({ master: master.address, id: 'next-1', socketDir });
    const left = await socketsIn(socketDir);
    expect(left).toHaveLength(2);
    expect(left).toContain(liveSocket);
    expect(next.output().match(/removed a stale worker socket/g)).toHaveLength(1);
    await next.stop();
    await live.stop();
    expect(await socketsIn(socketDir)).toEqual([]);
  });
});
