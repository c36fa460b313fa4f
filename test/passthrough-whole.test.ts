/**
 * FUSE passthrough of objects larger than one block, end to end on a real mount of a real
 * S3-protocol server: once every block of an object is cached, the mount assembles a
 * whole-object file in its tier and answers opens of the object with it. Proves the bytes
 * (and that no read reached cachefs), the file's eviction while an open has it, a version
 * change, no backing ids or descriptors left over after thousands of opens, and that a
 * restart trusts a whole file only once it has checked it. (A co-located worker's whole-object
 * file: test/passthrough.test.ts, beside its block files.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_FILE, dropPageCache, mountCachefs, servingPidOf, sha256Of, stopAllMounts, type TestMount } from './support/cachefs.js';
import { runCommand, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const OPENS = 'cachefs_fuse_passthrough_opens_total';
const BACKINGS = 'cachefs_fuse_passthrough_open';
const WHOLES = 'cachefs_cache_whole_objects_total';

/** Objects of several 1 MiB blocks, the last one partial. */
const big = randomBytes(3 * MiB + 300 * KiB);
const held = randomBytes(2 * MiB + 100 * KiB);
const changing = randomBytes(2 * MiB + 5 * KiB);
/** One block each: they push `held` out of an 8 MiB cache. */
const fillers = Array.from({ length: 8 }, () => randomBytes(900 * KiB));

let s3: S3TestServer;
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' };
const mountArgs = (...more: string[]): string[] => ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB', ...more];

/** The cache's files of `length` bytes (block files, and whole-object files). */
async function cacheFiles(cacheDir: string, length?: number): Promise<string[]> {
  const entries = await readdir(cacheDir, { recursive: true, withFileTypes: true });
  const files = entries.filter((e) => e.isFile() && BLOCK_FILE.test(e.name) && !e.parentPath.endsWith('/tmp')).map((e) => path.join(e.parentPath, e.name));
  if (length === undefined) return files;
  const sized: string[] = [];
  for (const f of files) if ((await stat(f).catch(() => undefined))?.size === length) sized.push(f);
  return sized;
}

/** Reads the object once through the mount (caching its blocks) and waits for its whole-object file (the `wholes`-th). */
async function cacheWhole(m: TestMount, file: string, bytes: Buffer, wholes = 1): Promise<string> {
  expect(await sha256Of(path.join(m.mountpoint, file))).toBe(sha(bytes));
  await waitFor(async () => (await m.metrics()).value(WHOLES) >= wholes, { timeoutMs: 20_000, what: `the whole-object file of ${file}` });
  const [whole] = await cacheFiles(m.cacheDir, bytes.length);
  expect(whole).toBeDefined();
  return whole!;
}

/** A process that opens `file`, says `open`, and reads it whole (printing its sha256) only once told to on stdin. */
function heldReader(file: string): { child: ChildProcess; out: () => string } {
  const script = "import sys, hashlib\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\nsys.stdin.readline()\nprint(hashlib.sha256(f.read()).hexdigest(), flush=True)";
  const child = spawn('python3', ['-c', script, file], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return { child, out: () => out };
}

/** Descriptors of the serving process open on deleted files (an evicted block kept open would hold its disk space). */
async function deletedFds(pid: number): Promise<number> {
  let n = 0;
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')).endsWith('(deleted)')) n++;
  }
  return n;
}

/** What the serving process's descriptors open on files point to (sockets, pipes and the like left out: the metrics scrape's connection comes and goes). */
async function fileFds(pid: number): Promise<string[]> {
  const targets: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (target.startsWith('/')) targets.push(target);
  }
  return targets;
}

beforeAll(async () => {
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObjects('data', [
    { key: 'big.bin', body: big },
    { key: 'held.bin', body: held },
    { key: 'changing.bin', body: changing },
    ...fillers.map((body, i) => ({ key: `fill/${i}.bin`, body })),
  ]);
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await s3?.close();
});

