/**
 * Short-circuit by descriptor passing, between real master, worker and mount processes: a
 * mount that cannot see the worker's tier dir (its own mount namespace, a tmpfs over it)
 * reads every byte through the block file descriptors the worker passes, from tier dirs
 * only the worker's user may enter; and 10,000 opens through a mount leave neither the
 * mount nor the worker holding one descriptor more than before them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CACHEFS_BIN, mountCachefs, sh, sha256Of, stopAllMounts } from './support/cachefs.js';
import { addMountEntry, startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { expectServedBy, parseMetrics } from './support/metrics.js';
import { freePort, runCommand, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const F = randomBytes(12 * MiB + 3);
/** Small objects for the opens: each open of one reads it, through a block of its own. */
const SMALL = 100;
const small = (i: number): Buffer => Buffer.alloc(16 * 1024, `object ${i} `);

let s3: S3TestServer;
let master: ServiceProcess;
let work: string;
let group = 0;
const workers: ServiceProcess[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-scfd-'));
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'f.bin', F);
  for (let i = 0; i < SMALL; i++) await s3.putObject('data', `small/${i}`, small(i));
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

async function worker(args: string[] = []) {
  const cacheGroup = `scfd${++group}`;
  const socketDir = await mkdtemp(path.join(work, 'sock-'));
  const w = await startWorker({ master: master.address, cacheGroup, socketDir, blockSize: '1MiB', args });
  workers.push(w);
  return Object.assign(w, { cacheGroup, socketDir });
}

const mountArgs = (cacheGroup: string): string[] => ['--master', master.address, '--cache-group', cacheGroup, '--no-sharing', '--block-size', '1MiB'];

/**
 * Reads data/f.bin through a mount made in a mount namespace of its own where the worker's
 * tier dir is hidden under a tmpfs; answers what the reader printed: the file's sha256 and
 * the mount's cachefs_client_read_bytes_total series.
 */
