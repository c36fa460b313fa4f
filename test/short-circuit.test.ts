/**
 * Short-circuit reads between a mount and a worker on the same node: uuid and
 * hostname locality; block file descriptors passed to a mount that cannot see the
 * tier dir, which only the worker's user may enter; reading by path from a worker
 * that passes none, and the domain socket stream when its block files are not
 * visible either; pins held by open files; crashes on either side; and no
 * descriptor left behind after 10,000 opens.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { blockRef } from '../src/block/block.js';
import { BlockFiles } from '../src/cache/block-files.js';
import { READ_POLICY } from '../src/cache/read-policy.js';
import { humanSize, type ClusterReport } from '../src/cli/report.js';
import { ColocatedWorker } from '../src/client/colocated-worker.js';
import { silentLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { ClusterSecret } from '../src/net/auth.js';
import { NAMESPACE_MOUNT_ID } from '../src/ufs/namespace.js';
import { CACHEFS_BIN, mountCachefs, sh, sha256Of, stopAllMounts } from './support/cachefs.js';
import { addMountEntry, CLUSTER_TOKEN_FILE, startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { freePort, runCommand, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';
import { expectServedBy, parseMetrics } from './support/metrics.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const F = randomBytes(12 * MiB + 3);
const G = randomBytes(24 * MiB);
const H = randomBytes(24 * MiB);
let etagF = '';
/** Small objects for the opens: each open of one reads it, through a block of its own. */
const SMALL = 100;
const small = (i: number): Buffer => Buffer.alloc(16 * 1024, `object ${i} `);

let s3: S3TestServer;
let master: ServiceProcess;
let work: string;
let group = 0;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sc-'));
  s3 = await startS3Server({ buckets: ['data'] });
  etagF = await s3.putObject('data', 'f.bin', F);
  await s3.putObject('data', 'g.bin', G);
  await s3.putObject('data', 'h.bin', H);
  for (let i = 0; i < SMALL; i++) await s3.putObject('data', `small/${i}`, small(i));
  master = await startMaster();
  await addMountEntry(master.address, '/data', 's3://data', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER']);
}, 60_000);

const workers: ServiceProcess[] = [];

afterEach(async () => {
  await stopAllMounts();
  for (const w of workers.splice(0)) await w.stop();
});

