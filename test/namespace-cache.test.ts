/**
 * The shared namespace cache with real processes: a `cachefs master` over s3rver
 * and cluster mounts walking one tree. Three mounts walking it cold send one LIST
 * per directory to the store (counted by the store), not one per directory per
 * mount; after `kill -9` of the master and a restart on the same meta dir, a new
 * mount's walk sends none; an object changed in the store shows after `cachefs
 * refresh` (and not before, within the TTL) and after `--namespace-ttl`; with the
 * master down, a mount still walks the tree from the store.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, sh, stopAllMounts, type TestMount } from './support/cachefs.js';
import { addMountEntry, AUTH_HEADER, startMaster, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const TOP = 4;
const SUB = 3;
const FILES = 10;
/** `set/`, its TOP directories and their SUB directories each. */
const DIRECTORIES = 1 + TOP + TOP * SUB;

let s3: S3TestServer;
let master: ServiceProcess & { metaDir: string };
const expected: string[] = [];

const mountArgs = (extra: string[] = []): string[] => ['--master', master.address, '--cache-group', 'ns', '--no-sharing', ...extra];

/** LIST requests the store received since its log was last cleared. */
function storeLists(): number {
  return s3.requestLog().filter((r) => r.method === 'GET' && r.key === '' && r.query.get('list-type') === '2').length;
}

/** Every file below the mount's /data with its size, as `find` sees it. */
async function walk(m: TestMount): Promise<string[]> {
  const r = await sh(`find ${m.mountpoint}/data -type f -printf '%P %s\\n' | LC_ALL=C sort`);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.trim().split('\n');
}

async function restartMaster(args: string[] = []): Promise<void> {
  await master.stop();
  master = await startMaster({ metaDir: master.metaDir, port: master.port, args });
}

beforeAll(async () => {
  s3 = await startS3Server({ buckets: ['data'] });
  const objects = [];
  for (let d = 0; d < TOP; d++) {
    for (let s = 0; s < SUB; s++) {
      for (let f = 0; f < FILES; f++) {
        const key = `d${d}/s${s}/f${f}.bin`;
        const body = `${key}\n`.repeat(1 + d + s + f);
        objects.push({ key: `set/${key}`, body });
        expected.push(`${key} ${body.length}`);
      }
    }
  }
  expected.sort();
  await s3.putObjects('data', objects);
  master = await startMaster({ args: ['--namespace-ttl', '1h'] });
  await addMountEntry(master.address, '/data', 's3://data/set', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER', 's3.region=us-east-1']);
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await s3?.close();
});

describe('the shared namespace cache', () => {
  it('three cluster mounts walking the same tree cold send one LIST per directory to the store', async () => {
    const mounts = await Promise.all([0, 1, 2].map(() => mountCachefs({ args: mountArgs() })));
    s3.clearRequestLog();
    const walks = await Promise.all(mounts.map((m) => walk(m)));
    for (const w of walks) expect(w).toEqual(expected);
    const lists = storeLists();
    expect(lists, `LISTs at the store for ${DIRECTORIES} directories walked by 3 mounts`).toBeLessThanOrEqual(Math.floor(1.1 * DIRECTORIES));
    expect(lists).toBeGreaterThanOrEqual(DIRECTORIES);
    const m = await master.metrics();
    expect(m.value('cachefs_master_namespace_ufs_requests_total', { op: 'list' })).toBe(lists);
    expect(m.value('cachefs_master_namespace_requests_total', { op: 'list', result: 'hit' })).toBeGreaterThan(0);
    // What the cache hands out is names and attributes, never the entry's credentials.
    const raw = await fetch(`http://${master.address}/v1/namespace/list?prefix=data/`, { headers: { authorization: AUTH_HEADER } });
    expect(raw.status).toBe(200);
    const text = await raw.text();
    expect(text).toContain('"data/d0/"');
    expect(text).not.toContain('S3RVER');
    for (const mount of mounts) await mount.stop();
  });

  it('survives kill -9 of the master: after a restart, a new mount walks the tree without a LIST at the store', async () => {
    await master.kill();
    master = await startMaster({ metaDir: master.metaDir, port: master.port, args: ['--namespace-ttl', '1h'] });
    const m = await mountCachefs({ args: mountArgs() });
    s3.clearRequestLog();
    expect(await walk(m)).toEqual(expected);
    expect(storeLists()).toBe(0);
    expect((await master.metrics()).value('cachefs_master_namespace_ufs_requests_total', { op: 'list' })).toBe(0);
    await m.stop();
  });

  it('shows an object changed in the store after `cachefs refresh`, not before within the TTL', async () => {
    const m = await mountCachefs({ args: mountArgs(['--meta-ttl', '1s']) });
    const file = path.join(m.mountpoint, 'data/d1/s2/f3.bin');
    const before = (await stat(file)).size;
    const changed = 'changed in the store\n'.repeat(50);
    await s3.putObject('data', 'set/d1/s2/f3.bin', changed);
    // Past the mount's own --meta-ttl: what it sees now is what the master's cache answers.
    await sleep(2_500);
    expect((await stat(file)).size).toBe(before);
    const r = await cachefs(['refresh', '/data/d1/s2', '--master', master.address]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^refreshed \/data\/d1\/s2: \d+ listings and \d+ stats dropped\n$/);
    await waitFor(async () => (await stat(file)).size === changed.length, { timeoutMs: 10_000, what: 'the changed size to show' });
    const cat = await sh(`cat ${file}`);
    expect(cat.stdout).toBe(changed);
    await m.stop();
  });

  it('shows an object changed in the store after --namespace-ttl', async () => {
    await restartMaster(['--namespace-ttl', '2s']);
    const m = await mountCachefs({ args: mountArgs(['--meta-ttl', '1s']) });
    const file = path.join(m.mountpoint, 'data/d2/s0/f0.bin');
    await stat(file);
    const changed = 'changed again\n'.repeat(70);
    await s3.putObject('data', 'set/d2/s0/f0.bin', changed);
    await waitFor(async () => (await stat(file)).size === changed.length, { timeoutMs: 15_000, what: 'the changed size to show' });
    expect((await sh(`cat ${file}`)).stdout).toBe(changed);
    await m.stop();
  });

  it('with the master down, a mount walks the tree from the store and says so once', async () => {
    const m = await mountCachefs({ args: mountArgs(['--meta-ttl', '1s']) });
    expect(await walk(m)).toHaveLength(expected.length);
    await master.stop();
    await sleep(1_500);
    s3.clearRequestLog();
    const files = await walk(m);
    expect(files).toHaveLength(expected.length);
    expect(files).toContain('d0/s0/f0.bin 13');
    expect(storeLists()).toBeGreaterThanOrEqual(DIRECTORIES);
    expect(m.output().match(/the master does not answer namespace requests/g)).toHaveLength(1);
    await m.stop();
  });
});
