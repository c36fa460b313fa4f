/**
 * Verified bytes: a byte flipped in a cached block file (same length, so a length check
 * cannot see it) is never served. The embedded cache, a worker's tier read over the
 * network, a worker passing a block file's descriptor and a short-circuit read by path each
 * find the file's checksum wrong before serving (or passing) a byte of it, drop the block
 * (counted), fetch it again, and answer the right bytes; a whole-object file changed after
 * the mount wrote it is checked again before it is passed through, and dropped.
 */
import { createHash, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { open, readdir, rm, mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_FILE, dropPageCache, mountCachefs, sha256Of, stopAllMounts, waitForWholeFile } from '../support/cachefs.js';
import { expectServedBy } from '../support/metrics.js';
import { addMountEntry, startMaster, startWorker, stopAllServices, type ServiceProcess } from '../support/cluster.js';
import { waitFor } from '../support/processes.js';
import { startS3Server, type S3TestServer } from '../support/s3-server.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const BODY = randomBytes(3 * MiB);
const env = (): NodeJS.ProcessEnv => ({ AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' });

let s3: S3TestServer;
let master: ServiceProcess;
let work: string;
let group = 0;
const workers: ServiceProcess[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-flip-'));
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'f.bin', BODY);
  master = await startMaster();
  await addMountEntry(master.address, '/data', 's3://data', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER']);
}, 60_000);

afterEach(async () => {
  await stopAllMounts();
  for (const w of workers.splice(0)) await w.stop();
});

afterAll(async () => {
  await stopAllServices();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** The block files under a cache or tier dir, once `count` of them are written. */
async function blockFiles(dir: string, count: number): Promise<string[]> {
  const list = async (): Promise<string[]> =>
    (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile() && BLOCK_FILE.test(e.name)).map((e) => path.join(e.parentPath, e.name));
  await waitFor(async () => (await list()).length >= count, { timeoutMs: 10_000, what: `${count} block files in ${dir}` });
  return (await list()).sort();
}

/** Flips one byte in the middle of the file, in place: same length, same name. */
async function flipByte(file: string): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    const at = 512 * 1024 + 7;
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

async function worker(args: string[] = []) {
  const cacheGroup = `flip${++group}`;
  const socketDir = await mkdtemp(path.join(work, 'sock-'));
  const w = await startWorker({ master: master.address, cacheGroup, socketDir, blockSize: '1MiB', args });
  workers.push(w);
  return Object.assign(w, { cacheGroup });
}

/** A worker that has cached the file (read once by another mount), with a byte of one of its block files flipped since. */
async function workerWithAFlippedBlock(args: string[] = []) {
  const w = await worker(args);
  const warm = await mountCachefs({ args: clusterArgs(w.cacheGroup, ['--short-circuit', 'off']) });
  expect(await sha256Of(path.join(warm.mountpoint, 'data/f.bin'))).toBe(sha(BODY));
  await warm.stop();
  // A block's file, not the whole-object file the worker may have made of the three (3 MiB).
  const [first] = (await blockFiles(w.tierDir, 3)).filter((f) => statSync(f).size <= MiB);
  await flipByte(first!);
  return w;
}

const clusterArgs = (cacheGroup: string, extra: string[] = []): string[] => ['--master', master.address, '--cache-group', cacheGroup, '--no-sharing', '--block-size', '1MiB', ...extra];

describe('a byte flipped in a cached block file', () => {
  it('is never served by the embedded cache: the block is dropped, counted and fetched again', async () => {
    // Without passthrough: no whole-object file is made of the blocks, the second read reads them (below, with one).
    const m = await mountCachefs({ ufs: 's3://data', args: ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB', '--no-passthrough'], env: env() });
    const file = path.join(m.mountpoint, 'f.bin');
    expect(await sha256Of(file)).toBe(sha(BODY));
    const [first] = await blockFiles(m.cacheDir, 3);
    await flipByte(first!);
    await dropPageCache(file);
    const before = await m.metrics();
    expect(await sha256Of(file)).toBe(sha(BODY));
    const after = await m.metrics();
    expect(after.value('cachefs_cache_corrupt_blocks_total') - before.value('cachefs_cache_corrupt_blocks_total')).toBe(1);
    expect(after.value('cachefs_ufs_read_bytes_total') - before.value('cachefs_ufs_read_bytes_total')).toBe(MiB);
  });

  it('is never passed through from a whole-object file the mount assembled itself: the file is checked again, dropped, counted and made anew', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB'], env: env() });
    const file = path.join(m.mountpoint, 'f.bin');
    expect(await sha256Of(file)).toBe(sha(BODY));
    await waitForWholeFile(m, BODY.length);
    const whole = (await blockFiles(m.cacheDir, 4)).find((f) => path.basename(path.dirname(f)) !== 'tmp' && statSync(f).size === BODY.length)!;
    // Taken as checked when written (never read back): a byte flipped since moves its ctime, and the next open reads it whole.
    await flipByte(whole);
    const before = await m.metrics();
    await dropPageCache(file); // an open: the one that finds the file changed
    // Passed through, the flipped byte (in the page cache since the write) would be read.
    expect(await sha256Of(file)).toBe(sha(BODY));
    const after = await m.metrics();
    expect(after.value('cachefs_cache_corrupt_blocks_total') - before.value('cachefs_cache_corrupt_blocks_total')).toBe(1);
    expect(after.value('cachefs_ufs_read_bytes_total') - before.value('cachefs_ufs_read_bytes_total')).toBe(0);
    // Made anew from the blocks.
    await waitFor(async () => (await m.metrics()).value('cachefs_cache_whole_objects_total') === 2, { timeoutMs: 20_000, what: 'the whole-object file made anew' });
  });

  it('is never served by a worker over the network', async () => {
    const w = await workerWithAFlippedBlock();
    const m = await mountCachefs({ args: clusterArgs(w.cacheGroup, ['--short-circuit', 'off']) });
    expect(await sha256Of(path.join(m.mountpoint, 'data/f.bin'))).toBe(sha(BODY));
    const wm = await w.metrics();
    expect(wm.value('cachefs_cache_corrupt_blocks_total')).toBe(1);
    expect(wm.value('cachefs_worker_served_bytes_total', { path: 'remote' })).toBeGreaterThanOrEqual(2 * BODY.length);
  });

  it('is never passed as a descriptor: the worker checks the file first, drops and refetches it', async () => {
    const w = await workerWithAFlippedBlock();
    const m = await mountCachefs({ args: clusterArgs(w.cacheGroup) });
    expect(await sha256Of(path.join(m.mountpoint, 'data/f.bin'))).toBe(sha(BODY));
    const mm = await m.metrics();
    expect(mm.value('cachefs_cache_corrupt_blocks_total')).toBe(0);
    expectServedBy(mm, 'short_circuit', BODY.length);
    expect(mm.value('cachefs_client_read_bytes_total', { path: 'short_circuit', via: 'path' })).toBe(0);
    expect((await w.metrics()).value('cachefs_cache_corrupt_blocks_total')).toBe(1);
  });

  it('is never served by a short-circuit read by path: the client finds it, the worker drops and refetches it', async () => {
    const w = await workerWithAFlippedBlock(['--pass-descriptors', 'off']);
    // Without passthrough: with it, the worker's whole-object file of f.bin (intact) is passed, and no block read.
    const m = await mountCachefs({ args: clusterArgs(w.cacheGroup, ['--no-passthrough']) });
    expect(await sha256Of(path.join(m.mountpoint, 'data/f.bin'))).toBe(sha(BODY));
    const mm = await m.metrics();
    expect(mm.value('cachefs_cache_corrupt_blocks_total')).toBe(1);
    expect(mm.value('cachefs_client_read_bytes_total', { path: 'short_circuit', via: 'path' })).toBeGreaterThanOrEqual(2 * MiB);
    expect(mm.value('cachefs_client_read_bytes_total', { path: 'domain_socket' })).toBeGreaterThan(0);
    expect((await w.metrics()).value('cachefs_cache_corrupt_blocks_total')).toBe(1);
  });
});
