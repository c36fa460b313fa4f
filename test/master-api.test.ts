/**
 * The master's HTTP API, served in-process on 127.0.0.1 and driven over real
 * HTTP with the cluster secret: mount table (validation, conflicts, secrets
 * masked in listings and kept for resolve), worker registry (registration,
 * credentials, heartbeats, expiry to lost, duplicate ids), clear 4xx errors,
 * metrics, and state surviving a master restart on the same meta dir. What the
 * master refuses to callers without the secret is in test/security/.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { RegisterWorkerRequest } from '../src/master/api.js';
import { ClusterSecret } from '../src/net/auth.js';
import { LmdbMetaStore } from '../src/master/lmdb-store.js';
import { MemoryMetaStore } from '../src/master/memory-store.js';
import type { MetaStore } from '../src/master/meta-store.js';
import { MasterServer } from '../src/master/server.js';

const SECRET = 'wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY';
const CLUSTER_SECRET = ClusterSecret.of('cluster-secret-of-the-master-api-test');

const servers: MasterServer[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function startMaster(options: { store?: MetaStore; workerTimeoutMs?: number } = {}): Promise<{ master: MasterServer; url: string }> {
  const master = await MasterServer.start({
    store: options.store ?? new MemoryMetaStore(),
    auth: CLUSTER_SECRET,
    host: '127.0.0.1',
    port: 0,
    workerTimeoutMs: options.workerTimeoutMs,
    withProcessMetrics: false,
  });
  servers.push(master);
  return { master, url: `http://127.0.0.1:${master.port}` };
}

async function api(url: string, method: string, route: string, body?: unknown): Promise<{ status: number; json: unknown; text: string }> {
  const res = await fetch(url + route, {
    method,
    headers: { authorization: CLUSTER_SECRET.authorization, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

/** Registers a worker and answers its registration credential. */
async function register(url: string, req: RegisterWorkerRequest): Promise<string> {
  const res = await api(url, 'POST', '/v1/workers/register', req);
  expect(res.status).toBe(200);
  return (res.json as { credential: string }).credential;
}

function worker(id: string, extra: Partial<RegisterWorkerRequest> = {}): RegisterWorkerRequest {
  return {
    id,
    cacheGroup: 'g',
    address: '127.0.0.1:29999',
    hostname: 'node-a',
    domainSocketPath: `/run/cachefs/${id}`,
    startedAt: 1000,
    instance: `${id}-instance-1`,
    capacityBytes: 4096,
    usedBytes: 1024,
    blocks: 1,
    tiers: [{ medium: 'MEM', dir: '/dev/shm/cachefs', quotaBytes: 4096, usedBytes: 1024 }],
    ...extra,
  };
}

