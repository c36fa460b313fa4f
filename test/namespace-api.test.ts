/**
 * The master's shared namespace cache through its API, in-process over real HTTP
 * with the cluster secret, over a real folder (file://): a directory larger than
 * one UFS page listed whole and in order at any page size, from one UFS LIST per
 * page however many callers and walks; concurrent misses sharing one LIST; stats
 * cached, absent objects too; `refresh` dropping what it names, a listing under
 * way continuing across it; records surviving a restart on the same LMDB meta
 * dir; and a mount's `SharedNamespaceUfs` going round a master that is gone (or too old to know the routes),
 * mid-listing included. The same with real processes and s3rver (LIST counts at
 * the store, `kill -9` of the master) is in namespace-cache.test.ts.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MasterClient } from '../src/master/client.js';
import { LmdbMetaStore } from '../src/master/lmdb-store.js';
import { MemoryMetaStore } from '../src/master/memory-store.js';
import type { MetaStore } from '../src/master/meta-store.js';
import { MasterMetrics } from '../src/master/metrics.js';
import { MountTable } from '../src/master/mount-table.js';
import { NamespaceCache } from '../src/master/namespace-cache.js';
import { MasterServer } from '../src/master/server.js';
import { WorkerRegistry } from '../src/master/worker-registry.js';
import { SharedNamespaceUfs } from '../src/master/shared-namespace-ufs.js';
import { pino } from 'pino';
import { ClusterSecret } from '../src/net/auth.js';
import { NamespaceUfs } from '../src/ufs/namespace.js';
import { openUfs } from '../src/ufs/open-ufs.js';
import type { Ufs } from '../src/ufs/ufs.js';
import { registryValue } from './support/metrics.js';
import { waitFor } from './support/processes.js';

const silent = pino({ level: 'silent' });

const SECRET = ClusterSecret.of('cluster-secret-of-the-namespace-api-test');
const BIG = 2_500;

let work: string;
let root: string;
const servers: MasterServer[] = [];
const clients: MasterClient[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-ns-api-'));
  root = path.join(work, 'store');
  await mkdir(path.join(root, 'big'), { recursive: true });
  const names = Array.from({ length: BIG }, (_, i) => `f${String(i).padStart(5, '0')}`);
  for (let i = 0; i < names.length; i += 250) await Promise.all(names.slice(i, i + 250).map((n) => writeFile(path.join(root, 'big', n), n)));
  // Directories among the files, so that pages mix objects and prefixes.
  for (const d of ['f00100x', 'f01500x', 'zdir']) await mkdir(path.join(root, 'big', d, 'inner'), { recursive: true }).then(() => writeFile(path.join(root, 'big', d, 'inner', 'x'), 'x'));
});

beforeEach(async () => {
  await rm(path.join(root, 'small'), { recursive: true, force: true });
  await rm(path.join(work, 'meta'), { recursive: true, force: true });
  await mkdir(path.join(root, 'small/sub'), { recursive: true });
  await writeFile(path.join(root, 'small/a.txt'), 'a');
  await writeFile(path.join(root, 'small/sub/b.txt'), 'bb');
});

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const s of servers.splice(0)) await s.close();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function startMaster(store: MetaStore = new MemoryMetaStore(), ttlMs = 3_600_000): Promise<{ master: MasterServer; client: MasterClient }> {
  const master = await MasterServer.start({ store, auth: SECRET, host: '127.0.0.1', port: 0, withProcessMetrics: false, namespaceTtlMs: ttlMs });
  servers.push(master);
  const client = new MasterClient(`127.0.0.1:${master.port}`, { retries: 0, auth: SECRET });
  clients.push(client);
  if (master.mountTable.size === 0) await client.addMount({ path: '/data', uri: `file://${root}` });
  return { master, client };
}

const ufsLists = (m: MasterServer): Promise<number> => registryValue(m.metrics.registry, 'cachefs_master_namespace_ufs_requests_total', { op: 'list' });

/** Every entry of a listing, paged `maxKeys` at a time through `list`. */
async function walk(list: (token: string | undefined) => Promise<{ objects: { key: string }[]; prefixes: string[]; next?: string }>, from?: string): Promise<string[]> {
  const out: string[] = [];
  let token = from;
  do {
    const page = await list(token);
    out.push(...page.objects.map((o) => o.key), ...page.prefixes);
    token = page.next;
  } while (token !== undefined);
  return out;
}

function viaMaster(client: MasterClient, prefix: string, maxKeys: number): Promise<string[]> {
  return walk(async (cursor) => {
    const p = await client.namespaceList(prefix, { cursor, maxKeys });
    return { ...p, next: p.cursor };
  });
}

