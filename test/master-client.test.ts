/**
 * `MasterClient` against real master servers on 127.0.0.1: every call of the
 * API with the cluster secret, error codes for rejected requests (a missing or
 * wrong secret among them), HTTPS verified with the cluster's CA, retries with
 * backoff while the master is down, timeouts and cancellation, and the on-disk
 * cache that lets a mount start with the last mount table and worker list while
 * the master is unreachable.
 */
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { RegisterWorkerRequest } from '../src/master/api.js';
import { MasterClient } from '../src/master/client.js';
import { MemoryMetaStore } from '../src/master/memory-store.js';
import { MasterServer } from '../src/master/server.js';
import { ClusterSecret } from '../src/net/auth.js';
import { makeTestPki, type TestPki } from './support/tls.js';

const SECRET = 'oss-access-key-secret-1234567890';
const CLUSTER_SECRET = ClusterSecret.of('cluster-secret-of-the-master-client-test');

const servers: MasterServer[] = [];
const clients: MasterClient[] = [];
const rawServers: Server[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const s of servers.splice(0)) await s.close();
  for (const s of rawServers.splice(0)) {
    s.closeAllConnections();
    await new Promise((resolve) => s.close(resolve));
  }
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function startMaster(port = 0, workerTimeoutMs?: number, tls?: { cert: Buffer; key: Buffer }): Promise<MasterServer> {
  const master = await MasterServer.start({ store: new MemoryMetaStore(), auth: CLUSTER_SECRET, tls, host: '127.0.0.1', port, workerTimeoutMs, withProcessMetrics: false });
  servers.push(master);
  return master;
}

async function stopMaster(master: MasterServer): Promise<void> {
  servers.splice(servers.indexOf(master), 1);
  await master.close();
}