describe('mount table API', () => {
  it('adds an entry, lists it with secret values masked and resolves it with its secrets', async () => {
    const { url } = await startMaster();
    const put = await api(url, 'PUT', '/v1/mount-table', {
      path: '/data/',
      uri: 's3://bucket/prefix',
      options: { 's3.endpoint': 'http://127.0.0.1:9000' },
      secretOptions: { 's3.secretAccessKey': SECRET },
    });
    expect(put.status).toBe(201);
    expect(put.text).not.toContain(SECRET);

    const list = await api(url, 'GET', '/v1/mount-table');
    expect(list.status).toBe(200);
    expect(list.text).not.toContain(SECRET);
    expect(list.json).toMatchObject({
      entries: [{ path: '/data', uri: 's3://bucket/prefix', options: { 's3.endpoint': 'http://127.0.0.1:9000' }, secretOptions: { 's3.secretAccessKey': '[secret]' } }],
    });

    const resolved = await api(url, 'GET', '/v1/mount-table/resolve?path=/data/train/part-0');
    expect(resolved.json).toMatchObject({ entry: { path: '/data', secretOptions: { 's3.secretAccessKey': SECRET } }, subPath: 'train/part-0' });
    const all = await api(url, 'GET', '/v1/mount-table/resolve-all');
    expect(all.json).toMatchObject({ entries: [{ path: '/data', secretOptions: { 's3.secretAccessKey': SECRET } }] });
  });

  it('keeps plain options whose names say they are secret as secret options', async () => {
    const { url } = await startMaster();
    await api(url, 'PUT', '/v1/mount-table', { path: '/d', uri: 'file:///srv/d', options: { 'oss.accessKeySecret': SECRET, 'oss.region': 'r' } });
    const list = await api(url, 'GET', '/v1/mount-table');
    expect(list.text).not.toContain(SECRET);
    expect(list.json).toMatchObject({ entries: [{ options: { 'oss.region': 'r' }, secretOptions: { 'oss.accessKeySecret': '[secret]' } }] });
    expect((await api(url, 'GET', '/v1/mount-table/resolve-all')).json).toMatchObject({ entries: [{ secretOptions: { 'oss.accessKeySecret': SECRET } }] });
  });

  it('treats a repeated identical add as success and a different one at the same path as a conflict', async () => {
    const { url } = await startMaster();
    const entry = { path: '/data', uri: 's3://bucket/prefix' };
    expect((await api(url, 'PUT', '/v1/mount-table', entry)).status).toBe(201);
    const again = await api(url, 'PUT', '/v1/mount-table', entry);
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ created: false });
    const other = await api(url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/other' });
    expect(other.status).toBe(409);
    expect(other.json).toMatchObject({ error: { code: 'CONFLICT' } });
    const replaced = await api(url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/other', replace: true });
    expect(replaced.status).toBe(200);
    expect(replaced.json).toMatchObject({ entry: { uri: 's3://bucket/other' } });
  });

  it('rejects mount paths that overlap an existing one', async () => {
    const { url } = await startMaster();
    await api(url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/a' });
    expect((await api(url, 'PUT', '/v1/mount-table', { path: '/data/sub', uri: 's3://bucket/b' })).status).toBe(409);
    expect((await api(url, 'PUT', '/v1/mount-table', { path: '/', uri: 's3://bucket/b' })).status).toBe(409);
    expect((await api(url, 'PUT', '/v1/mount-table', { path: '/database', uri: 's3://bucket/b' })).status).toBe(201);
  });

  it('removes an entry, and answers 404 for paths it does not know', async () => {
    const { url } = await startMaster();
    await api(url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/a' });
    expect((await api(url, 'DELETE', '/v1/mount-table?path=/data')).status).toBe(200);
    const again = await api(url, 'DELETE', '/v1/mount-table?path=/data');
    expect(again.status).toBe(404);
    expect(again.json).toMatchObject({ error: { code: 'NOT_FOUND' } });
    expect((await api(url, 'GET', '/v1/mount-table/resolve?path=/data/x')).status).toBe(404);
  });

  it.each([
    ['a body that is not JSON', '{"path": "/data", ', /not valid JSON/],
    ['an empty body', '', /empty/],
    ['a JSON array', [], /JSON object/],
    ['a missing uri', { path: '/data' }, /missing field 'uri'/],
    ['a relative path', { path: 'data', uri: 's3://bucket/a' }, /must be absolute/],
    ['a path with ..', { path: '/data/../etc', uri: 's3://bucket/a' }, /'\.\.'/],
    ['an unknown URI scheme', { path: '/data', uri: 'http://bucket/a' }, /unknown scheme/],
    ['credentials in the URI', { path: '/data', uri: 's3://key:secret@bucket/a' }, /credentials are not allowed/],
    ['a non-string option', { path: '/data', uri: 's3://bucket/a', options: { 's3.endpoint': 9000 } }, /options\.s3\.endpoint: expected a string/],
    ['a bad option key', { path: '/data', uri: 's3://bucket/a', options: { 'bad key': 'x' } }, /invalid option key/],
    ['a key both plain and secret', { path: '/data', uri: 's3://bucket/a', options: { k: 'a' }, secretOptions: { k: 'b' } }, /both as a plain and as a secret/],
  ])('answers 400 with a clear message for %s', async (_what, body, message) => {
    const { url } = await startMaster();
    const res = await api(url, 'PUT', '/v1/mount-table', body);
    expect(res.status).toBe(400);
    expect(res.json).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    expect((res.json as { error: { message: string } }).error.message).toMatch(message);
  });

  it('answers 400 for missing query parameters, 404 for unknown paths and 405 for wrong methods', async () => {
    const { url } = await startMaster();
    expect(await api(url, 'GET', '/v1/mount-table/resolve')).toMatchObject({ status: 400, json: { error: { code: 'INVALID_ARGUMENT', message: "missing query parameter 'path'" } } });
    expect(await api(url, 'GET', '/v1/nothing-here')).toMatchObject({ status: 404, json: { error: { code: 'NOT_FOUND' } } });
    expect(await api(url, 'POST', '/v1/mount-table', {})).toMatchObject({ status: 405, json: { error: { code: 'INVALID_ARGUMENT' } } });
    expect(await api(url, 'GET', '/v1/workers?state=sleeping')).toMatchObject({ status: 400 });
    expect(await api(url, 'GET', '/v1/workers?cacheGroup=../x')).toMatchObject({ status: 400 });
  });

  it('answers 413 for a body over 1 MiB', async () => {
    const { url } = await startMaster();
    const res = await api(url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/a', options: { big: 'x'.repeat(1024 * 1024 + 10) } });
    expect(res.status).toBe(413);
  });
});

describe('worker registry API', () => {
  it('registers workers, answers each with a credential, and lists them by cache group without it', async () => {
    const { url } = await startMaster();
    const reg = await api(url, 'POST', '/v1/workers/register', worker('w1', { shortCircuitBytes: 77 }));
    expect(reg.status).toBe(200);
    expect(reg.json).toMatchObject({ worker: { id: 'w1', state: 'alive', shortCircuitBytes: 77 }, heartbeatIntervalMs: 2000, workerTimeoutMs: 10_000 });
    const credential = (reg.json as { credential: string }).credential;
    expect(credential).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await register(url, worker('w2', { cacheGroup: 'other', address: '127.0.0.1:29998' }));

    const list = await api(url, 'GET', '/v1/workers?cacheGroup=g');
    expect(list.json).toMatchObject({ workers: [{ id: 'w1', cacheGroup: 'g', address: '127.0.0.1:29999', hostname: 'node-a', domainSocketPath: '/run/cachefs/w1' }] });
    expect((list.json as { workers: unknown[] }).workers).toHaveLength(1);
    expect(list.text).not.toContain(credential);
    expect(list.text).not.toMatch(/credential/i);
    const groups = await api(url, 'GET', '/v1/cache-groups');
    expect(groups.json).toEqual({
      groups: [
        { name: 'g', alive: 1, lost: 0, capacityBytes: 4096, usedBytes: 1024, blocks: 1 },
        { name: 'other', alive: 1, lost: 0, capacityBytes: 4096, usedBytes: 1024, blocks: 1 },
      ],
    });
  });

  it('updates usage from heartbeats that carry the credential, and answers 404 for an unknown worker', async () => {
    const { url } = await startMaster();
    const credential = await register(url, worker('w1'));
    const hb = await api(url, 'POST', '/v1/workers/heartbeat', {
      id: 'w1',
      startedAt: 1000,
      instance: 'w1-instance-1',
      credential,
      usedBytes: 2048,
      blocks: 2,
      tiers: [{ medium: 'MEM', dir: '/dev/shm/cachefs', quotaBytes: 4096, usedBytes: 2048 }],
    });
    expect(hb).toMatchObject({ status: 200, json: { state: 'alive' } });
    expect((await api(url, 'GET', '/v1/workers')).json).toMatchObject({ workers: [{ id: 'w1', usedBytes: 2048, blocks: 2, capacityBytes: 4096 }] });
    expect(await api(url, 'POST', '/v1/workers/heartbeat', { id: 'nobody', startedAt: 1, credential })).toMatchObject({ status: 404, json: { error: { code: 'NOT_FOUND' } } });
    expect(await api(url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 1000 })).toMatchObject({ status: 400, json: { error: { message: "missing field 'credential' in heartbeat" } } });
  });

  it('marks a worker lost when its heartbeats stop, drops it from the live list, and takes it back when it registers again', async () => {
    const { url } = await startMaster({ workerTimeoutMs: 1000 });
    const c1 = await register(url, worker('w1'));
    const c2 = await register(url, worker('w2', { address: '127.0.0.1:29998' }));
    // w1 keeps heartbeating, w2 goes silent.
    for (let i = 0; i < 16; i++) {
      await sleep(100);
      expect((await api(url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 1000, instance: 'w1-instance-1', credential: c1 })).status).toBe(200);
    }
    const all = (await api(url, 'GET', '/v1/workers?cacheGroup=g')).json as { workers: { id: string; state: string }[] };
    expect(all.workers.map((w) => [w.id, w.state])).toEqual([
      ['w1', 'alive'],
      ['w2', 'lost'],
    ]);
    const live = (await api(url, 'GET', '/v1/workers?cacheGroup=g&state=alive')).json as { workers: { id: string }[] };
    expect(live.workers.map((w) => w.id)).toEqual(['w1']);
    expect((await api(url, 'GET', '/v1/cache-groups')).json).toMatchObject({ groups: [{ name: 'g', alive: 1, lost: 1 }] });

    // The lost worker's next heartbeat is refused so that it registers again.
    expect((await api(url, 'POST', '/v1/workers/heartbeat', { id: 'w2', startedAt: 1000, instance: 'w2-instance-1', credential: c2 })).status).toBe(404);
    expect((await api(url, 'POST', '/v1/workers/register', worker('w2', { address: '127.0.0.1:29998' }))).status).toBe(200);
    expect((await api(url, 'GET', '/v1/workers?cacheGroup=g&state=alive')).json).toMatchObject({ workers: [{ id: 'w1' }, { id: 'w2' }] });
  });

  it('rejects a second live process registering the same worker id with 409, whatever address it gives', async () => {
    const { url } = await startMaster({ workerTimeoutMs: 400 });
    const credential = await register(url, worker('w1'));
    const impostor = worker('w1', { address: '10.0.0.2:29999', hostname: 'node-b', startedAt: 2000, instance: 'other' });
    const dup = await api(url, 'POST', '/v1/workers/register', impostor);
    expect(dup).toMatchObject({ status: 409, json: { error: { code: 'CONFLICT' } } });
    expect((dup.json as { error: { message: string } }).error.message).toMatch(/already registered by a live worker at 127\.0\.0\.1:29999/);
    // Not at the registered worker's own address either, nor by copying its listed identity.
    expect((await api(url, 'POST', '/v1/workers/register', worker('w1', { startedAt: 2000, instance: 'other' }))).status).toBe(409);
    expect((await api(url, 'POST', '/v1/workers/register', worker('w1', { address: '10.0.0.2:29999' }))).status).toBe(409);
    // Its heartbeats are refused too, and the registered process keeps the id.
    expect((await api(url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 2000, instance: 'other', credential: 'guessed' })).status).toBe(409);
    expect((await api(url, 'GET', '/v1/workers')).json).toMatchObject({ workers: [{ id: 'w1', address: '127.0.0.1:29999' }] });
    // The registered process registering again with its credential is fine.
    expect((await api(url, 'POST', '/v1/workers/register', { ...worker('w1'), credential })).status).toBe(200);
    // Once it has expired, the id is free.
    await sleep(700);
    expect((await api(url, 'POST', '/v1/workers/register', impostor)).status).toBe(200);
  });

  it('lets a restarted worker that kept its credential take over its id without waiting for expiry', async () => {
    const { url } = await startMaster();
    const credential = await register(url, worker('w1'));
    const restarted = await api(url, 'POST', '/v1/workers/register', { ...worker('w1', { startedAt: 5000, instance: 'w1-instance-2' }), credential });
    expect(restarted).toMatchObject({ status: 200, json: { worker: { startedAt: 5000, state: 'alive' } } });
    // Each registration has its own credential: the old one no longer works.
    const renewed = (restarted.json as { credential: string }).credential;
    expect(renewed).not.toBe(credential);
    expect((await api(url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 5000, credential })).status).toBe(409);
    expect((await api(url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 5000, credential: renewed })).status).toBe(200);
  });

  it.each([
    ['a bad id', { id: '../etc' }, /invalid worker id/],
    ['a bad cache group', { cacheGroup: 'a b' }, /invalid cache group/],
    ['a bad address', { address: 'nohost' }, /invalid worker address/],
    ['a negative capacity', { capacityBytes: -1 }, /capacityBytes: expected a non-negative integer/],
    ['an unknown tier medium', { tiers: [{ medium: 'TAPE', dir: '/x', quotaBytes: 1, usedBytes: 0 }] }, /medium: expected one of MEM, SSD, HDD/],
  ])('answers 400 to a registration with %s', async (_what, extra, message) => {
    const { url } = await startMaster();
    const res = await api(url, 'POST', '/v1/workers/register', { ...worker('w1'), ...extra });
    expect(res.status).toBe(400);
    expect((res.json as { error: { message: string } }).error.message).toMatch(message);
  });

  it('forgets a worker only when it asks itself (its credential) or an admin forces it', async () => {
    const { url } = await startMaster();
    const credential = await register(url, worker('w1'));
    await register(url, worker('w2', { address: '127.0.0.1:29998' }));
    const denied = await api(url, 'DELETE', '/v1/workers?id=w1');
    expect(denied).toMatchObject({ status: 403, json: { error: { code: 'ACCESS_DENIED', message: expect.stringMatching(/only by itself .* or by an admin with force=1/) } } });
    const byItself = await fetch(`${url}/v1/workers?id=w1`, { method: 'DELETE', headers: { authorization: CLUSTER_SECRET.authorization, 'x-cachefs-worker-credential': credential } });
    expect(byItself.status).toBe(200);
    expect((await api(url, 'DELETE', '/v1/workers?id=w2&force=1')).status).toBe(200);
    expect((await api(url, 'GET', '/v1/workers')).json).toMatchObject({ workers: [] });
    expect((await api(url, 'DELETE', '/v1/workers?id=w1&force=1')).status).toBe(404);
  });
});

