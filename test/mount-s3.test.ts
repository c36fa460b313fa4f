/**
 * The foundation end to end: a real FUSE mount of a real S3-protocol server
 * (s3rver) through the `cachefs` binary, read by child processes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_FILE, dropPageCache, mountCachefs, sh, sha256Of, stopAllMounts, waitForWholeFile, type TestMount } from './support/cachefs.js';
import { runCommand, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';
import { expectPassedThrough, settledCacheMetrics } from './support/metrics.js';

const MiB = 1024 * 1024;
const BLOCK = MiB;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const files: Record<string, Buffer> = {
  'sizes/empty': Buffer.alloc(0),
  'sizes/one': randomBytes(1),
  'sizes/block-minus-1': randomBytes(BLOCK - 1),
  'sizes/block': randomBytes(BLOCK),
  'sizes/block-plus-1': randomBytes(BLOCK + 1),
  'big/hundred.bin': randomBytes(100 * MiB + 12345),
  'd1/d2/d3/deep.txt': Buffer.from('deep\n'),
  'with space/ünïcødé 名前.txt': Buffer.from('unicode\n'),
  'emptydir/': Buffer.alloc(0),
};
const MANY = 10_000;
/** Files looked up by name alone, as a data loader opens them from an index. */
const BY_NAME = 300;
const byNameBody = (i: number): string => `file ${i} of the index\n`.repeat(1 + (i % 7));

/** The block files in a cache dir (names of 40 hex digits), as paths. */
async function blockFiles(cacheDir: string): Promise<string[]> {
  const entries = await readdir(cacheDir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && BLOCK_FILE.test(e.name)).map((e) => path.join(e.parentPath, e.name));
}

let s3: S3TestServer;
let work: string;
let mnt: TestMount;
const env = (): NodeJS.ProcessEnv => ({ AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' });
const mountArgs = (): string[] => ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB'];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-e2e-'));
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObjects('data', Object.entries(files).map(([key, body]) => ({ key, body })));
  await s3.putObjects('data', Array.from({ length: MANY }, (_, i) => ({ key: `many/f${String(i).padStart(5, '0')}`, body: `${i}\n` })), { concurrency: 64 });
  await s3.putObjects('data', Array.from({ length: BY_NAME }, (_, i) => ({ key: `byname/s${i}.txt`, body: byNameBody(i) })), { concurrency: 64 });
  mnt = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env: env() });
}, 300_000);

afterEach(async () => {
  // Mounts made by single tests are stopped here; the shared one lives until afterAll.
});

