/**
 * Directory prefetch of small files end to end: a real mount of a real S3-protocol
 * server, read the way a data loader reads (a directory listed, then its files read whole
 * one after another). Proves that the other small files of the directory are fetched
 * before they are opened (each object fetched once, by the server's request log; the
 * prefetch metrics; the bytes by checksum), that one file read does not start it, that
 * the share of the cache bounds what is fetched ahead, that --no-prefetch-files turns it
 * off and a bad --prefetch-files is refused, and that an object changed since it was
 * listed is read in its new version. In a cluster mount the files go to their owner
 * worker's tier.
 */
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdir } from 'node:fs/promises';
import { BLOCK_FILE, cachefs, mountCachefs, sh, sha256Of, stopAllMounts, type TestMount } from './support/cachefs.js';
import { addMountEntry, startMaster, startWorker, stopAllServices } from './support/cluster.js';
import { waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const KiB = 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const FILES = 'cachefs_dir_prefetch_files_total';
const DIRS = 'cachefs_dir_prefetch_dirs_total';
const HITS = 'cachefs_dir_prefetch_hits_total';

const name = (i: number): string => `f${String(i).padStart(2, '0')}`;
const dataset = (count: number, size: number): Buffer[] => Array.from({ length: count }, () => randomBytes(size));
const train = dataset(12, 64 * KiB);
const single = dataset(8, 64 * KiB);
const off = dataset(8, 64 * KiB);
const capped = dataset(12, 256 * KiB);
const changing = dataset(6, 64 * KiB);
const clustered = dataset(8, 64 * KiB);
const changed = randomBytes(64 * KiB); // the same size: the kernel keeps the attributes the listing gave until --attr-timeout

let s3: S3TestServer;
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' };
const mountArgs = (...more: string[]): string[] => ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB', ...more];

/** GETs of the objects of directory `dir` the store has answered. */
function objectGets(dir: string): number {
  return s3.requestLog().filter((r) => r.method === 'GET' && r.key.startsWith(`${dir}/`)).length;
}

/** Lists the directory (as `find` before a loader does: its listing is cached), then reads files `from` to `to` whole, one after another. */
async function readLikeALoader(m: TestMount, dir: string, files: Buffer[], from: number, to: number): Promise<void> {
  expect((await sh(`find '${path.join(m.mountpoint, dir)}' -type f | wc -l`)).stdout.trim()).toBe(String(files.length));
  for (let i = from; i < to; i++) expect(await sha256Of(path.join(m.mountpoint, dir, name(i)))).toBe(sha(files[i]!));
}

beforeAll(async () => {
  s3 = await startS3Server({ buckets: ['data'] });
  const put = (dir: string, files: Buffer[]) => files.map((body, i) => ({ key: `${dir}/${name(i)}`, body }));
  await s3.putObjects('data', [...put('train', train), ...put('single', single), ...put('off', off), ...put('capped', capped), ...put('changing', changing), ...put('clustered', clustered)]);
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await s3?.close();
});

describe('directory prefetch of small files', () => {
  it("fetches a directory's other small files once three of them were read whole: each object fetched once, the bytes right", async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      await readLikeALoader(m, 'train', train, 0, 3);
      await waitFor(async () => (await m.metrics()).value(FILES) === train.length - 3, { timeoutMs: 15_000, what: 'the other 9 files prefetched' });
      expect(objectGets('train')).toBe(train.length);
      const before = await m.metrics();
      expect(before.value(DIRS)).toBe(1);
      expect(before.value('cachefs_dir_prefetch_bytes_total')).toBe((train.length - 3) * 64 * KiB);
      for (let i = 3; i < train.length; i++) expect(await sha256Of(path.join(m.mountpoint, 'train', name(i)))).toBe(sha(train[i]!));
      expect(objectGets('train')).toBe(train.length); // the loader's reads found them all cached
      expect((await m.metrics()).value(HITS)).toBe(train.length - 3);
    } finally {
      await m.stop();
    }
  });

  it('does not prefetch for one file read, nor fetch anything else of its directory', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      await readLikeALoader(m, 'single', single, 0, 1);
      await sha256Of(path.join(m.mountpoint, 'single', name(0))); // the same file again is still one file
      await sleep(1000);
      const after = await m.metrics();
      expect(after.value(DIRS)).toBe(0);
      expect(after.value(FILES)).toBe(0);
      expect(objectGets('single')).toBe(1);
    } finally {
      await m.stop();
    }
  });

  it("keeps what is fetched ahead within a quarter of the cache, and moves on as the readers open what it fetched", async () => {
    // A 4 MiB cache: 1 MiB ahead, four of these 256 KiB files.
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs('--cache-size', '4MiB'), env });
    try {
      await readLikeALoader(m, 'capped', capped, 0, 3);
      await waitFor(async () => (await m.metrics()).value(FILES) === 4, { timeoutMs: 15_000, what: 'four files prefetched' });
      await sleep(1000);
      expect((await m.metrics()).value(FILES)).toBe(4);
      expect(objectGets('capped')).toBe(3 + 4);
      // The first one fetched (listing order) is opened: room for one more.
      expect(await sha256Of(path.join(m.mountpoint, 'capped', name(3)))).toBe(sha(capped[3]!));
      await waitFor(async () => (await m.metrics()).value(FILES) === 5, { timeoutMs: 15_000, what: 'a fifth file prefetched' });
      await sleep(500);
      const after = await m.metrics();
      expect(after.value(FILES)).toBe(5);
      expect(after.value(HITS)).toBe(1);
      expect(objectGets('capped')).toBe(3 + 5);
    } finally {
      await m.stop();
    }
  });

  it('prefetches nothing with --no-prefetch-files, and refuses a --prefetch-files it cannot honour', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs('--no-prefetch-files'), env });
    try {
      await readLikeALoader(m, 'off', off, 0, 4);
      await sleep(1000);
      expect((await m.metrics()).value(DIRS)).toBe(0);
      expect(objectGets('off')).toBe(4);
    } finally {
      await m.stop();
    }
    const bad = await cachefs(['mount', '/nonexistent-mountpoint', '--ufs', 's3://data', '--prefetch-files', '99', '--foreground']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("invalid --prefetch-files '99': expected a whole number from 0 (off) to 48");
  });

  it('reads the new version of an object that changed after it was listed, not a prefetch of the listed one', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      expect((await sh(`find '${path.join(m.mountpoint, 'changing')}' -type f | wc -l`)).stdout.trim()).toBe('6');
      // Rewritten after the listing was cached: the listing (and the prefetch) still name the old ETag.
      await s3.putObject('data', `changing/${name(5)}`, changed);
      for (let i = 0; i < 3; i++) expect(await sha256Of(path.join(m.mountpoint, 'changing', name(i)))).toBe(sha(changing[i]!));
      await waitFor(() => objectGets('changing') === 6, { timeoutMs: 15_000, what: 'the prefetch to ask for every file' });
      await waitFor(async () => (await m.metrics()).value(FILES) === 2, { timeoutMs: 15_000, what: 'the two unchanged files prefetched' });
      expect(await sha256Of(path.join(m.mountpoint, 'changing', name(5)))).toBe(sha(changed));
      expect(await sha256Of(path.join(m.mountpoint, 'changing', name(4)))).toBe(sha(changing[4]!));
      const after = await m.metrics();
      expect(after.value(FILES)).toBe(2);
      expect(after.value('cachefs_fuse_errors_total')).toBe(0);
    } finally {
      await m.stop();
    }
  });

  it("in a cluster mount, has the files' owner worker fetch them into its tier", async () => {
    const master = await startMaster();
    await addMountEntry(master.address, '/data', 's3://data/clustered', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER', 's3.region=us-east-1']);
    const worker = await startWorker({ master: master.address, blockSize: '1MiB' });
    const m = await mountCachefs({ args: ['--master', master.address, '--cache-group', 'g', '--no-sharing', '--block-size', '1MiB'] });
    const tierBlocks = async (): Promise<number> => (await readdir(worker.tierDir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile() && BLOCK_FILE.test(e.name)).length;
    try {
      await readLikeALoader(m, 'data', clustered, 0, 3);
      await waitFor(async () => (await m.metrics()).value(FILES) === clustered.length - 3, { timeoutMs: 30_000, what: 'the other 5 files prefetched' });
      // The worker answers a read with the block's bytes before its file is in place.
      await waitFor(async () => (await tierBlocks()) === clustered.length, { timeoutMs: 15_000, what: "every file in the worker's tier" });
      expect(objectGets('clustered')).toBe(clustered.length);
      for (let i = 3; i < clustered.length; i++) expect(await sha256Of(path.join(m.mountpoint, 'data', name(i)))).toBe(sha(clustered[i]!));
      expect(objectGets('clustered')).toBe(clustered.length);
      expect((await m.metrics()).value(HITS)).toBe(clustered.length - 3);
    } finally {
      await m.stop();
    }
  });
});