describe('master state', () => {
  it('keeps the mount table and the worker registry across a restart on the same meta dir', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-meta-'));
    dirs.push(dir);
    const first = await startMaster({ store: await LmdbMetaStore.open(dir) });
    await api(first.url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/p', secretOptions: { 's3.secretAccessKey': SECRET } });
    const credential = await register(first.url, worker('w1'));
    await first.master.close();
    servers.splice(servers.indexOf(first.master), 1);

    const second = await startMaster({ store: await LmdbMetaStore.open(dir) });
    expect((await api(second.url, 'GET', '/v1/mount-table/resolve?path=/data')).json).toMatchObject({ entry: { uri: 's3://bucket/p', secretOptions: { 's3.secretAccessKey': SECRET } } });
    expect((await api(second.url, 'GET', '/v1/workers?cacheGroup=g&state=alive')).json).toMatchObject({ workers: [{ id: 'w1', state: 'alive' }] });
    // The worker's heartbeats are accepted by the new master without registering again.
    expect((await api(second.url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 1000, instance: 'w1-instance-1', credential })).status).toBe(200);
    // ... and only with the credential of its registration.
    expect((await api(second.url, 'POST', '/v1/workers/heartbeat', { id: 'w1', startedAt: 1000, instance: 'w1-instance-1', credential: 'x' })).status).toBe(409);
  });

  it('serves health and Prometheus metrics from its own registry', async () => {
    const { url } = await startMaster();
    await api(url, 'PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/p' });
    await api(url, 'POST', '/v1/workers/register', worker('w1'));
    expect(await api(url, 'GET', '/healthz')).toMatchObject({ status: 200, json: { status: 'ok' } });
    expect(await api(url, 'GET', '/readyz')).toMatchObject({ status: 200, json: { status: 'ready' } });
    const metrics = await api(url, 'GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain('cachefs_master_mount_entries 1');
    expect(metrics.text).toContain('cachefs_master_workers{cache_group="g",state="alive"} 1');
    expect(metrics.text).toContain('cachefs_master_cache_used_bytes{cache_group="g"} 1024');
    expect(metrics.text).toMatch(/cachefs_master_requests_total\{route="\/v1\/mount-table",status="201"\} 1/);
  });
});