afterAll(async () => {
  await stopAllMounts();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('reading through the mount', () => {
  it('returns byte-exact content for files of size 0, 1, block-1, block, block+1 and ~100 MiB', async () => {
    for (const name of ['sizes/empty', 'sizes/one', 'sizes/block-minus-1', 'sizes/block', 'sizes/block-plus-1', 'big/hundred.bin']) {
      expect(await sha256Of(path.join(mnt.mountpoint, name)), name).toBe(sha(files[name]!));
    }
    const dd = await sh(`dd if=${mnt.mountpoint}/sizes/block-plus-1 bs=7777 status=none | sha256sum`);
    expect(dd.stdout.split(' ')[0]).toBe(sha(files['sizes/block-plus-1']!));
  });

  it('gets sequential reads from the kernel in requests of 1 MiB, not libfuse 2\'s 128 KiB', async () => {
    const m = await mountCachefs({ ufs: 's3://data/big', args: mountArgs(), env: env() });
    const before = await m.metrics();
    expect(await sha256Of(path.join(m.mountpoint, 'hundred.bin'))).toBe(sha(files['big/hundred.bin']!));
    const after = await m.metrics();
    const reads = after.value('cachefs_fuse_ops_total', { op: 'read' }) - before.value('cachefs_fuse_ops_total', { op: 'read' });
    const bytes = files['big/hundred.bin']!.length;
    // 101 requests at 1 MiB; the first reads of a file come before readahead opens up.
    expect(reads).toBeGreaterThanOrEqual(Math.ceil(bytes / MiB));
    expect(reads).toBeLessThan(bytes / (512 * 1024));
    // A stream's many prefetches listen to its handle's signal at once: no false leak warning.
    expect(m.output()).not.toMatch(/MaxListenersExceededWarning/);
    await m.stop();
  });

  it('serves reads at random offsets byte-exactly', async () => {
    const big = files['big/hundred.bin']!;
    const offsets = Array.from({ length: 200 }, (_, i) => ({ at: Math.floor(((i * 7919 + 13) / 200 / 7919) * big.length) % big.length, len: 1 + ((i * 104729) % (300 * 1024)) }));
    offsets.push({ at: big.length - 10, len: 100 }, { at: BLOCK - 5, len: 10 }, { at: 3 * BLOCK - 1, len: 2 * BLOCK + 2 });
    const script = `
      const fs = require('fs'); const crypto = require('crypto');
      const fd = fs.openSync(process.argv[1], 'r'); const h = crypto.createHash('sha256');
      for (const { at, len } of JSON.parse(process.argv[2])) { const b = Buffer.alloc(len); const n = fs.readSync(fd, b, 0, len, at); h.update(b.subarray(0, n)); }
      console.log(h.digest('hex'));`;
    const want = createHash('sha256');
    for (const { at, len } of offsets) want.update(big.subarray(at, at + len));
    const r = await runCommand(process.execPath, ['-e', script, path.join(mnt.mountpoint, 'big/hundred.bin'), JSON.stringify(offsets)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(want.digest('hex'));
  });
});

describe('reading /dev/fuse', () => {
  it('polls the device on the event loop by default, and reads it through the thread pool when CACHEFS_FUSE_DEVICE_READ=pool, byte-exact either way', async () => {
    expect(mnt.output().match(/"deviceRead":"\w+"/)?.[0]).toBe('"deviceRead":"poll"');
    const pooled = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env: { ...env(), CACHEFS_FUSE_DEVICE_READ: 'pool' } });
    try {
      // The serving process's log reaches us through its supervisor: it may come after the mount answers.
      await waitFor(async () => /"deviceRead":"pool".*reading \/dev\/fuse/.test(pooled.output()), { timeoutMs: 10_000 });
      expect(await sha256Of(path.join(pooled.mountpoint, 'big/hundred.bin'))).toBe(sha(files['big/hundred.bin']!));
      expect(await sha256Of(path.join(pooled.mountpoint, 'sizes/block-plus-1'))).toBe(sha(files['sizes/block-plus-1']!));
    } finally {
      await pooled.stop();
    }
    expect(pooled.process.exitCode).toBe(0);
  });
});

describe('the tree', () => {
  it('shows nested directories, marker directories and names with spaces and unicode', async () => {
    const r = await sh(`cd ${mnt.mountpoint} && ls -1 && ls -1 d1/d2/d3 && ls -1 'with space' && ls -1a emptydir && cat 'with space/ünïcødé 名前.txt'`);
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    for (const want of ['big', 'd1', 'emptydir', 'many', 'sizes', 'with space', 'deep.txt', 'ünïcødé 名前.txt', 'unicode']) expect(lines).toContain(want);
  });

  it('lists a directory of 10,000 entries completely (ListObjectsV2 pagination)', async () => {
    const r = await sh(`ls -1 ${mnt.mountpoint}/many | sort | uniq | wc -l; cat ${mnt.mountpoint}/many/f09999`);
    expect(r.stdout.split('\n').slice(0, 2)).toEqual(['10000', '9999']);
  });

  it('reports size, mtime, mode and link count', async () => {
    const r = await sh(`stat -c '%s %a %h %F' ${mnt.mountpoint}/sizes/block-plus-1 ${mnt.mountpoint}/d1`);
    expect(r.stdout.trim().split('\n')).toEqual([`${BLOCK + 1} 444 1 regular file`, '4096 555 2 directory']);
    const mtime = Number((await sh(`stat -c %Y ${mnt.mountpoint}/sizes/one`)).stdout);
    expect(Math.abs(mtime * 1000 - Date.now())).toBeLessThan(10 * 60_000);
  });

  it('lists a directory whose names are looked up one by one, and answers the next lookups from its listing', async () => {
    // A mount of its own: nothing of byname/ is known to it, and nobody lists it.
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env: env() });
    try {
      const order = Array.from({ length: BY_NAME }, (_, i) => i).sort((a, b) => ((a * 7919) % BY_NAME) - ((b * 7919) % BY_NAME));
      const size = async (i: number): Promise<void> => expect((await stat(path.join(m.mountpoint, `byname/s${i}.txt`))).size, `s${i}`).toBe(byNameBody(i).length);
      // One by one, as a loader opens its files: the 16th miss in the directory lists it.
      for (const i of order.slice(0, 20)) await size(i);
      let listed = await m.metrics();
      for (let t = 0; t < 100 && listed.value('cachefs_lookup_listings_total', { outcome: 'whole' }) < 1; t++) {
        await new Promise((r) => setTimeout(r, 100));
        listed = await m.metrics();
      }
      // The other 280 names, and names that are not there, ask the store nothing more.
      for (const i of order.slice(20)) await size(i);
      for (const name of ['s300.txt', 'nothing', 'S1.txt']) await expect(stat(path.join(m.mountpoint, 'byname', name)), name).rejects.toMatchObject({ code: 'ENOENT' });
      const after = await m.metrics();
      for (const op of ['stat', 'list']) expect(after.value('cachefs_ufs_requests_total', { op }) - listed.value('cachefs_ufs_requests_total', { op }), op).toBe(0);
      expect(after.value('cachefs_lookup_listings_total', { outcome: 'whole' })).toBe(1);
      expect(after.value('cachefs_lookup_listings_total')).toBe(1);
      expect(await sha256Of(path.join(m.mountpoint, `byname/s${order[BY_NAME - 1]}.txt`))).toBe(sha(Buffer.from(byNameBody(order[BY_NAME - 1]!))));
    } finally {
      await m.stop();
    }
  });

  it('refuses writes with EROFS and reports missing paths with ENOENT', async () => {
    const m = mnt.mountpoint;
    for (const cmd of [`echo x > ${m}/new.txt`, `echo x >> ${m}/sizes/one`, `mkdir ${m}/newdir`, `rm ${m}/sizes/one`, `mv ${m}/sizes/one ${m}/sizes/two`, `touch ${m}/sizes/one`]) {
      const r = await sh(cmd);
      expect(r.code, cmd).not.toBe(0);
      expect(r.stderr, cmd).toMatch(/Read-only file system/);
    }
    const missing = await sh(`cat ${m}/no/such/file`);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/No such file or directory/);
    expect(await sha256Of(path.join(m, 'sizes/one'))).toBe(sha(files['sizes/one']!));
  });
});

