/**
 * `cachefs load` and `cachefs report --dataset` with real processes: a master, three
 * workers of 1 MiB blocks over s3rver, and an embedded mount. A load fills exactly the
 * blocks' owners (checked on each worker's disk), a second load reads nothing from
 * the store, a worker killed mid-load leaves its blocks to the next workers in
 * rendezvous order, the report's figures are the bytes on disk, and an embedded mount
 * warmed through its control socket serves a following read from its cache.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blocksCovering } from '../src/block/block.js';
import { WorkerRing } from '../src/client/worker-ring.js';
import { NAMESPACE_MOUNT_ID } from '../src/ufs/namespace.js';
import { BLOCK_FILE, cachefs, mountCachefs, sha256Of, stopAllMounts, type TestMount } from './support/cachefs.js';
import { addMountEntry, startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { expectServedBy } from './support/metrics.js';
import { freePort, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const MiB = 1024 * 1024;
const BS = MiB;

type Worker = ServiceProcess & { tierDir: string; id: string };

let s3: S3TestServer;
let master: ServiceProcess;
let workers: Worker[] = [];
let work: string;
/** Every object put, by its key in the bucket: size and ETag. */
const objects = new Map<string, { size: number; etag: string; body: Buffer }>();

async function put(key: string, size: number): Promise<void> {
  const body = randomBytes(size);
  objects.set(key, { size, etag: await s3.putObject('data', key, body), body });
}

/** Block files on a tier dir: id → size. */
async function blockFiles(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (e.isFile() && BLOCK_FILE.test(e.name)) out.set(e.name.slice(0, 40), (await stat(path.join(e.parentPath, e.name))).size);
  }
  return out;
}

/** The block ids and lengths of the objects under `prefix` of the bucket, as the namespace path /data maps them. */
function blocksUnder(prefix: string): { id: string; length: number }[] {
  return [...objects].filter(([key]) => key.startsWith(prefix)).flatMap(([key, o]) =>
    blocksCovering({ mount: NAMESPACE_MOUNT_ID, key: `data/${key.slice('set/'.length)}`, etag: o.etag, size: o.size }, BS, 0, o.size).map((r) => ({ id: r.id, length: r.length })),
  );
}

/** JSON lines a command printed. */
function lines(stdout: string): Record<string, unknown>[] {
  return stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
}