afterAll(async () => {
  await stopAllServices();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** A fresh cache group with one worker; its socket dir under the test's work dir unless given. */
async function worker(options: { socketDir?: string; args?: string[]; prefix?: string[]; tierSize?: string } = {}) {
  const cacheGroup = `sc${++group}`;
  const socketDir = options.socketDir ?? (await mkdtemp(path.join(work, 'sock-')));
  const w = await startWorker({ master: master.address, cacheGroup, socketDir, blockSize: '1MiB', args: options.args, prefix: options.prefix, tierSize: options.tierSize });
  workers.push(w);
  return Object.assign(w, { cacheGroup, socketDir });
}

const mountArgs = (cacheGroup: string, extra: string[] = []): string[] => ['--master', master.address, '--cache-group', cacheGroup, '--no-sharing', '--block-size', '1MiB', ...extra];

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

describe('short-circuit locality', () => {
  it('uuid mode: a co-located mount reads every byte by short-circuit, none by the network', async () => {
    const w = await worker();
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    expect(await sha256Of(path.join(m.mountpoint, 'data/f.bin'))).toBe(sha(F));
    const mm = await m.metrics();
    expectServedBy(mm, 'short_circuit', F.length);
    const wm = await w.metrics();
    expect(wm.value('cachefs_worker_served_bytes_total', { path: 'short_circuit' })).toBeGreaterThanOrEqual(F.length);
    expect(wm.value('cachefs_worker_served_bytes_total', { path: 'remote' })).toBe(0);
    // The report shows the bytes the worker handed out by short-circuit as of its last heartbeat
    // (every second here): wait until it has caught up with the worker's own count.
    const reportArgs = [CACHEFS_BIN, 'report', '--master', master.address, '--cache-group', w.cacheGroup];
    let handedOut = -1;
    await waitFor(
      async () => {
        handedOut = (await w.metrics()).value('cachefs_worker_served_bytes_total', { path: 'short_circuit' });
        const json = JSON.parse((await runCommand(process.execPath, [...reportArgs, '--json'])).stdout) as ClusterReport;
        return json.cacheGroups[0]?.workers.find((x) => x.id === w.id)?.shortCircuitBytes === handedOut;
      },
      { timeoutMs: 10_000, what: 'the report to show what the worker handed out by short-circuit' },
    );
    const report = await runCommand(process.execPath, reportArgs);
    expect(report.code, report.stderr).toBe(0);
    const lines = report.stdout.split('\n');
    const header = lines.find((l) => /^\s+WORKER\s/.test(l)) ?? '';
    const row = lines.find((l) => l.trimStart().startsWith(`${w.id} `)) ?? '';
    const column = header.indexOf('SHORT-CIRCUIT');
    expect(column, report.stdout).toBeGreaterThan(0);
    expect(row.slice(column).split(/\s{2,}/)[0], report.stdout).toBe(humanSize(handedOut));
  });

  it('hostname mode reads by short-circuit when hostnames match; --short-circuit off takes the network', async () => {
    const w = await worker({ args: ['--locality', 'hostname', '--hostname', 'node-a'] });
    expect(existsSync(path.join(w.socketDir, 'worker.sock'))).toBe(true);
    const near = await mountCachefs({ args: mountArgs(w.cacheGroup, ['--short-circuit', 'hostname', '--hostname', 'node-a']) });
    expect(await sha256Of(path.join(near.mountpoint, 'data/f.bin'))).toBe(sha(F));
    expectServedBy(await near.metrics(), 'short_circuit', F.length);
    const other = await mountCachefs({ args: mountArgs(w.cacheGroup, ['--short-circuit', 'hostname', '--hostname', 'node-b']) });
    expect(await sha256Of(path.join(other.mountpoint, 'data/f.bin'))).toBe(sha(F));
    expectServedBy(await other.metrics(), 'remote', F.length);
    const off = await mountCachefs({ args: mountArgs(w.cacheGroup, ['--short-circuit', 'off']) });
    expect(await sha256Of(path.join(off.mountpoint, 'data/f.bin'))).toBe(sha(F));
    const om = await off.metrics();
    expectServedBy(om, 'remote', F.length);
  });

  it('uuid mode with the socket dir not shared: no short-circuit', async () => {
    const socketDir = await mkdtemp(path.join(work, 'private-sock-'));
    // The worker gets its own mount namespace with a private tmpfs over its socket dir: its socket
    // file exists only there, as for a worker whose socket dir is not a shared hostPath.
    const w = await worker({ socketDir, prefix: ['unshare', '-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs tmpfs "$0" && exec "$@"', socketDir] });
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    expect(await sha256Of(path.join(m.mountpoint, 'data/f.bin'))).toBe(sha(F));
    const mm = await m.metrics();
    expectServedBy(mm, 'remote', F.length);
  });

  it('block files invisible to the client, from a worker that passes no descriptors: bytes come over the domain socket, correct', async () => {
    const w = await worker({ args: ['--pass-descriptors', 'off'] });
    const out = await readHidden(w);
    expect(out.split(' ')[0]).toBe(sha(F));
    expect(out, out).toContain(`cachefs_client_read_bytes_total{path="domain_socket"} ${F.length}`);
    expect(out).not.toMatch(/path="short_circuit".*\} [1-9]/);
    // Every byte once, but for parts of the blocks a reader was inside when it became a stream
    // (a read the kernel sent ahead of a block's start), which are then sent whole.
    const served = (await w.metrics()).value('cachefs_worker_served_bytes_total', { path: 'domain_socket' });
    expect(served).toBeGreaterThanOrEqual(F.length);
    expect(served).toBeLessThanOrEqual(F.length + 2 * MiB);
  });
});

describe('pins', () => {
  /** A child that opens a file through the mount, reads it whole, and keeps it open until its stdin closes. */
  function holdOpen(file: string) {
    const script = `const fs=require('fs');const fd=fs.openSync(process.argv[1],'r');const b=Buffer.alloc(1<<20);let p=0,n;while((n=fs.readSync(fd,b,0,b.length,p))>0)p+=n;console.log('read '+p);process.stdin.on('end',()=>{fs.closeSync(fd);process.exit(0)});process.stdin.resume();`;
    const { spawn } = require('node:child_process') as typeof import('node:child_process');
    const child = spawn(process.execPath, ['-e', script, file], { stdio: ['pipe', 'pipe', 'inherit'] });
    const ready = new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => d.toString().includes('read') && resolve());
      child.once('exit', (code) => reject(new Error(`the reader holding ${file} exited with ${code} before reading it`)));
      setTimeout(() => reject(new Error(`the reader holding ${file} did not finish reading in 30 s`)), 30_000).unref();
    });
    return { child, ready, release: () => new Promise<void>((resolve) => { child.once('exit', () => resolve()); child.stdin!.end(); }) };
  }
  const blocksOfF = () => Array.from({ length: 13 }, (_, i) => blockRef({ mount: NAMESPACE_MOUNT_ID, key: 'data/f.bin', etag: etagF, size: F.length }, MiB, i).id);
  const present = (tierDir: string, ids: string[]) => ids.filter((id) => readdirSync(path.join(tierDir, 'blocks', id.slice(0, 2)), { withFileTypes: true }).some((e) => e.name.startsWith(`${id}.`))).length;

  it('keeps the blocks of an open file through eviction pressure, and lets them go after close', async () => {
    const w = await worker({ tierSize: '24MiB', args: ['--high', '0.9', '--low', '0.5'] });
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    const holder = holdOpen(path.join(m.mountpoint, 'data/f.bin'));
    await holder.ready;
    expect((await w.metrics()).value('cachefs_pinned_blocks')).toBe(13);
    expect(await sha256Of(path.join(m.mountpoint, 'data/g.bin'))).toBe(sha(G)); // 24 MiB through a 24 MiB tier
    // The worker may still be storing the last blocks it served (in a CI run the scrape came first: 0).
    await waitFor(async () => (await w.metrics()).value('cachefs_cache_evictions_total') > 0, { timeoutMs: 10_000, what: 'the worker to evict' });
    expect(present(w.tierDir, blocksOfF())).toBe(13);
    await holder.release();
    await waitFor(async () => (await w.metrics()).value('cachefs_pinned_blocks') === 0, { timeoutMs: 5000, what: 'pins to be released' });
    expect(await sha256Of(path.join(m.mountpoint, 'data/h.bin'))).toBe(sha(H)); // more pressure, nothing pinned now
    expect(present(w.tierDir, blocksOfF())).toBeLessThan(13);
  });

  it('holds a block pinned ahead of a handle\'s reads until the handle goes, and lets go of a pin that arrives after it went', async () => {
    const w = await worker();
    const [socketName] = await readdir(w.socketDir);
    const near = new ColocatedWorker('w', path.join(w.socketDir, socketName!), new BlockFiles(), READ_POLICY.pinsPerHandle, silentLogger, new Metrics(false), ClusterSecret.fromFile(CLUSTER_TOKEN_FILE));
    try {
      const ref = (i: number) => blockRef({ mount: NAMESPACE_MOUNT_ID, key: 'data/f.bin', etag: etagF, size: F.length }, MiB, i);
      const pinned = async () => (await w.metrics()).value('cachefs_pinned_blocks');
      await near.pinAhead(ref(0), 7);
      expect(await pinned()).toBe(1);
      // The handle's read of the block uses that pin: right bytes, no second pin.
      const dest = Buffer.alloc(MiB);
      expect(await near.read({ ref: ref(0), offset: 0, length: MiB, dest, destOffset: 0, pattern: 'sequential', streaming: true, handle: { id: 7, signal: new AbortController().signal } })).toBe(MiB);
      expect(sha(dest)).toBe(sha(F.subarray(0, MiB)));
      expect(await pinned()).toBe(1);
      // Handle 8 is released while the worker is still answering its pin: nothing else would release it.
      const late = near.pinAhead(ref(1), 8);
      near.release(8);
      await late;
      await waitFor(async () => (await pinned()) === 1, { timeoutMs: 5000, what: 'the late pin to be let go' });
      near.release(7);
      await waitFor(async () => (await pinned()) === 0, { timeoutMs: 5000, what: 'the pins of handle 7 to be released' });
    } finally {
      near.close();
    }
  });

  it('a client killed while holding pins leaves none behind', async () => {
    const w = await worker();
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    const holder = holdOpen(path.join(m.mountpoint, 'data/f.bin'));
    await holder.ready;
    expect((await w.metrics()).value('cachefs_pinned_blocks')).toBe(13);
    // Kill the whole mount: the supervisor first (so it restarts nothing), then the serving process.
    const children = (await sh(`pgrep -P ${m.process.pid}`)).stdout.trim().split('\n').filter(Boolean).map(Number);
    m.process.kill('SIGKILL');
    for (const pid of children) process.kill(pid, 'SIGKILL');
    await waitFor(async () => (await w.metrics()).value('cachefs_pinned_blocks') === 0, { timeoutMs: 5000, what: 'the worker to unpin a dead client' });
    holder.child.kill('SIGKILL');
  });

  it('finishes a short-circuit read whose worker is killed mid-way', async () => {
    const w = await worker();
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup) });
    const reading = sha256Of(path.join(m.mountpoint, 'data/g.bin'));
    await waitFor(async () => (await m.metrics()).value('cachefs_client_read_bytes_total', { path: 'short_circuit' }) > 2 * MiB, { timeoutMs: 10_000, intervalMs: 10 });
    await w.kill();
    expect(await reading).toBe(sha(G));
    const mm = await m.metrics();
    // No read failed, not even one of the kernel's readahead (the reader would not have seen that).
    const warnings = m.output().split('\n').filter((l) => /"level":(40|50)/.test(l));
    expect(mm.value('cachefs_fuse_errors_total', { op: 'read' }), warnings.join('\n')).toBe(0);
    expectServedBy(mm, ['short_circuit', 'ufs'], G.length);
  });
});

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

  // The stream, where the tier is hidden too: 'short-circuit locality' above.
  it('falls back to reading by path where the worker passes no descriptors', async () => {
    const w = await worker({ args: ['--pass-descriptors', 'off'] });
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
    // Without passthrough: every open takes a passed descriptor (a file passed through keeps its backing past its close, test/passthrough).
    const m = await mountCachefs({ args: mountArgs(w.cacheGroup, ['--no-passthrough']) });
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
