/**
 * FUSE passthrough end to end: a real mount of a real S3-protocol server, whose opens of
 * objects cached whole in one block file are answered with a backing file the kernel
 * reads itself (no read of them reaches cachefs). Proves the bytes, the version a new
 * open gets, the backing ids given back (or kept for the next open, until the cache drops
 * the file), an evicted block's file still read by the open that has it, `--no-passthrough`,
 * and, in a cluster, a co-located worker's block file and whole-object file passed through.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_FILE, dropPageCache, mountCachefs, sha256Of, stopAllMounts, type TestMount } from './support/cachefs.js';
import { addMountEntry, startMaster, startWorker, stopAllServices, type ServiceProcess } from './support/cluster.js';
import { runCommand, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const KiB = 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const OPENS = 'cachefs_fuse_passthrough_opens_total';
const BACKINGS = 'cachefs_fuse_passthrough_open';
const KEPT = 'cachefs_fuse_passthrough_kept';

const small = randomBytes(300 * KiB);
/** Four blocks of a 1 MiB-block mount, the last one partial. */
const big = randomBytes(3 * 1024 * KiB + 300 * KiB);
const many = Array.from({ length: 4 }, () => randomBytes(64 * KiB));
/** Each one block of a 1 MiB-block mount: four of them overflow a 2 MiB cache. */
const fillers = Array.from({ length: 5 }, () => randomBytes(900 * KiB));

let s3: S3TestServer;
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' };
const mountArgs = (...more: string[]): string[] => ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB', ...more];

async function blockFiles(cacheDir: string): Promise<string[]> {
  const entries = await readdir(cacheDir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && BLOCK_FILE.test(e.name)).map((e) => path.join(e.parentPath, e.name));
}

/** Reads a file once through the mount (so its block gets cached) and waits until `blocks` block files are in the cache. */
async function cache(m: TestMount, file: string, blocks: number): Promise<void> {
  await sha256Of(path.join(m.mountpoint, file));
  await waitFor(async () => (await blockFiles(m.cacheDir)).length >= blocks, { timeoutMs: 10_000, what: `${blocks} block files in the cache` });
}

beforeAll(async () => {
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObjects('data', [
    { key: 'small.bin', body: small },
    { key: 'big.bin', body: big },
    { key: 'changing.bin', body: small },
    ...many.map((body, i) => ({ key: `many/${i}.bin`, body })),
    ...fillers.map((body, i) => ({ key: `fill/${i}.bin`, body })),
  ]);
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await s3?.close();
});