const GETS = (): number => s3.requestLog().filter((r) => r.method === 'GET' && r.key !== '').length;
const LISTS = (): number => s3.requestLog().filter((r) => r.method === 'GET' && r.key === '' && r.query.get('list-type') === '2').length;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-load-'));
  s3 = await startS3Server({ buckets: ['data'] });
  await put('set/a.bin', 10 * MiB + 5);
  await put('set/dir/b.bin', 5 * MiB + 3);
  await put('set/dir/sub/c.bin', 300 * 1024);
  for (let i = 0; i < 12; i++) await put(`set/many/f${i}.bin`, 64 * 1024 + i);
  for (let i = 0; i < 24; i++) await put(`set/big/f${i}.bin`, 2 * MiB);
  await put('set/big/slow.bin', 100);
  master = await startMaster();
  await addMountEntry(master.address, '/data', 's3://data/set', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER', 's3.region=us-east-1']);
  workers = await Promise.all([0, 1, 2].map(() => startWorker({ master: master.address, cacheGroup: 'g', blockSize: '1MiB' })));
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

const load = (args: string[], timeoutMs = 120_000) => cachefs(['load', '--master', master.address, '--cache-group', 'g', '--json', ...args], {}, timeoutMs);
const report = (args: string[]) => cachefs(['report', '--master', master.address, '--cache-group', 'g', '--json', ...args]);

describe('cachefs load into a cache group', () => {
  it('fills exactly the owner of each block, on its disk, and says what it did', async () => {
    const before = GETS();
    const r = await load(['/data/a.bin', '/data/dir', '/data/many']);
    expect(r.code, r.stderr).toBe(0);
    const out = lines(r.stdout);
    const plan = out.find((l) => l.event === 'plan')!;
    const expected = [...blocksUnder('set/a.bin'), ...blocksUnder('set/dir/'), ...blocksUnder('set/many/')];
    expect(plan.files).toBe(1 + 2 + 12);
    expect(plan.blocks).toBe(expected.length);
    const done = out.at(-1)!;
    expect(done).toMatchObject({ event: 'done', blocks: expected.length, failedBlocks: 0, files: 15 });
    // One GET per block, nothing more: the CLI moves no data and no block is fetched twice.
    expect(GETS() - before).toBe(expected.length);

    const ring = new WorkerRing(workers);
    const onDisk = await Promise.all(workers.map((w) => blockFiles(w.tierDir)));
    for (const [i, w] of workers.entries()) {
      const owned = expected.filter((b) => ring.owner(b.id) === w);
      expect(owned.length, `blocks owned by ${w.id}`).toBeGreaterThan(0);
      expect(new Set(onDisk[i]!.keys()), `blocks on ${w.id}'s disk`).toEqual(new Set(owned.map((b) => b.id)));
      for (const b of owned) expect(onDisk[i]!.get(b.id)).toBe(b.length);
    }
  });

  it('loads nothing the second time, and says so; its walk comes from the namespace cache the first load filled', async () => {
    const before = GETS();
    const listsBefore = LISTS();
    const r = await load(['/data/a.bin', '/data/dir', '/data/many']);
    expect(r.code, r.stderr).toBe(0);
    expect(lines(r.stdout).at(-1)).toMatchObject({ event: 'done', nothingToLoad: true, files: 15 });
    expect(GETS() - before).toBe(0);
    expect(LISTS() - listsBefore, 'LISTs at the store').toBe(0);
    const dir = await load(['/data/dir']);
    expect(lines(dir.stdout).at(-1)?.message).toBe('nothing to load: all 7 blocks (5.3MiB) of 2 files are cached already');
  });

  it('reports a dataset as the bytes on the workers’ disks, and evicts part of it', async () => {
    const dataset = [...blocksUnder('set/a.bin'), ...blocksUnder('set/dir/'), ...blocksUnder('set/many/')];
    const ufsBytes = dataset.reduce((n, b) => n + b.length, 0);
    const full = await report(['--dataset', '/data/a.bin', '--dataset', '/data/dir', '--dataset', '/data/many', '-v']);
    expect(full.code, full.stderr).toBe(0);
    const r = JSON.parse(full.stdout) as Record<string, number> & { workers: { id: string; cachedBytes: number; capacityBytes: number }[] };
    expect(r).toMatchObject({ files: 15, blocks: dataset.length, ufsBytes, cachedBytes: ufsBytes, cachedPercent: 100, capacityBytes: 3 * 1024 * MiB });
    for (const w of r.workers) {
      const disk = await blockFiles(workers.find((x) => x.id === w.id)!.tierDir);
      expect(w.cachedBytes, w.id).toBe([...disk.values()].reduce((n, s) => n + s, 0));
    }

    const ev = await load(['--evict', '/data/dir']);
    expect(ev.code, ev.stderr).toBe(0);
    expect(lines(ev.stdout).at(-1)).toMatchObject({ event: 'evicted', files: 2, blocks: blocksUnder('set/dir/').length });
    const after = JSON.parse((await report(['--dataset', '/data/a.bin', '--dataset', '/data/dir', '--dataset', '/data/many'])).stdout) as Record<string, number>;
    const diskBytes = (await Promise.all(workers.map((w) => blockFiles(w.tierDir)))).flatMap((m) => [...m.values()]).reduce((n, s) => n + s, 0);
    expect(after.cachedBytes).toBe(diskBytes);
    expect(after.cachedPercent).toBe(Math.round((diskBytes / ufsBytes) * 1000) / 10);
    expect(after.cachedPercent).toBeLessThan(100);
    const dry = await load(['--dry-run', '/data/dir']);
    expect(lines(dry.stdout).at(-1)).toMatchObject({ event: 'plan', dryRun: true, toLoad: { files: 2, blocks: blocksUnder('set/dir/').length } });
  });

  it('finishes on the other workers when one is killed mid-load, each of its blocks on the next owner in rendezvous order', async () => {
    const slow = blocksUnder('set/big/slow.bin')[0]!;
    const ring = new WorkerRing(workers);
    const victim = ring.owner(slow.id)!;
    // The victim's fill hangs on this block's GET until it is killed; others are answered.
    s3.stallObjectReads((key) => key === 'set/big/slow.bin');
    const loading = load(['--threads', '2', '/data/big']);
    await waitFor(() => s3.stalledReads().total > 0, { timeoutMs: 30_000, what: 'the victim to start the stalled GET' });
    await victim.kill();
    s3.stallObjectReads(undefined);
    const r = await loading;
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const out = lines(r.stdout);
    const note = out.find((l) => l.event === 'note');
    expect(String(note?.message)).toContain(`worker ${victim.id}`);
    expect(out.at(-1)).toMatchObject({ event: 'done', failedBlocks: 0 });

    const survivors = workers.filter((w) => w !== victim);
    const onDisk = new Map(await Promise.all(workers.map(async (w) => [w, await blockFiles(w.tierDir)] as const)));
    for (const b of blocksUnder('set/big/')) {
      const order = ring.order(b.id);
      if (order[0] === victim && onDisk.get(victim)!.has(b.id)) continue; // filled before the kill
      const owner = order.find((w) => w !== victim)!;
      expect(onDisk.get(owner)!.has(b.id), `block ${b.id} on ${owner.id}`).toBe(true);
    }
    expect(survivors.some((w) => onDisk.get(w)!.has(slow.id))).toBe(true);
    workers = survivors;
  });

  it('fails with one line for a path that does not exist, a master that does not answer, and bad flags', async () => {
    const missing = await load(['/data/nope']);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toBe('cachefs: no such file or directory: /data/nope\n');
    const port = await freePort();
    const noMaster = await cachefs(['load', '--master', `127.0.0.1:${port}`, '/data']);
    expect(noMaster.code).toBe(5);
    expect(noMaster.stderr.trim().split('\n')).toHaveLength(1);
    expect(noMaster.stderr).toContain(`127.0.0.1:${port}`);
    const relative = await load(['data/a.bin']);
    expect(relative.code).toBe(2);
    expect(relative.stderr).toMatch(/^cachefs: invalid path 'data\/a.bin': expected an absolute path of the cluster namespace/);
    const threads = await load(['--threads', '0', '/data']);
    expect(threads.code).toBe(2);
    expect(threads.stderr).toBe("cachefs: invalid --threads '0': expected a whole number from 1 to 1024\n");
    const both = await cachefs(['load', '--master', master.address, '--mount', work, '/data']);
    expect(both.code).toBe(2);
    const notMounted = await cachefs(['load', '--mount', work, path.join(work, 'x')]);
    expect(notMounted.code).toBe(3);
    expect(notMounted.stderr).toMatch(/^cachefs: no embedded mount of this user serves/);
  });
});

describe('cachefs load --mount', () => {
  let mnt: TestMount;

  it('warms an embedded mount through its control socket, so that a following read comes from its cache', async () => {
    mnt = await mountCachefs({
      ufs: 's3://data/set',
      args: ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB'],
      env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' },
    });
    const before = GETS();
    const r = await cachefs(['load', '--mount', mnt.mountpoint, '--json', path.join(mnt.mountpoint, 'dir')]);
    expect(r.code, r.stderr).toBe(0);
    const dir = blocksUnder('set/dir/');
    expect(lines(r.stdout).at(-1)).toMatchObject({ event: 'done', blocks: dir.length, files: 2, failedBlocks: 0 });
    expect(GETS() - before).toBe(dir.length);

    const m0 = await mnt.metrics();
    const b = objects.get('set/dir/b.bin')!;
    expect(await sha256Of(path.join(mnt.mountpoint, 'dir/b.bin'))).toBe((await import('node:crypto')).createHash('sha256').update(b.body).digest('hex'));
    const m1 = await mnt.metrics();
    expectServedBy(m1, 'cache', b.size, m0);
    expect(m1.value('cachefs_ufs_read_bytes_total') - m0.value('cachefs_ufs_read_bytes_total')).toBe(0);
    // The mount wrote those block files itself: they are not read back and hashed before they are served.
    expect(m1.value('cachefs_cache_file_checks_total')).toBe(0);

    const again = await cachefs(['load', '--mount', mnt.mountpoint, path.join(mnt.mountpoint, 'dir')]);
    expect(again.code).toBe(0);
    expect(lines(again.stdout).at(-1)).toMatchObject({ event: 'done', nothingToLoad: true, blocks: 7 });
    const outside = await cachefs(['load', '--mount', mnt.mountpoint, '/etc']);
    expect(outside.code).toBe(2);
    expect(outside.stderr).toBe(`cachefs: invalid path '/etc': expected a path inside the mount ${mnt.mountpoint}\n`);
  });
});