function viaUfs(ufs: Ufs, prefix: string, maxKeys: number, from?: string): Promise<string[]> {
  return walk(async (token) => {
    const p = await ufs.list(prefix, { token, maxKeys });
    return { ...p, next: p.nextToken };
  }, from);
}

async function directNamespace(): Promise<NamespaceUfs> {
  return new NamespaceUfs([{ path: '/data', ufs: await openUfs(`file://${root}`) }]);
}

describe('the shared namespace cache', () => {
  it('lists a directory of three UFS pages whole and in order at any page size, asking the UFS once per page', async () => {
    const { master, client } = await startMaster();
    const expected = (await viaUfs(await directNamespace(), 'data/big/', 1000)).sort();
    expect(expected).toHaveLength(BIG + 3);
    const whole = await viaMaster(client, 'data/big/', 1000);
    expect([...whole].sort()).toEqual(expected);
    expect(new Set(whole).size).toBe(whole.length);
    expect(await ufsLists(master)).toBe(3);
    // Small pages are slices of the cached ones: same entries, no new LIST.
    const sliced = await viaMaster(client, 'data/big/', 7);
    expect([...sliced].sort()).toEqual(expected);
    expect(await ufsLists(master)).toBe(3);
    expect(await registryValue(master.metrics.registry, 'cachefs_master_namespace_requests_total', { op: 'list', result: 'hit' })).toBeGreaterThan(300);
  });

  it('shares one UFS LIST among eight concurrent misses of one directory', async () => {
    const { master, client } = await startMaster();
    const answers = await Promise.all(Array.from({ length: 8 }, () => viaMaster(client, 'data/small/', 1000)));
    for (const a of answers) expect(a.sort()).toEqual(['data/small/a.txt', 'data/small/sub/']);
    expect(await ufsLists(master)).toBe(1);
  });

  it('caches stats, absent objects too', async () => {
    const { master, client } = await startMaster();
    const heads = (): Promise<number> => registryValue(master.metrics.registry, 'cachefs_master_namespace_ufs_requests_total', { op: 'stat' });
    expect(await client.namespaceStat('data/small/sub/b.txt')).toMatchObject({ key: 'data/small/sub/b.txt', size: 2 });
    expect(await client.namespaceStat('data/small/nothing')).toBeNull();
    expect(await client.namespaceStat('data/small/sub/b.txt')).toMatchObject({ size: 2 });
    expect(await client.namespaceStat('data/small/nothing')).toBeNull();
    expect(await heads()).toBe(2);
  });

  it('refresh drops a path: a new object shows; a listing under way finishes whole across it', async () => {
    const { master, client } = await startMaster();
    expect(await viaMaster(client, 'data/small/', 1000)).toHaveLength(2);
    expect(await client.namespaceStat('data/small/a.txt')).toMatchObject({ size: 1 });
    await writeFile(path.join(root, 'small/new.txt'), 'new');
    await writeFile(path.join(root, 'small/a.txt'), 'aaaa');
    expect(await viaMaster(client, 'data/small/', 1000)).toHaveLength(2);
    expect(await client.namespaceStat('data/small/a.txt')).toMatchObject({ size: 1 });
    expect(await client.refreshNamespace('/data/small')).toEqual({ path: '/data/small', listings: 1, stats: 1 });
    expect((await viaMaster(client, 'data/small/', 1000)).sort()).toEqual(['data/small/a.txt', 'data/small/new.txt', 'data/small/sub/']);
    expect(await client.namespaceStat('data/small/a.txt')).toMatchObject({ size: 4 });

    const first = await client.namespaceList('data/big/', { maxKeys: 1000 });
    await client.refreshNamespace('/data/big');
    const seen = [...first.objects.map((o) => o.key), ...first.prefixes];
    const rest = await walk(async (cursor) => {
      const p = await client.namespaceList('data/big/', { cursor, maxKeys: 1000 });
      return { ...p, next: p.cursor };
    }, first.cursor);
    seen.push(...rest);
    expect(new Set(seen).size).toBe(BIG + 3);
    expect(seen).toHaveLength(BIG + 3);
    await expect(client.namespaceList('data/big/', { cursor: 'not-a-cursor' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('keeps its records in LMDB across a restart on the same meta dir', async () => {
    const metaDir = path.join(work, 'meta');
    const first = await startMaster(await LmdbMetaStore.open(metaDir));
    expect(await viaMaster(first.client, 'data/big/', 1000)).toHaveLength(BIG + 3);
    await first.master.close();
    const second = await startMaster(await LmdbMetaStore.open(metaDir));
    expect(await viaMaster(second.client, 'data/big/', 1000)).toHaveLength(BIG + 3);
    expect(await ufsLists(second.master)).toBe(0);
  });

  it("a mount's SharedNamespaceUfs goes round a master that is gone, in the middle of a listing too, and warns once", async () => {
    const { master, client } = await startMaster();
    const warnings: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push((JSON.parse(line) as { msg: string }).msg) });
    const shared = new SharedNamespaceUfs(client, await directNamespace(), log);
    const first = await shared.list('data/big/', { maxKeys: 1000 });
    expect(await ufsLists(master)).toBe(1);
    await master.close();
    const rest = await viaUfs(shared, 'data/big/', 1000, first.nextToken);
    const all = [...first.objects.map((o) => o.key), ...first.prefixes, ...rest];
    expect(all).toHaveLength(BIG + 3);
    expect(new Set(all).size).toBe(BIG + 3);
    expect(await shared.stat('data/small/a.txt')).toMatchObject({ size: 1 });
    expect(warnings).toEqual(['the master does not answer namespace requests: asking the object stores directly']);
  });

  it('goes round a master that does not know the namespace routes (older than the mount)', async () => {
    // What a master before the namespace cache answers every unknown path with.
    const old = createServer((_req, res) => res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NOT_FOUND', message: "no such API path '/v1/namespace/list'" } })));
    await new Promise<void>((resolve) => old.listen(0, '127.0.0.1', resolve));
    try {
      const client = new MasterClient(`127.0.0.1:${(old.address() as AddressInfo).port}`, { retries: 0, auth: SECRET });
      clients.push(client);
      const shared = new SharedNamespaceUfs(client, await directNamespace(), pino({ level: 'silent' }));
      expect((await viaUfs(shared, 'data/small/', 1000)).sort()).toEqual(['data/small/a.txt', 'data/small/sub/']);
      expect(await shared.stat('data/small/a.txt')).toMatchObject({ size: 1 });
    } finally {
      await new Promise((resolve) => old.close(resolve));
    }
  });

  it('a listing fetched while a refresh comes is answered but not kept: the next request asks the UFS', async () => {
    const store = new MemoryMetaStore();
    const metrics = new MasterMetrics(await MountTable.load(store, silent, undefined), await WorkerRegistry.load(store, silent), false);
    const direct = await directNamespace();
    let gate: Promise<void> | undefined;
    // The store's answer is read, then held back until the refresh has been made.
    const held: Ufs = { displayUri: direct.displayUri, stat: (k) => direct.stat(k), check: () => direct.check(), readInto: (...a) => direct.readInto(...a), close: () => direct.close(), list: async (prefix, o) => {
      const page = await direct.list(prefix, o);
      await gate;
      return page;
    } };
    const cache = new NamespaceCache(held, store, 3_600_000, metrics, silent);
    let release!: () => void;
    gate = new Promise<void>((resolve) => (release = resolve));
    const before = cache.list('data/small/', undefined, 1000);
    await waitFor(async () => (await registryValue(metrics.registry, 'cachefs_master_namespace_ufs_requests_total', { op: 'list' })) === 1);
    await sleep(50);
    await writeFile(path.join(root, 'small/late.txt'), 'late');
    const refreshed = cache.refresh('data/small');
    release();
    expect((await before).objects.map((o) => o.key)).toEqual(['data/small/a.txt']);
    await refreshed;
    gate = undefined;
    expect((await cache.list('data/small/', undefined, 1000)).objects.map((o) => o.key)).toEqual(['data/small/a.txt', 'data/small/late.txt']);
    expect(await registryValue(metrics.registry, 'cachefs_master_namespace_ufs_requests_total', { op: 'list' })).toBe(2);
  });

  it('follows the mount table: an entry added or removed shows in the cached listings above it at once', async () => {
    const { master, client } = await startMaster();
    expect((await client.namespaceList('', {})).prefixes).toEqual(['data/']);
    expect((await client.namespaceList('', {})).prefixes).toEqual(['data/']);
    await client.addMount({ path: '/more/small', uri: `file://${path.join(root, 'small')}` });
    expect((await client.namespaceList('', {})).prefixes).toEqual(['data/', 'more/']);
    expect((await client.namespaceList('more/', {})).prefixes).toEqual(['more/small/']);
    await waitFor(async () => (await client.namespaceList('more/small/', {})).objects.length === 1, { what: 'the new entry to be listed' });
    await client.removeMount('/more/small');
    expect((await client.namespaceList('', {})).prefixes).toEqual(['data/']);
    expect(await registryValue(master.metrics.registry, 'cachefs_master_namespace_requests_total', { op: 'list', result: 'hit' })).toBeGreaterThan(0);
  });
});
