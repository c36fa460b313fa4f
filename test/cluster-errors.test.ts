/**
 * Bad input and faults around the cluster: each a clear one-line error and a
 * non-zero exit, or — for an unknown cache group — a mount that still works from
 * the UFS with a warning.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, sha256Of, stopAllMounts } from './support/cachefs.js';
import { addMountEntry, startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { freePort, isMounted } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';
import { expectServedBy } from './support/metrics.js';

let s3: S3TestServer;
let master: ServiceProcess;
let work: string;
const data = randomBytes(3 * 1024 * 1024 + 11);

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-cluster-errors-'));
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'x.bin', data);
  master = await startMaster();
  await addMountEntry(master.address, '/data', 's3://data', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER']);
}, 60_000);

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

async function workerFails(args: string[]): Promise<string> {
  const r = await cachefs(['worker', '--master', master.address, '--host', '127.0.0.1', '--port', String(await freePort()), '--state-dir', path.join(work, 'state'), ...args], {}, 30_000);
  expect(r.code, r.stderr).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  return lines[0]!;
}

describe('cachefs worker refuses', () => {
  it('a duplicate worker id held by a live worker', async () => {
    const w = await startWorker({ master: master.address, id: 'dup' });
    const line = await workerFails(['--id', 'dup', '--tier', `SSD:${path.join(work, 'dup2')}:64MiB`]);
    expect(line).toMatch(/^cachefs: .*dup/);
    expect(line).toMatch(/already|taken|registered|in use/i);
    await w.stop();
  });
  it('a tier quota larger than its disk', async () => {
    expect(await workerFails(['--tier', `SSD:${path.join(work, 't1')}:1000TiB`])).toMatch(/^cachefs: tier SSD:.*t1 quota \d+ bytes is larger than its disk/);
  });
  it('overlapping tier dirs', async () => {
    expect(await workerFails(['--tier', `MEM:${path.join(work, 'o')}:64MiB`, '--tier', `SSD:${path.join(work, 'o', 'inner')}:64MiB`])).toMatch(/^cachefs: tier dirs overlap/);
  });
  it('--low at or above --high', async () => {
    expect(await workerFails(['--tier', `SSD:${path.join(work, 't2')}:64MiB`, '--high', '0.7', '--low', '0.8'])).toBe("cachefs: invalid --low '0.8': must be below --high (0.7)");
  });
  it('a tier dir that is not writable', async () => {
    await writeFile(path.join(work, 'plain-file'), 'x');
    expect(await workerFails(['--tier', `SSD:${path.join(work, 'plain-file', 'tier')}:64MiB`])).toMatch(/^cachefs: cache dir '.*plain-file\/tier' is not writable/);
  });
  it('a tier that is not MEDIUM:DIR:SIZE', async () => {
    expect(await workerFails(['--tier', 'FLASH:/tmp/x:1GiB'])).toMatch(/invalid --tier 'FLASH:\/tmp\/x:1GiB': medium 'FLASH' is not MEM, SSD or HDD/);
  });
});

describe('cluster mounts', () => {
  it('with an unknown cache group: reads from the UFS and warns', async () => {
    const m = await mountCachefs({ args: ['--master', master.address, '--cache-group', 'nobody', '--no-sharing'] });
    expect(await sha256Of(path.join(m.mountpoint, 'data/x.bin'))).toBe(createHash('sha256').update(data).digest('hex'));
    expectServedBy(await m.metrics(), 'ufs', data.length);
    expect(m.output()).toMatch(/cache group has no live workers/);
    await m.stop();
  });
  it('with the master unreachable and no cached mount table: a clear error, nothing mounted', async () => {
    const mnt = path.join(work, 'mnt');
    await mkdir(mnt, { recursive: true });
    const r = await cachefs(['mount', mnt, '--master', `127.0.0.1:${await freePort()}`, '--cache-dir', path.join(work, 'fresh-cache'), '--foreground'], {}, 60_000);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^cachefs: cannot get the mount table from the master at 127\.0\.0\.1:\d+ and no cached copy exists/);
    expect(await isMounted(mnt)).toBe(false);
  });
  it('with the master unreachable but a cached mount table: mounts and reads', async () => {
    const cacheDir = path.join(work, 'kept-cache');
    const first = await mountCachefs({ cacheDir, args: ['--master', master.address, '--no-sharing'] });
    await first.stop();
    const port = await freePort();
    const second = await mountCachefs({ cacheDir, args: ['--master', `127.0.0.1:${port}`, '--no-sharing'] });
    // The cached table was fetched under another master address; what matters is that it is used.
    expect(await sha256Of(path.join(second.mountpoint, 'data/x.bin'))).toBe(createHash('sha256').update(data).digest('hex'));
    await second.stop();
  });
});