async function readHidden(w: { tierDir: string; cacheGroup: string }): Promise<string> {
  const mnt = await mkdtemp(path.join(work, 'ns-mnt-'));
  const port = await freePort();
  const script = `
    set -e
    mount -t tmpfs tmpfs ${w.tierDir}
    test -z "$(ls -A ${w.tierDir})"
    ${process.execPath} ${CACHEFS_BIN} mount ${mnt} --foreground --cache-dir ${work}/ns-cache-${port} --metrics-port ${port} --metrics-host 127.0.0.1 ${mountArgs(w.cacheGroup).join(' ')} & pid=$!
    for i in $(seq 300); do mountpoint -q ${mnt} && break; sleep 0.1; done
    sha256sum ${mnt}/data/f.bin
    curl -s http://127.0.0.1:${port}/metrics | grep -E '^cachefs_(client_read_bytes_total|fuse_read_bytes_total)'
    kill $pid; wait $pid || true`;
  const r = await runCommand('unshare', ['-m', '--propagation', 'private', 'bash', '-c', script], { timeoutMs: 60_000 });
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

describe('short-circuit by descriptor passing', () => {
  it('a mount that cannot see the tier dir reads every byte through passed descriptors, from 0700 dirs and 0600 files', async () => {
    const w = await worker();
    const out = await readHidden(w);
    expect(out.split(' ')[0]).toBe(sha(F));
    const mm = parseMetrics(out);
    expectServedBy(mm, 'short_circuit', F.length);
    expect(mm.value('cachefs_client_read_bytes_total', { path: 'short_circuit', via: 'descriptor' }), out).toBe(mm.value('cachefs_fuse_read_bytes_total'));
    const wm = await w.metrics();
    expect(wm.value('cachefs_worker_passed_descriptors_total')).toBeGreaterThanOrEqual(13);
    expect(wm.value('cachefs_worker_served_bytes_total', { path: 'domain_socket' })).toBe(0);
    // Nobody but the worker's user may enter its tier: no client needs the paths.
    expect(statSync(path.join(w.tierDir, 'blocks')).mode & 0o777).toBe(0o700);
    const shard = readdirSync(path.join(w.tierDir, 'blocks'))[0]!;
    expect(statSync(path.join(w.tierDir, 'blocks', shard)).mode & 0o777).toBe(0o700);
    const file = readdirSync(path.join(w.tierDir, 'blocks', shard))[0]!;
    expect(statSync(path.join(w.tierDir, 'blocks', shard, file)).mode & 0o777).toBe(0o600);
  });

  // The stream, where the tier is hidden too, is short-circuit.test.ts's.
  it('falls back to reading by path where the worker passes no descriptors', async () => {
    const w = await worker(['--pass-descriptors', 'off']);
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    expect(await sha256Of(path.join(m.mountpoint, 'data/f.bin'))).toBe(sha(F));
    const mm = await m.metrics();
    expectServedBy(mm, 'short_circuit', F.length);
    expect(mm.value('cachefs_client_read_bytes_total', { path: 'short_circuit', via: 'descriptor' })).toBe(0);
    expect((await w.metrics()).value('cachefs_worker_passed_descriptors_total')).toBe(0);
  });
});

describe('descriptors after 10,000 opens', () => {
  /** The descriptors a process holds: how many, and how many are block files of `tierDir`. */
  const descriptors = (pid: number, tierDir: string): { all: number; blockFiles: number } => {
    const fds = readdirSync(`/proc/${pid}/fd`);
    let blockFiles = 0;
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(path.join(tierDir, 'blocks'))) blockFiles++;
      } catch {
        // closed while we looked
      }
    }
    return { all: fds.length, blockFiles };
  };

  it('leaves the mount and the worker with the descriptors they had before', async () => {
    const w = await worker();
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    const [serving] = (await sh(`pgrep -P ${m.process.pid}`)).stdout.trim().split('\n').map(Number);
    expect(serving, 'the serving process').toBeGreaterThan(0);
    // Each open reads its file with O_DIRECT, so every read reaches the mount (and the worker) rather than the page cache.
    const opens = (rounds: number) => `
import mmap, os, sys
buf = mmap.mmap(-1, 16384)
for r in range(${rounds}):
    for i in range(${SMALL}):
        fd = os.open('${m.mountpoint}/data/small/%d' % i, os.O_RDONLY | os.O_DIRECT)
        n = os.preadv(fd, [buf], 0)
        os.close(fd)
        want = b'object %d ' % i
        if n != 16384 or buf[:len(want)] != want:
            sys.exit('wrong read of small/%d: %d bytes' % (i, n))
print('done')`;
    const run = async (rounds: number) => {
      const r = await runCommand('python3', ['-c', opens(rounds)], { timeoutMs: 300_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe('done');
    };
    const settled = async () => {
      await waitFor(async () => (await w.metrics()).value('cachefs_worker_socket_pins') === 0 && (await m.metrics()).value('cachefs_client_passed_descriptors') === 0, { timeoutMs: 10_000, what: 'pins and passed descriptors to be let go' });
    };
    // One round first: the connection, its descriptor channel, the worker's kept (checked) block file descriptors.
    await run(1);
    await settled();
    const before = { mount: descriptors(serving!, w.tierDir), worker: descriptors(w.child.pid!, w.tierDir) };
    const passedBefore = (await w.metrics()).value('cachefs_worker_passed_descriptors_total');
    await run(100);
    await settled();
    const passed = (await w.metrics()).value('cachefs_worker_passed_descriptors_total') - passedBefore;
    expect(passed, 'descriptors passed for the 10,000 opens').toBeGreaterThanOrEqual(100 * SMALL);
    const after = { mount: descriptors(serving!, w.tierDir), worker: descriptors(w.child.pid!, w.tierDir) };
    expect(after.mount.blockFiles, 'block files the mount holds open').toBe(0);
    // A few descriptors come and go on their own (sockets of metric scrapes, the event loop's); no leak grows by one per open.
    expect(after.mount.all, JSON.stringify({ before, after })).toBeLessThanOrEqual(before.mount.all + 4);
    expect(after.worker.all, JSON.stringify({ before, after })).toBeLessThanOrEqual(before.worker.all + 4);
    expect(after.worker.blockFiles).toBeLessThanOrEqual(before.worker.blockFiles);
    expect((await m.metrics()).value('cachefs_fuse_errors_total')).toBe(0);
  }, 600_000);
});