describe('FUSE passthrough', () => {
  it('answers the second open of a small cached object with passthrough: byte-exact, and no read reaches cachefs', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      const file = path.join(m.mountpoint, 'small.bin');
      expect(await sha256Of(file)).toBe(sha(small));
      const first = await m.metrics();
      expect(first.value(OPENS)).toBe(0); // the first open found nothing cached
      await waitFor(async () => (await blockFiles(m.cacheDir)).length === 1, { timeoutMs: 10_000, what: 'the block file' });
      await dropPageCache(file); // an open too: passed through
      expect((await m.metrics()).value(OPENS)).toBe(1);
      expect(await sha256Of(file)).toBe(sha(small));
      const second = await m.metrics();
      expect(second.value(OPENS)).toBe(2);
      expect(second.value('cachefs_fuse_ops_total', { op: 'read' })).toBe(first.value('cachefs_fuse_ops_total', { op: 'read' }));
      expect(second.value(BACKINGS)).toBe(0); // released with the file
      expect(m.output()).toContain('FUSE passthrough on');
    } finally {
      await m.stop();
    }
  });

  it('reads a file the ordinary way while an earlier ordinary open of it is held (the kernel refuses a mix), and passes it through once that goes', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    let holder: ChildProcess | undefined;
    try {
      const file = path.join(m.mountpoint, 'small.bin');
      // The first open finds nothing cached: ordinary; it reads the file (caching its block) and stays open.
      const script = "import sys, hashlib\nf = open(sys.argv[1], 'rb')\nprint(hashlib.sha256(f.read()).hexdigest(), flush=True)\nsys.stdin.readline()";
      holder = spawn('python3', ['-c', script, file], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      holder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await waitFor(() => out.includes('\n'), { timeoutMs: 10_000, what: 'the holder to read small.bin' });
      expect(out.trim()).toBe(sha(small));
      await waitFor(async () => (await blockFiles(m.cacheDir)).length === 1, { timeoutMs: 10_000, what: 'the block file' });
      expect(await sha256Of(file)).toBe(sha(small));
      expect((await m.metrics()).value(OPENS)).toBe(0);
      holder.stdin!.end('done\n');
      await waitFor(async () => (await m.metrics()).value('cachefs_vfs_open_files') === 0, { timeoutMs: 5000, what: 'the holder to close' });
      expect(await sha256Of(file)).toBe(sha(small));
      expect((await m.metrics()).value(OPENS)).toBe(1);
    } finally {
      holder?.kill('SIGKILL');
      await m.stop();
    }
  });

  it('gives a new open the new version of a changed object, read the ordinary way then passed through', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs('--meta-ttl', '1s'), env });
    try {
      const file = path.join(m.mountpoint, 'changing.bin');
      await cache(m, 'changing.bin', 1);
      expect(await sha256Of(file)).toBe(sha(small));
      const before = (await m.metrics()).value(OPENS);
      expect(before).toBe(1);
      const next = randomBytes(200 * KiB);
      await s3.putObjects('data', [{ key: 'changing.bin', body: next }]);
      await new Promise((r) => setTimeout(r, 1500)); // past --meta-ttl, which --attr-timeout follows
      expect(await sha256Of(file)).toBe(sha(next));
      await waitFor(async () => (await blockFiles(m.cacheDir)).length === 2, { timeoutMs: 10_000, what: "the new version's block file" });
      expect(await sha256Of(file)).toBe(sha(next));
      expect((await m.metrics()).value(OPENS)).toBe(before + 1);
    } finally {
      await m.stop();
    }
  });

  it('holds no backing id after thousands of opens, concurrent ones of one file among them', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      for (let i = 0; i < many.length; i++) await cache(m, `many/${i}.bin`, i + 1);
      const loop = (file: string, n: number): Promise<{ code: number | null; stdout: string; stderr: string }> =>
        runCommand(process.execPath, [
          '-e',
          `const fs = require('fs'); const b = Buffer.alloc(64); for (let i = 0; i < ${n}; i++) { const fd = fs.openSync(${JSON.stringify(file)}, 'r'); fs.readSync(fd, b, 0, 64, 1000); fs.closeSync(fd); } console.log(b.toString('hex'));`,
        ], { timeoutMs: 120_000 });
      const files = [0, 0, 1, 2, 3].map((i) => path.join(m.mountpoint, `many/${i}.bin`));
      const results = await Promise.all(files.map((f) => loop(f, 1000)));
      for (const [n, r] of results.entries()) {
        expect(r.code, r.stderr).toBe(0);
        const i = [0, 0, 1, 2, 3][n]!;
        expect(r.stdout.trim()).toBe(many[i]!.subarray(1000, 1064).toString('hex'));
      }
      const after = await m.metrics();
      expect(after.value(OPENS)).toBe(5000);
      expect(after.value(BACKINGS)).toBe(0);
      // One kept for each file's next open (each registered once: the other opens took it).
      expect(after.value(KEPT)).toBe(many.length);
      expect(after.value('cachefs_vfs_open_files')).toBe(0);
    } finally {
      await m.stop();
    }
  });

  it('keeps reading an open file whose block the cache evicts meanwhile', async () => {
    const m = await mountCachefs({ ufs: 's3://data/fill', args: mountArgs('--cache-size', '2MiB'), env });
    let reader: ChildProcess | undefined;
    try {
      await cache(m, '0.bin', 1);
      const [blockFile] = await blockFiles(m.cacheDir);
      // Opens 0.bin, says so, and reads it all only once told to.
      const script = "import sys, hashlib\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\nsys.stdin.readline()\nprint(hashlib.sha256(f.read()).hexdigest(), flush=True)";
      reader = spawn('python3', ['-c', script, path.join(m.mountpoint, '0.bin')], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      reader.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await waitFor(() => out.includes('open'), { timeoutMs: 10_000, what: 'the reader to open 0.bin' });
      expect((await m.metrics()).value(OPENS)).toBe(1);
      await dropPageCache(blockFile!); // its bytes must come from the file itself, not from pages left over
      for (let i = 1; i < fillers.length; i++) expect(await sha256Of(path.join(m.mountpoint, `${i}.bin`))).toBe(sha(fillers[i]!));
      await waitFor(async () => !(await blockFiles(m.cacheDir)).includes(blockFile!), { timeoutMs: 10_000, what: "0.bin's block evicted" });
      expect((await m.metrics()).value('cachefs_cache_evictions_total')).toBeGreaterThan(0);
      reader.stdin!.end('go\n');
      await waitFor(() => out.trim().split('\n').length === 2, { timeoutMs: 10_000, what: "the reader's checksum" });
      expect(out.trim().split('\n')[1]).toBe(sha(fillers[0]!));
      await waitFor(async () => (await m.metrics()).value('cachefs_vfs_open_files') === 0, { timeoutMs: 5000, what: 'the reader to close' });
      const after = await m.metrics();
      expect(after.value(BACKINGS)).toBe(0);
      // Its file evicted, the backing is given back at the release, not kept (it would hold the file's disk space).
      expect(after.value(KEPT)).toBe(0);
    } finally {
      reader?.kill('SIGKILL');
      await m.stop();
    }
  });

  it('keeps a released backing registered for the next open, and gives it back when the cache evicts its file', async () => {
    const m = await mountCachefs({ ufs: 's3://data/fill', args: mountArgs('--cache-size', '2MiB'), env });
    try {
      await cache(m, '0.bin', 1);
      const file = path.join(m.mountpoint, '0.bin');
      expect(await sha256Of(file)).toBe(sha(fillers[0]!));
      expect((await m.metrics()).value(KEPT)).toBe(1);
      await dropPageCache(file);
      expect(await sha256Of(file)).toBe(sha(fillers[0]!));
      const kept = await m.metrics();
      expect(kept.value(OPENS)).toBe(3);
      expect(kept.value(KEPT)).toBe(1);
      for (let i = 1; i < fillers.length; i++) expect(await sha256Of(path.join(m.mountpoint, `${i}.bin`))).toBe(sha(fillers[i]!));
      expect((await m.metrics()).value('cachefs_cache_evictions_total')).toBeGreaterThan(0);
      await waitFor(async () => (await m.metrics()).value(KEPT) === 0, { timeoutMs: 10_000, what: "the kept backing given back with 0.bin's evicted block" });
      expect(await sha256Of(file)).toBe(sha(fillers[0]!));
    } finally {
      await m.stop();
    }
  });

  it('never passes a kept backing through once its file was written to: the next open checks it, drops it and fetches the block again', async () => {
    const m = await mountCachefs({ ufs: 's3://data/many', args: mountArgs(), env });
    try {
      await cache(m, '1.bin', 1);
      const file = path.join(m.mountpoint, '1.bin');
      expect(await sha256Of(file)).toBe(sha(many[1]!));
      expect((await m.metrics()).value(KEPT)).toBe(1);
      const [block] = await blockFiles(m.cacheDir);
      const fh = await open(block!, 'r+');
      try {
        const b = Buffer.alloc(1);
        await fh.read(b, 0, 1, 7);
        b[0] = b[0]! ^ 0xff;
        await fh.write(b, 0, 1, 7);
      } finally {
        await fh.close();
      }
      await dropPageCache(file);
      expect(await sha256Of(file)).toBe(sha(many[1]!));
      expect((await m.metrics()).value('cachefs_cache_corrupt_blocks_total')).toBe(1);
    } finally {
      await m.stop();
    }
  });

  it('passes nothing through with --no-passthrough', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs('--no-passthrough'), env });
    try {
      await cache(m, 'small.bin', 1);
      await dropPageCache(path.join(m.mountpoint, 'small.bin'));
      const before = await m.metrics();
      expect(await sha256Of(path.join(m.mountpoint, 'small.bin'))).toBe(sha(small));
      const after = await m.metrics();
      expect(after.value(OPENS)).toBe(0);
      // The second read went through cachefs, from the cached block.
      expect(after.value('cachefs_client_read_bytes_total', { path: 'cache' }) - before.value('cachefs_client_read_bytes_total', { path: 'cache' })).toBe(small.length);
      expect(m.output()).not.toContain('FUSE passthrough on');
    } finally {
      await m.stop();
    }
  });
});

