/**
 * Large directories and trees through a real mount: a listing is answered as the
 * store's pages arrive (the S3 test server holds back every page after the first),
 * readdirplus gives the kernel the listed attributes (no LOOKUP per entry of
 * `ls -l` or `find`), and the metadata cache stays within --meta-cache-size while a tree
 * larger than it is walked, every stat right, open files unharmed by evictions; so do the
 * node ids the kernel holds (it is asked to drop the entries of the files looked up longest
 * ago).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountCachefs, sh, stopAllMounts } from './support/cachefs.js';
import { waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

/** More than one listing page of the store (1,000 keys). */
const BIG = 1_500;
const LISTED = 300;
const env = (): NodeJS.ProcessEnv => ({ AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' });
/** Object i's bytes: sizes differ, so a size shown for the wrong entry is caught. */
const body = (i: number): string => 'x'.repeat(i % 97);

/** A folder of `count` files f00000... with object i's bytes; answers its path. */
async function makeFolder(folder: string, count: number): Promise<string> {
  await mkdir(folder, { recursive: true });
  await Promise.all(Array.from({ length: count }, (_, i) => writeFile(path.join(folder, `f${String(i).padStart(5, '0')}`), body(i))));
  return folder;
}

let s3: S3TestServer;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-listing-'));
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObjects('data', Array.from({ length: BIG }, (_, i) => ({ key: `big/f${String(i).padStart(5, '0')}`, body: body(i) })), { concurrency: 64 });
  await s3.putObjects('data', Array.from({ length: LISTED }, (_, i) => ({ key: `listed/f${String(i).padStart(4, '0')}`, body: body(i) })), { concurrency: 64 });
}, 300_000);

afterAll(async () => {
  await stopAllMounts();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('listings of an object store', () => {
  it('answers the first readdir of a directory larger than a listing page while the store still holds back its second page', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: ['--s3-endpoint', s3.endpoint], env: env() });
    try {
      s3.stallListings((q) => q.get('prefix') === 'big/' && q.has('continuation-token'));
      // The first entry, read by a process of its own; the listing's later pages never come.
      const first = await sh(`python3 -c 'import os; it = os.scandir("${m.mountpoint}/big"); print(next(it).name)'`, 15_000);
      expect(first.stdout.trim()).toBe('f00000');
      const pageRequests = s3.requestLog().filter((r) => r.key === '' && r.query.get('prefix') === 'big/');
      expect(pageRequests.filter((r) => !r.query.has('continuation-token')).length).toBeGreaterThanOrEqual(1);
      s3.stallListings(undefined);
      const all = await sh(`ls -f ${m.mountpoint}/big | grep -c '^f'`);
      expect(all.stdout.trim()).toBe(String(BIG));
    } finally {
      s3.stallListings(undefined);
      await m.stop();
    }
  }, 120_000);

  const want = Array.from({ length: LISTED }, (_, i) => `${i % 97} f${String(i).padStart(4, '0')}`);
  it.each([
    { tool: 'ls -l', script: (dir: string) => `ls -l --time-style=+ ${dir} | awk 'NR > 1 { print $5, $6 }'` },
    // find reads a directory whole before it stats its entries (gnulib fts).
    { tool: 'find -printf %s', script: (dir: string) => `find ${dir} -type f -printf '%s %f\\n' | sort -k2` },
  ])('gives $tool the listed sizes with readdirplus, with no LOOKUP per entry', async ({ script }) => {
    const m = await mountCachefs({ ufs: 's3://data', args: ['--s3-endpoint', s3.endpoint], env: env() });
    try {
      const before = await m.metrics();
      const r = await sh(script(`${m.mountpoint}/listed`));
      expect(r.stdout.trim().split('\n')).toEqual(want);
      const after = await m.metrics();
      const delta = (op: string): number => after.value('cachefs_fuse_ops_total', { op }) - before.value('cachefs_fuse_ops_total', { op });
      expect(delta('readdirplus')).toBeGreaterThanOrEqual(1);
      // The directory itself may be looked up; its 300 entries are not.
      expect(delta('lookup')).toBeLessThanOrEqual(2);
    } finally {
      await m.stop();
    }
  }, 120_000);
});

describe('listings of a folder', () => {
  let folder: string;
  const sizes = (n: number): string[] => Array.from({ length: n }, (_, i) => `${i % 97} f${String(i).padStart(5, '0')}`);

  beforeAll(async () => {
    folder = await makeFolder(path.join(work, 'folder', 'big'), BIG);
  }, 120_000);

  it('answers ls -f with no stat of a file and every entry by name alone, and find -printf %s with every size, its files stat\'ed at most once each', async () => {
    const m = await mountCachefs({ ufs: `file://${path.dirname(folder)}` });
    try {
      const at0 = await m.metrics();
      const names = await sh(`ls -f ${m.mountpoint}/big | grep -c '^f'`);
      expect(names.stdout.trim()).toBe(String(BIG));
      const at1 = await m.metrics();
      const delta = (a: typeof at0, b: typeof at0, name: string, op: string): number => b.value(name, { op }) - a.value(name, { op });
      // Readdirplus always; files not stat'ed yet go by name alone in a directory nobody walks
      // (a cold folder's inodes are not read for a listing): nothing is stat'ed but the directory looked up.
      expect(delta(at0, at1, 'cachefs_ufs_requests_total', 'stat')).toBeLessThanOrEqual(1);
      expect(delta(at0, at1, 'cachefs_fuse_ops_total', 'readdirplus')).toBeGreaterThanOrEqual(1);
      expect(at1.value('cachefs_fuse_readdirplus_entries_total', { with: 'attributes' })).toBe(0);
      expect(at1.value('cachefs_fuse_readdirplus_entries_total', { with: 'name' })).toBeGreaterThanOrEqual(BIG);
      const r = await sh(`find ${m.mountpoint}/big -type f -printf '%s %f\\n' | sort -k2`);
      expect(r.stdout.trim().split('\n')).toEqual(sizes(BIG));
      const at2 = await m.metrics();
      expect(delta(at0, at2, 'cachefs_ufs_requests_total', 'stat')).toBeLessThanOrEqual(BIG + 1);
    } finally {
      await m.stop();
    }
  }, 120_000);
});