describe('kernel metadata caching', () => {
  // Every lookup or stat that reaches cachefs is one lookup or getattr op in the histogram.
  const getattrs = async (m: TestMount): Promise<number> => {
    const metrics = await m.metrics();
    return metrics.value('cachefs_fuse_op_seconds_count', { op: 'lookup' }) + metrics.value('cachefs_fuse_op_seconds_count', { op: 'getattr' });
  };
  const statTwice = async (m: TestMount): Promise<number> => {
    const r = await sh(`stat -c %s ${m.mountpoint}/block ${m.mountpoint}/one >/dev/null && sleep 0.3 && stat -c %s ${m.mountpoint}/block ${m.mountpoint}/one`);
    expect(r.stdout.trim().split('\n')).toEqual([String(BLOCK), '1']);
    return getattrs(m);
  };

  it('keeps attributes and names in the kernel for --meta-ttl by default', async () => {
    const m = await mountCachefs({ ufs: 's3://data/sizes', args: mountArgs(), env: env() });
    const before = await getattrs(m);
    // The first stat of each file reaches cachefs, the repeat is answered by the kernel.
    expect((await statTwice(m)) - before).toBe(2);
    await m.stop();
  });

  it('asks cachefs on every stat with --attr-timeout 0 --entry-timeout 0', async () => {
    const m = await mountCachefs({ ufs: 's3://data/sizes', args: [...mountArgs(), '--attr-timeout', '0', '--entry-timeout', '0'], env: env() });
    const before = await getattrs(m);
    expect((await statTwice(m)) - before).toBeGreaterThanOrEqual(4);
    await m.stop();
  });
});