function client(port: number, options: ConstructorParameters<typeof MasterClient>[1] = {}): MasterClient {
  const c = new MasterClient(`127.0.0.1:${port}`, { backoffInitialMs: 20, backoffMaxMs: 100, timeoutMs: 2000, auth: CLUSTER_SECRET, ...options });
  clients.push(c);
  return c;
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-client-'));
  dirs.push(dir);
  return dir;
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

function worker(id: string, group = 'g'): RegisterWorkerRequest {
  return {
    id,
    cacheGroup: group,
    address: `127.0.0.1:${id === 'w1' ? 29991 : 29992}`,
    hostname: 'node-a',
    domainSocketPath: '',
    startedAt: 1000,
    capacityBytes: 100,
    usedBytes: 10,
    blocks: 1,
    tiers: [],
  };
}

describe('MasterClient', () => {
  it('drives the whole API', async () => {
    const master = await startMaster();
    const c = client(master.port);
    expect(await c.health()).toEqual({ status: 'ok' });

    const added = await c.addMount({ path: '/data', uri: 'oss://bucket/p', options: { 'oss.endpoint': 'http://x' }, secretOptions: { 'oss.accessKeySecret': SECRET } });
    expect(added).toMatchObject({ created: true, entry: { path: '/data', secretOptions: { 'oss.accessKeySecret': '[secret]' } } });
    expect(await c.listMounts()).toMatchObject([{ path: '/data', uri: 'oss://bucket/p', secretOptions: { 'oss.accessKeySecret': '[secret]' } }]);
    expect(await c.resolveMount('/data/a/b')).toMatchObject({ source: 'master', value: { subPath: 'a/b', entry: { secretOptions: { 'oss.accessKeySecret': SECRET } } } });
    expect(await c.mountTable()).toMatchObject({ source: 'master', value: [{ path: '/data', secretOptions: { 'oss.accessKeySecret': SECRET } }] });

    const reg = await c.registerWorker(worker('w1'));
    expect(reg).toMatchObject({ worker: { id: 'w1', state: 'alive' }, heartbeatIntervalMs: 2000, workerTimeoutMs: 10_000, credential: expect.any(String) });
    expect(await c.heartbeat({ id: 'w1', startedAt: 1000, usedBytes: 20, credential: reg.credential })).toMatchObject({ state: 'alive' });
    expect((await c.listWorkers({ cacheGroup: 'g' })).workers).toMatchObject([{ id: 'w1', usedBytes: 20 }]);
    expect(await c.liveWorkers('g')).toMatchObject({ source: 'master', value: [{ id: 'w1' }] });
    expect(await c.cacheGroups()).toEqual([{ name: 'g', alive: 1, lost: 0, capacityBytes: 100, usedBytes: 20, blocks: 1 }]);
    expect(await c.removeWorker('w1', { credential: reg.credential })).toMatchObject({ id: 'w1' });
    await c.registerWorker(worker('w2'));
    await expect(c.removeWorker('w2', { credential: reg.credential })).rejects.toMatchObject({ code: 'ACCESS_DENIED' });
    expect(await c.removeWorker('w2', { force: true })).toMatchObject({ id: 'w2' });
    expect(await c.removeMount('/data')).toMatchObject({ path: '/data' });
  });

  it('turns rejections into CachefsErrors with the right codes, without retrying them', async () => {
    const master = await startMaster();
    const c = client(master.port);
    await expect(c.addMount({ path: '/data', uri: 'ftp://x' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/unknown scheme/) });
    await expect(c.removeMount('/nothing')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(c.resolveMount('/nothing')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(c.heartbeat({ id: 'ghost', startedAt: 1, credential: 'c' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await c.addMount({ path: '/data', uri: 's3://bucket/a' });
    await expect(c.addMount({ path: '/data', uri: 's3://bucket/b' })).rejects.toMatchObject({ code: 'CONFLICT' });
    await c.registerWorker(worker('w1'));
    await expect(c.registerWorker({ ...worker('w1'), address: '127.0.0.9:1', startedAt: 2 })).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(() => new MasterClient('no-port-here')).toThrow(/invalid --master address/);
  });

  it('answers UNAUTHENTICATED, without retrying, to a client without the cluster secret or with another one', async () => {
    const master = await startMaster();
    let requests = 0;
    master.metrics.requests.reset();
    for (const auth of [undefined, ClusterSecret.of('some-other-cluster-secret')]) {
      const c = client(master.port, { auth, retries: 3 });
      await expect(c.listMounts()).rejects.toMatchObject({ code: 'UNAUTHENTICATED', message: expect.stringMatching(/missing or wrong cluster secret/) });
      requests++;
    }
    const text = await master.metrics.registry.metrics();
    expect(text).toContain(`cachefs_master_requests_total{route="/v1/mount-table",status="401"} ${requests}`);
    // The probes need no secret.
    expect(await client(master.port, { auth: undefined }).health()).toEqual({ status: 'ok' });
  });

  it('fails with UNREACHABLE after its retries when no master answers', async () => {
    const port = await closedPort();
    const c = client(port, { retries: 3 });
    const started = Date.now();
    await expect(c.listMounts()).rejects.toMatchObject({ code: 'UNREACHABLE', message: expect.stringMatching(/cannot reach master 127\.0\.0\.1:\d+: .*ECONNREFUSED/) });
    // Three backoff sleeps of at least 10, 20 and 40 ms.
    expect(Date.now() - started).toBeGreaterThanOrEqual(70);
  });

  it('retries until a master that starts late answers', async () => {
    const port = await closedPort();
    const c = client(port, { retries: 20, backoffInitialMs: 50, backoffMaxMs: 200 });
    const call = c.listMounts();
    await sleep(400);
    await startMaster(port);
    await expect(call).resolves.toEqual([]);
  });

  it('times out an attempt against a master that does not answer, and can be cancelled', async () => {
    const hung = createServer(() => undefined);
    rawServers.push(hung);
    await new Promise<void>((resolve) => hung.listen(0, '127.0.0.1', resolve));
    const port = (hung.address() as AddressInfo).port;
    const c = client(port, { timeoutMs: 150, retries: 1 });
    await expect(c.listMounts()).rejects.toMatchObject({ code: 'TIMEOUT', message: expect.stringMatching(/did not answer GET \/v1\/mount-table within 150ms/) });

    const cancel = new AbortController();
    setTimeout(() => cancel.abort(), 100);
    await expect(c.listMounts({ signal: cancel.signal, retries: 50, timeoutMs: 10_000 })).rejects.toMatchObject({ code: 'TIMEOUT', message: expect.stringMatching(/cancelled/) });
  });

  it('serves the cached mount table and worker list while the master is down', async () => {
    const cacheDir = await tempDir();
    const master = await startMaster();
    const port = master.port;
    const first = client(port, { cacheDir });
    await first.addMount({ path: '/data', uri: 's3://bucket/p', secretOptions: { 's3.secretAccessKey': SECRET } });
    await first.registerWorker(worker('w1'));
    await first.registerWorker(worker('w2'));
    expect((await first.mountTable()).source).toBe('master');
    expect((await first.liveWorkers('g')).source).toBe('master');
    await stopMaster(master);

    // A new mount process starting while the master is down.
    const mount = client(port, { cacheDir, retries: 2 });
    const table = await mount.mountTable();
    expect(table).toMatchObject({ source: 'cache', value: [{ path: '/data', uri: 's3://bucket/p', secretOptions: { 's3.secretAccessKey': SECRET } }] });
    expect(await mount.resolveMount('/data/x/y')).toMatchObject({ source: 'cache', value: { subPath: 'x/y', entry: { path: '/data' } } });
    await expect(mount.resolveMount('/elsewhere')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await mount.liveWorkers('g')).value.map((w) => w.id)).toEqual(['w1', 'w2']);
    // No list was ever cached for this group.
    await expect(mount.liveWorkers('other')).rejects.toMatchObject({ code: 'UNREACHABLE', message: expect.stringMatching(/no cached worker list/) });

    // The cache holds secrets: owner-only, and written whole (no temp files left).
    expect((await stat(path.join(cacheDir, 'mount-table.json'))).mode & 0o777).toBe(0o600);
    expect((await readdir(cacheDir)).sort()).toEqual(['mount-table.json', 'workers-g.json']);

    // Back from the master once it answers again.
    await startMaster(port);
    expect((await mount.mountTable()).source).toBe('master');
  });

  it('fails with UNREACHABLE when the master is down and nothing is cached, or the cache is damaged', async () => {
    const cacheDir = await tempDir();
    const port = await closedPort();
    const c = client(port, { cacheDir, retries: 1 });
    await expect(c.mountTable()).rejects.toMatchObject({ code: 'UNREACHABLE', message: expect.stringMatching(/no cached mount table in /) });
    await writeFile(path.join(cacheDir, 'mount-table.json'), '{"version":1,"savedAt":1,"entr');
    await expect(c.mountTable()).rejects.toMatchObject({ code: 'UNREACHABLE' });
  });

  it('tells a worker that missed its heartbeats to register again', async () => {
    const master = await startMaster(0, 300);
    const c = client(master.port);
    const first = await c.registerWorker(worker('w1'));
    await sleep(500);
    // Missed heartbeats: the worker is lost and must register again.
    await expect(c.heartbeat({ id: 'w1', startedAt: 1000, credential: first.credential })).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/marked lost/) });
    const again = await c.registerWorker(worker('w1'));
    expect(await c.heartbeat({ id: 'w1', startedAt: 1000, credential: again.credential })).toMatchObject({ state: 'alive' });
  });
});

describe('MasterClient over TLS', () => {
  let pki: TestPki;
  afterEach(async () => {
    await pki?.remove();
  });

  it('speaks HTTPS to a master with a certificate, verified with the CA, and refuses one its CA did not sign', async () => {
    pki = await makeTestPki();
    const master = await startMaster(0, undefined, { cert: readFileSync(pki.cert), key: readFileSync(pki.key) });
    const c = client(master.port, { tls: { ca: readFileSync(pki.ca) } });
    await c.addMount({ path: '/data', uri: 's3://bucket/p', secretOptions: { 's3.secretAccessKey': SECRET } });
    expect(await c.mountTable()).toMatchObject({ value: [{ secretOptions: { 's3.secretAccessKey': SECRET } }] });
    const wrongCa = client(master.port, { tls: { ca: readFileSync(pki.otherCa) }, retries: 0 });
    await expect(wrongCa.listMounts()).rejects.toMatchObject({ code: 'UNREACHABLE', message: expect.stringMatching(/certificate/i) });
    // A client that speaks plain HTTP to it gets no answer it can use.
    await expect(client(master.port, { retries: 0 }).listMounts()).rejects.toMatchObject({ code: 'UNREACHABLE', message: expect.stringMatching(/other side closed/) });
  });
});