describe('lookups in a directory whose listing has not ended', () => {
  /** More than the listing pages read at the first readdir (one, and two read ahead). */
  const WIDE = 5_000;
  let folder: string;

  beforeAll(async () => {
    folder = await makeFolder(path.join(work, 'wide-folder', 'wide'), WIDE);
  }, 120_000);

  it('answers them from the listing read so far, its files stat\'ed by page, not each asked of the store alone', async () => {
    const m = await mountCachefs({ ufs: `file://${path.dirname(folder)}` });
    try {
      await sh(`stat ${m.mountpoint}/wide > /dev/null`);
      const at0 = await m.metrics();
      // As find does past 100,000 entries: stats files listed so far while the directory is still being read.
      const script = `import os, sys
d = sys.argv[1]
it = os.scandir(d)
names = [next(it).name for _ in range(20)]
print(sum(os.stat(os.path.join(d, n)).st_size == int(n[1:]) % 97 for n in names))`;
      const r = await sh(`python3 -c '${script}' ${m.mountpoint}/wide`);
      expect(r.stdout.trim()).toBe('20');
      const at1 = await m.metrics();
      const lists = at1.value('cachefs_ufs_requests_total', { op: 'list' }) - at0.value('cachefs_ufs_requests_total', { op: 'list' });
      // The listing's own pages (five at most); a lookup asked of the store alone costs one more each (20).
      expect(lists).toBeLessThanOrEqual(WIDE / 1000);
    } finally {
      await m.stop();
    }
  }, 120_000);
});

describe('a tree larger than the metadata budget', () => {
  const DIRS = 20;
  const FILES = 400;
  let tree: string;

  beforeAll(async () => {
    tree = path.join(work, 'tree');
    for (let d = 0; d < DIRS; d++) {
      const dir = path.join(tree, `dir-with-a-longish-name-${String(d).padStart(3, '0')}`);
      await mkdir(dir, { recursive: true });
      await Promise.all(Array.from({ length: FILES }, (_, f) => writeFile(path.join(dir, `file-with-a-longish-name-${String(f).padStart(5, '0')}.bin`), 'y'.repeat((d * FILES + f) % 1013))));
    }
  }, 120_000);

  it('stats every file right through evictions, stays within --meta-cache-size, holds a bounded number of nodes, and keeps an open file readable after its entry is evicted', async () => {
    // Attributes and names are asked of cachefs at every stat: each walk goes through its cache.
    const m = await mountCachefs({ ufs: `file://${tree}`, args: ['--meta-cache-size', '1MiB', '--attr-timeout', '0', '--entry-timeout', '0'] });
    try {
      const truth = await sh(`cd ${tree} && find . -type f -printf '%s %p\\n' | sort`);
      expect(truth.stdout.split('\n').filter(Boolean)).toHaveLength(DIRS * FILES);
      const held = 'dir-with-a-longish-name-000/file-with-a-longish-name-00007.bin';
      // fd 3 stays open on one file while two walks of the whole tree evict its entry.
      const r = await sh(
        `cd ${m.mountpoint} && exec 3< ${held} && ` +
          `find . -type f -printf '%s %p\\n' | sort > ${work}/walk1 && find . -type f -printf '%s %p\\n' | sort > ${work}/walk2 && ` +
          `stat -L -c %s /proc/self/fd/3 && cat <&3`,
      );
      expect(r.code).toBe(0);
      expect(r.stdout.trim().split('\n')).toEqual(['7', 'yyyyyyy']);
      for (const walk of ['walk1', 'walk2']) expect((await sh(`cat ${work}/${walk}`)).stdout).toBe(truth.stdout);
      const metrics = await m.metrics();
      expect(metrics.value('cachefs_meta_cache_bytes')).toBeLessThanOrEqual(1024 * 1024);
      expect(metrics.value('cachefs_meta_cache_bytes')).toBeGreaterThan(256 * 1024);
      // The second walk found the listings of the first evicted, and listed the store again.
      expect(metrics.value('cachefs_listed_entries_total')).toBeGreaterThanOrEqual(2 * DIRS * FILES);
      // Node ids: a quarter of the budget at 300 bytes each is 873; past it by a sixteenth, the
      // kernel is asked to drop the entries of files (not directories: 21 more) looked up longest
      // ago, and it forgets them (the open file's too, once closed).
      expect(metrics.value('cachefs_vfs_nodes_let_go_total')).toBeGreaterThan(DIRS * FILES - 1000);
      await waitFor(async () => (await m.metrics()).value('cachefs_vfs_nodes') <= 1000, { timeoutMs: 10_000, what: 'the kernel to forget the nodes it was asked to drop' });
    } finally {
      await m.stop();
    }
  }, 180_000);
});