describe('FUSE passthrough in a cluster', () => {
  let master: ServiceProcess;
  beforeAll(async () => {
    master = await startMaster();
    await addMountEntry(master.address, '/data', 's3://data', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER']);
  }, 60_000);

  afterAll(async () => {
    await stopAllServices();
  });

  /** A worker with a domain socket and a cluster mount of its cache group beside it (1 MiB blocks), both stopped after `use`. */
  async function colocated(group: string, use: (m: TestMount, w: ServiceProcess) => Promise<void>): Promise<void> {
    const socketDir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-pt-sock-'));
    const w = await startWorker({ master: master.address, cacheGroup: group, socketDir, blockSize: '1MiB' });
    const m = await mountCachefs({ args: ['--master', master.address, '--cache-group', group, '--no-sharing', '--block-size', '1MiB'] });
    try {
      await use(m, w);
    } finally {
      await m.stop();
      await w.stop();
      await rm(socketDir, { recursive: true, force: true });
    }
  }

  /** A process that opens `file`, reads it whole when told to on stdin (`read`: at once), prints its sha256 and exits when told again. */
  function reader(file: string, read: 'at once' | 'when told'): { child: ChildProcess; lines: () => string[] } {
    const wait = 'sys.stdin.readline()\n';
    const script = `import sys, hashlib\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\n${read === 'when told' ? wait : ''}print(hashlib.sha256(f.read()).hexdigest(), flush=True)\n${wait}`;
    const child = spawn('python3', ['-c', script, file], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    return { child, lines: () => out.trim().split('\n') };
  }

  it("passes a co-located worker's block file through, pinned on the worker while the file is open", async () => {
    await colocated('pt', async (m, w) => {
      // The worker reads the block through at the first open: that open passes through already.
      const r = reader(path.join(m.mountpoint, 'data/small.bin'), 'at once');
      try {
        await waitFor(() => r.lines().length === 2, { timeoutMs: 20_000, what: 'the reader to read small.bin' });
        expect(r.lines()[1]).toBe(sha(small));
        const open = await m.metrics();
        expect(open.value(OPENS)).toBe(1);
        expect(open.value(BACKINGS)).toBe(1);
        expect(open.value('cachefs_fuse_ops_total', { op: 'read' })).toBe(0);
        expect((await w.metrics()).value('cachefs_pinned_blocks')).toBe(1);
        r.child.stdin!.end('done\n');
        await waitFor(async () => (await w.metrics()).value('cachefs_pinned_blocks') === 0, { timeoutMs: 5000, what: 'the pin to go with the file' });
        expect((await m.metrics()).value(BACKINGS)).toBe(0);
      } finally {
        r.child.kill('SIGKILL');
      }
    });
  });

  it("passes through a co-located worker's whole-object file once the worker holds every block of a larger object, pinned while the file is open", async () => {
    await colocated('ptw', async (m, w) => {
      const file = path.join(m.mountpoint, 'data/big.bin');
      expect(await sha256Of(file)).toBe(sha(big));
      expect((await m.metrics()).value(OPENS)).toBe(0); // read the ordinary way: the worker held nothing yet
      await waitFor(async () => (await w.metrics()).value('cachefs_cache_whole_objects_total') === 1, { timeoutMs: 20_000, what: "the worker's whole-object file" });
      const r = reader(file, 'when told');
      try {
        await waitFor(() => r.lines()[0] === 'open', { timeoutMs: 10_000, what: 'the reader to open big.bin' });
        const open = await m.metrics();
        expect(open.value(OPENS)).toBe(1);
        expect((await w.metrics()).value('cachefs_pinned_blocks')).toBe(1);
        r.child.stdin!.write('go\n');
        await waitFor(() => r.lines().length === 2, { timeoutMs: 10_000, what: "the reader's checksum" });
        expect(r.lines()[1]).toBe(sha(big));
        expect((await m.metrics()).value('cachefs_fuse_ops_total', { op: 'read' })).toBe(open.value('cachefs_fuse_ops_total', { op: 'read' }));
        r.child.stdin!.end('done\n');
        await waitFor(async () => (await w.metrics()).value('cachefs_pinned_blocks') === 0, { timeoutMs: 5000, what: 'the pin to go with the file' });
        const after = await m.metrics();
        expect(after.value(BACKINGS)).toBe(0);
        // Kept registered for the next open (checked every 2 s for its eviction by the worker): it asks the worker for nothing.
        expect(after.value(KEPT)).toBe(1);
        const passed = (await w.metrics()).value('cachefs_worker_passed_descriptors_total');
        expect(passed).toBeGreaterThan(0);
        expect(await sha256Of(file)).toBe(sha(big));
        expect((await m.metrics()).value(OPENS)).toBe(2);
        expect((await w.metrics()).value('cachefs_worker_passed_descriptors_total')).toBe(passed);
      } finally {
        r.child.kill('SIGKILL');
      }
    });
  });
});