describe('FUSE passthrough of objects larger than a block', () => {
  it('answers opens of a fully cached multi-block object with its whole-object file: byte-exact, and no read reaches cachefs', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      const file = path.join(m.mountpoint, 'big.bin');
      const whole = await cacheWhole(m, 'big.bin', big);
      // Four block files and the whole file, each counted once.
      expect((await cacheFiles(m.cacheDir)).length).toBe(5);
      expect((await m.metrics()).value('cachefs_cache_used_bytes')).toBe(2 * big.length);
      await dropPageCache(whole); // its bytes come from the disk, not from pages left by the assembly
      await dropPageCache(file);
      const before = await m.metrics();
      expect(await sha256Of(file)).toBe(sha(big));
      const after = await m.metrics();
      expect(after.value(OPENS) - before.value(OPENS)).toBe(1);
      expect(after.value('cachefs_fuse_ops_total', { op: 'read' })).toBe(before.value('cachefs_fuse_ops_total', { op: 'read' }));
      expect(after.value(BACKINGS)).toBe(0);
      // A random read inside the object, through the same backing.
      const fd = await open(file, 'r');
      try {
        const buf = Buffer.alloc(4096);
        await fd.read(buf, 0, buf.length, 2 * MiB + 12345);
        expect(buf.equals(big.subarray(2 * MiB + 12345, 2 * MiB + 12345 + 4096))).toBe(true);
      } finally {
        await fd.close();
      }
    } finally {
      await m.stop();
    }
  });

  it('keeps reading an open file whose whole-object file the cache evicts meanwhile, and keeps no descriptor of it once closed', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs('--cache-size', '8MiB'), env });
    let reader: ChildProcess | undefined;
    try {
      const whole = await cacheWhole(m, 'held.bin', held);
      const r = heldReader(path.join(m.mountpoint, 'held.bin'));
      reader = r.child;
      await waitFor(() => r.out().includes('open'), { timeoutMs: 10_000, what: 'the reader to open held.bin' });
      expect((await m.metrics()).value(OPENS)).toBe(1);
      await dropPageCache(whole);
      for (let i = 0; i < fillers.length; i++) expect(await sha256Of(path.join(m.mountpoint, `fill/${i}.bin`))).toBe(sha(fillers[i]!));
      await waitFor(async () => !(await cacheFiles(m.cacheDir)).includes(whole), { timeoutMs: 10_000, what: 'the whole-object file evicted' });
      reader.stdin!.end('go\n');
      await waitFor(() => r.out().trim().split('\n').length === 2, { timeoutMs: 10_000, what: "the reader's checksum" });
      expect(r.out().trim().split('\n')[1]).toBe(sha(held));
      await waitFor(async () => (await m.metrics()).value('cachefs_vfs_open_files') === 0, { timeoutMs: 5000, what: 'the reader to close' });
      expect((await m.metrics()).value(BACKINGS)).toBe(0);
      expect((await m.metrics()).value('cachefs_fuse_passthrough_kept')).toBe(0); // not kept: its file is gone
      // The quota holds: the evicted file's space is given back once nothing holds it.
      expect((await m.metrics()).value('cachefs_cache_used_bytes')).toBeLessThanOrEqual(8 * MiB);
      await waitFor(async () => (await deletedFds(await servingPidOf(m.process.pid!))) === 0, { timeoutMs: 5000, what: 'no descriptor of a deleted file' });
    } finally {
      reader?.kill('SIGKILL');
      await m.stop();
    }
  });

  it('gives a new open the new version of a changed object, and passes that through once it is whole', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs('--meta-ttl', '1s'), env });
    try {
      const file = path.join(m.mountpoint, 'changing.bin');
      await cacheWhole(m, 'changing.bin', changing);
      expect(await sha256Of(file)).toBe(sha(changing));
      const before = (await m.metrics()).value(OPENS);
      expect(before).toBe(1);
      const next = randomBytes(3 * MiB + 7 * KiB);
      await s3.putObjects('data', [{ key: 'changing.bin', body: next }]);
      await new Promise((r) => setTimeout(r, 1500)); // past --meta-ttl, which --attr-timeout follows
      const whole = await cacheWhole(m, 'changing.bin', next, 2);
      expect((await m.metrics()).value(OPENS)).toBe(before); // the new version was read the ordinary way
      await dropPageCache(whole);
      await dropPageCache(file);
      expect(await sha256Of(file)).toBe(sha(next));
      // The drop's open and the read's: both of the new version's whole file.
      expect((await m.metrics()).value(OPENS)).toBe(before + 2);
    } finally {
      await m.stop();
    }
  });

  it('holds no backing id nor descriptor after thousands of opens of a whole-object file, concurrent ones among them', async () => {
    const m = await mountCachefs({ ufs: 's3://data', args: mountArgs(), env });
    try {
      await cacheWhole(m, 'big.bin', big);
      const pid = await servingPidOf(m.process.pid!);
      const fdsBefore = await fileFds(pid);
      const at = 2 * MiB + 1000;
      const loop = (n: number): Promise<{ code: number | null; stdout: string; stderr: string }> =>
        runCommand(process.execPath, [
          '-e',
          `const fs = require('fs'); const b = Buffer.alloc(64); for (let i = 0; i < ${n}; i++) { const fd = fs.openSync(${JSON.stringify(path.join(m.mountpoint, 'big.bin'))}, 'r'); fs.readSync(fd, b, 0, 64, ${at}); fs.closeSync(fd); } console.log(b.toString('hex'));`,
        ], { timeoutMs: 120_000 });
      const results = await Promise.all([loop(1000), loop(1000), loop(1000)]);
      for (const r of results) {
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout.trim()).toBe(big.subarray(at, at + 64).toString('hex'));
      }
      const after = await m.metrics();
      expect(after.value(OPENS)).toBe(3000);
      expect(after.value(BACKINGS)).toBe(0);
      expect(after.value('cachefs_vfs_open_files')).toBe(0);
      // At most two more, both on the whole-object file: the kept backing's own descriptor, and
      // the one the store's open-file cache keeps after the passthrough open looked the file up.
      const fdsAfter = await fileFds(pid);
      const more = fdsAfter.filter((t) => !fdsBefore.includes(t));
      expect(fdsAfter.length, more.join(', ')).toBeLessThanOrEqual(fdsBefore.length + 2);
      for (const t of more) expect(t.startsWith(m.cacheDir), t).toBe(true);
    } finally {
      await m.stop();
    }
  });

  it('after a restart, drops a partial whole file left in tmp/, and passes a whole file through only once it checked it (a damaged one is dropped)', async () => {
    const cacheDir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-cache-'));
    try {
      let m = await mountCachefs({ ufs: 's3://data', cacheDir, args: mountArgs(), env });
      let whole: string;
      try {
        whole = await cacheWhole(m, 'big.bin', big);
      } finally {
        await m.stop();
      }
      // A crash mid-assembly leaves its file in tmp/ only.
      const tmp = path.join(path.dirname(path.dirname(path.dirname(whole))), 'tmp');
      await mkdir(tmp, { recursive: true });
      await writeFile(path.join(tmp, `${path.basename(whole).split('.')[0]}.999.1`), big.subarray(0, MiB));
      m = await mountCachefs({ ufs: 's3://data', cacheDir, args: mountArgs(), env });
      try {
        expect(await readdir(tmp)).toEqual([]);
        const file = path.join(m.mountpoint, 'big.bin');
        expect(await sha256Of(file)).toBe(sha(big));
        expect((await m.metrics()).value(OPENS)).toBe(1); // checked whole, then passed through
      } finally {
        await m.stop();
      }
      // One byte of the whole file flipped while no mount had it.
      const fh = await open(whole, 'r+');
      try {
        const b = Buffer.alloc(1);
        await fh.read(b, 0, 1, 2 * MiB + 17);
        b[0] = b[0]! ^ 0xff;
        await fh.write(b, 0, 1, 2 * MiB + 17);
      } finally {
        await fh.close();
      }
      m = await mountCachefs({ ufs: 's3://data', cacheDir, args: mountArgs(), env });
      try {
        const file = path.join(m.mountpoint, 'big.bin');
        expect(await sha256Of(file)).toBe(sha(big));
        const after = await m.metrics();
        expect(after.value(OPENS)).toBe(0);
        expect(after.value('cachefs_cache_corrupt_blocks_total')).toBe(1);
        // Assembled again from the blocks, and passed through.
        await waitFor(async () => (await m.metrics()).value(WHOLES) === 1, { timeoutMs: 20_000, what: 'the whole-object file assembled again' });
        await dropPageCache(file);
        expect(await sha256Of(file)).toBe(sha(big));
        expect((await m.metrics()).value(OPENS)).toBe(2);
      } finally {
        await m.stop();
      }
    } finally {
      await rm(cacheDir, { recursive: true, force: true }); // made here: the mounts leave it
    }
  });
});