describe('the block cache', () => {
  it('serves the second read of a file from the cache (metrics prove it): a file of two blocks, from its whole-object file passed through', async () => {
    const file = path.join(mnt.mountpoint, 'sizes/block-plus-1');
    await dropPageCache(file);
    await sha256Of(file);
    await waitForWholeFile(mnt, BLOCK + 1);
    const before = await mnt.metrics();
    await dropPageCache(file);
    expect(await sha256Of(file)).toBe(sha(files['sizes/block-plus-1']!));
    // dd's open and sha256sum's, both read by the kernel from the cached file.
    expectPassedThrough(await mnt.metrics(), 2, before);
  });

  it('keeps cached blocks across umount and remount', async () => {
    const cacheDir = path.join(work, 'remount-cache');
    const first = await mountCachefs({ ufs: 's3://data/sizes', cacheDir, args: mountArgs(), env: env() });
    expect(await sha256Of(path.join(first.mountpoint, 'block'))).toBe(sha(files['sizes/block']!));
    expect((await first.metrics()).value('cachefs_ufs_read_bytes_total')).toBe(BLOCK);
    await first.stop();
    const second = await mountCachefs({ ufs: 's3://data/sizes', cacheDir, args: mountArgs(), env: env() });
    const block = path.join(second.mountpoint, 'block');
    await dropPageCache(block);
    expect(await sha256Of(block)).toBe(sha(files['sizes/block']!));
    const m = await second.metrics();
    expect(m.value('cachefs_ufs_read_bytes_total')).toBe(0);
    // A file of one cached block is handed to the kernel whole (passthrough): found in the cache kept across the remount.
    expect(m.value('cachefs_fuse_passthrough_opens_total')).toBeGreaterThanOrEqual(1);
    expect(m.value('cachefs_fuse_read_bytes_total')).toBe(0);
    await second.stop();
  });

  it('evicts to stay under its quota, and still reads right', async () => {
    const small = await mountCachefs({ ufs: 's3://data/big', args: [...mountArgs(), '--cache-size', '8MiB'], env: env() });
    expect(await sha256Of(path.join(small.mountpoint, 'hundred.bin'))).toBe(sha(files['big/hundred.bin']!));
    // Readers are answered before their blocks are written: count once every write has ended.
    const m = await settledCacheMetrics(small.metrics);
    const fetched = m.value('cachefs_cache_misses_total');
    const evicted = m.value('cachefs_cache_evictions_total');
    const held = (await blockFiles(small.cacheDir)).length;
    // 101 blocks pass through room for 8. How many are evicted depends on timing: a block whose
    // write finds the room taken by writes still under way is served without being stored (a
    // warning, 'block not cached'). Whatever the timing, every block fetched is on disk, or was
    // evicted, or was refused for want of room: the sum is the blocks fetched (an eviction
    // forgets its blocks at once, so two racing never count one twice). The warnings reach
    // the log a moment after the metrics, so they are waited for (bounded).
    const refusals = (): string[] => small.output().split('\n').filter((l) => l.includes('"msg":"block not cached"'));
    await waitFor(() => evicted + refusals().length + held >= fetched, { timeoutMs: 5000, what: 'the warnings of blocks not cached' }).catch(() => undefined);
    const notStored = refusals();
    expect(fetched).toBeGreaterThanOrEqual(101);
    expect(held).toBeLessThanOrEqual(8);
    expect(evicted + notStored.length + held, `${evicted} evicted, ${notStored.length} not stored, ${held} on disk, of ${fetched} fetched`).toBe(fetched);
    // Refused only for want of room, never because a write failed.
    for (const line of notStored) expect(line).toMatch(/no room for a \d+-byte block/);
    // The first eight blocks always find room. A block fetched after one of their writes has
    // ended finds the room full (used + being written) and evicts before it is stored or refused.
    expect(evicted).toBeGreaterThan(0);
    expect(m.value('cachefs_cache_used_bytes')).toBeLessThanOrEqual(8 * MiB);
    const du = await sh(`du -sb ${small.cacheDir} | cut -f1`);
    expect(Number(du.stdout)).toBeLessThanOrEqual(8 * MiB + 64 * 1024);
    await small.stop();
  });

  it('detects a block file truncated on disk and fetches the block again', async () => {
    const m = await mountCachefs({ ufs: 's3://data/sizes', args: mountArgs(), env: env() });
    const file = path.join(m.mountpoint, 'block-minus-1');
    expect(await sha256Of(file)).toBe(sha(files['sizes/block-minus-1']!));
    // The read was answered from the fetched bytes, maybe before the block file was written.
    await settledCacheMetrics(m.metrics);
    const blocks = await blockFiles(m.cacheDir);
    expect(blocks.length).toBe(1);
    const blockFile = blocks[0]!;
    await truncate(blockFile, 1000);
    await dropPageCache(file);
    expect(await sha256Of(file)).toBe(sha(files['sizes/block-minus-1']!));
    const after = await m.metrics();
    expect(after.value('cachefs_cache_corrupt_blocks_total')).toBe(1);
    expect(after.value('cachefs_ufs_read_bytes_total')).toBe(2 * (BLOCK - 1));
    // The refetched block, too, may have been answered before its file was written.
    await settledCacheMetrics(m.metrics);
    expect((await stat(blockFile)).size).toBe(BLOCK - 1);
    await m.stop();
  });
});
