/**
 * A crash of the serving process without ENOTCONN (issue 28), end to end with real
 * processes: the supervisor keeps /dev/fuse, so a serving process killed with SIGKILL
 * is replaced on the same kernel connection. Descriptors and working directories held
 * across the kill go on working, the connection (its device, which names it in
 * /sys/fs/fuse/connections) stays the same, and a read the dead process had taken
 * from the kernel and not answered is sent again (NOTIFY_RESEND) and answered by the
 * replacement. Where the connection cannot be taken over, the supervisor mounts anew.
 * `cachefs mount --upgrade` of a new build on the live mount point hands the connection over the
 * same way (an upgrade), and is refused when the FUSE options would change.
 *
 * Readers hold their files open with O_DIRECT, so that every read goes to the
 * serving process rather than to the page cache.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readMountTable, topMountAt } from '../src/sys/mountinfo.js';
import { controlDirFor } from '../src/worker/control-socket.js';
import { cachefs, killServing, mountCachefs, servingPidOf, stopAllMounts, type TestMount } from './support/cachefs.js';
import { isAlive, runCommand, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const MiB = 1024 * 1024;
const DATA = randomBytes(8 * MiB + 333);
const MID = randomBytes(2 * MiB);
/** Files of one block: passed through once cached, their backings kept registered after the last release. */
const SMALL = Array.from({ length: 5 }, () => randomBytes(64 * 1024));
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '' };
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * The consumer: opens FILE with O_DIRECT and changes into DIR (both in the mount) once,
 * then forever reads CHUNK bytes at an offset that walks through the file (starting at
 * START) and lists its working directory, printing a JSON line per read: {t, off, sha}
 * or {t, err}, and {t, ls} or {t, lsErr}.
 */
const READER = `
const fs = require('fs'); const crypto = require('crypto');
const [file, dir, chunk, start, size, interval] = process.argv.slice(2).map((a, i) => (i < 2 ? a : Number(a)));
const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
process.chdir(dir);
const buf = Buffer.alloc(chunk);
let off = start;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
function tick() {
  const t = Date.now();
  try {
    const n = fs.readSync(fd, buf, 0, chunk, off);
    out({ t, off, sha: crypto.createHash('sha256').update(buf.subarray(0, n)).digest('hex') });
  } catch (e) { out({ t, err: e.code || String(e.message) }); }
  try { out({ t: Date.now(), ls: fs.readdirSync('.') }); } catch (e) { out({ t: Date.now(), lsErr: e.code || String(e.message) }); }
  off = (off + chunk) % size;
  setTimeout(tick, interval);
}
tick();
`;

interface Sample {
  t: number;
  off?: number;
  sha?: string;
  err?: string;
  ls?: string[];
  lsErr?: string;
}

interface Reader {
  readonly pid: number;
  samples(): Sample[];
  stderr(): string;
  stop(): Promise<void>;
}

let s3: S3TestServer;
let work: string;
let readerScript: string;
const readers = new Set<Reader>();

function startReader(file: string, dir: string, options: { chunk?: number; start?: number; intervalMs?: number } = {}): Reader {
  const chunk = options.chunk ?? 256 * 1024;
  const args = [readerScript, file, dir, String(chunk), String(options.start ?? 0), String(DATA.length), String(options.intervalMs ?? 20)];
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  let errors = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const reader: Reader = {
    pid: child.pid!,
    samples: () =>
      text
        .slice(0, text.lastIndexOf('\n') + 1)
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Sample),
    stderr: () => errors,
    stop: async () => {
      readers.delete(reader);
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
      await exited;
    },
  };
  readers.add(reader);
  return reader;
}

/** The reads of a reader, checked against DATA: wrong bytes are never acceptable. */
function reads(reader: Reader): Sample[] {
  const all = reader.samples().filter((s) => s.sha !== undefined || s.err !== undefined);
  const wrong = all.filter((s) => s.sha !== undefined && s.sha !== sha(DATA.subarray(s.off!, s.off! + 256 * 1024)));
  expect(wrong, `wrong bytes read by reader ${reader.pid}`).toEqual([]);
  return all;
}

/** Waits for a correct read (from the held descriptor) by `reader` at or after `since`. */
async function goodReadAfter(reader: Reader, since: number, timeoutMs = 20_000): Promise<Sample> {
  let found: Sample | undefined;
  await waitFor(
    () => {
      found = reads(reader).find((s) => s.t >= since && s.sha !== undefined);
      return found !== undefined;
    },
    { timeoutMs, intervalMs: 20, what: `a good read by reader ${reader.pid} (${reader.stderr().trim()})` },
  );
  return found!;
}

/** The kernel connection at the mount point: its device, which is its number in /sys/fs/fuse/connections. */
async function connectionOf(mountpoint: string): Promise<string> {
  const device = topMountAt(await readMountTable(), mountpoint)?.device;
  if (!device) throw new Error(`nothing is mounted at ${mountpoint}`);
  return device;
}

/** The connections /sys/fs/fuse/connections lists: fusectl mounted in a mount namespace of its own, so nothing outside changes. */
async function fuseConnections(): Promise<string[]> {
  const r = await runCommand('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null; ls /sys/fs/fuse/connections']);
  if (r.code !== 0) throw new Error(`cannot list the FUSE connections: ${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l !== '');
}

function supervisorLog(mount: TestMount, msg: string): Array<Record<string, unknown>> {
  return mount
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

function mount(): Promise<TestMount> {
  return mountCachefs({ ufs: 's3://keep', args: ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB'], env });
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-keep-'));
  readerScript = path.join(work, 'reader.cjs');
  await writeFile(readerScript, READER);
  s3 = await startS3Server({ buckets: ['keep'] });
  await s3.putObject('keep', 'data.bin', DATA);
  await s3.putObject('keep', 'sub/dir/mid.bin', MID);
  for (const [i, body] of SMALL.entries()) await s3.putObject('keep', `small/s${i}`, body);
}, 120_000);

afterEach(async () => {
  s3.stallObjectReads(undefined);
  for (const r of [...readers]) await r.stop();
  await stopAllMounts();
});

afterAll(async () => {
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('a serving process killed with SIGKILL is replaced on the same kernel connection', () => {
  it('a descriptor and a working directory held across the kill go on: correct bytes from the same descriptor, ls in the held directory', async () => {
    const mnt = await mount();
    const connection = await connectionOf(mnt.mountpoint);
    const reader = startReader(path.join(mnt.mountpoint, 'data.bin'), path.join(mnt.mountpoint, 'sub/dir'));
    await goodReadAfter(reader, 0);
    const killed = await killServing(mnt);
    const recovered = await goodReadAfter(reader, killed.at);
    const after = reads(reader).filter((s) => s.t >= killed.at);
    expect(after.filter((s) => s.err), 'failed reads after the kill').toEqual([]);
    await waitFor(() => reader.samples().some((s) => s.t > recovered.t && s.ls), { timeoutMs: 5000, what: 'a listing after the recovery' });
    const listings = reader.samples().filter((s) => s.t >= killed.at && (s.ls || s.lsErr));
    expect(listings.filter((s) => s.lsErr), 'failed listings of the held directory').toEqual([]);
    expect(listings.at(-1)!.ls).toEqual(['mid.bin']);
    expect(await connectionOf(mnt.mountpoint)).toBe(connection);
    expect(await fuseConnections()).toContain(connection.split(':')[1]);
    expect(await servingPidOf(mnt.process.pid!, killed.pid)).not.toBe(killed.pid);
    expect(supervisorLog(mnt, 'mount recovered').map((l) => l.keptConnection)).toEqual([true]);
    expect((await mnt.metrics()).value('cachefs_mount_recoveries_total')).toBe(1);
  });

  it('the backing ids the killed process left registered with the kernel are closed by the replacement, and the files pass through again', async () => {
    const mnt = await mount();
    const readSmall = async (): Promise<void> => {
      for (const [i, body] of SMALL.entries()) expect(sha(await readFile(path.join(mnt.mountpoint, `small/s${i}`)))).toBe(sha(body));
    };
    // The first reads cache the blocks; later opens pass through, and each file's backing is kept after its release.
    await waitFor(
      async () => {
        await readSmall();
        return (await mnt.metrics()).value('cachefs_fuse_passthrough_kept') === SMALL.length;
      },
      { timeoutMs: 15_000, what: 'a kept backing per small file' },
    );
    const killed = await killServing(mnt);
    await waitFor(async () => supervisorLog(mnt, 'mount recovered').length === 1, { timeoutMs: 15_000, what: 'the recovery' });
    const after = await mnt.metrics();
    expect(after.value('cachefs_fuse_passthrough_reclaimed_total')).toBe(SMALL.length);
    expect(after.value('cachefs_fuse_passthrough_kept')).toBe(0);
    await readSmall();
    const again = await mnt.metrics();
    expect(again.value('cachefs_fuse_passthrough_opens_total')).toBe(SMALL.length);
    expect(again.value('cachefs_fuse_passthrough_kept')).toBe(SMALL.length);
    expect(await servingPidOf(mnt.process.pid!, killed.pid)).not.toBe(killed.pid);
  });

  it('a read the dead process had taken from the kernel and not answered is sent again and answered by the replacement', async () => {
    const mnt = await mount();
    s3.stallObjectReads((key) => key === 'sub/dir/mid.bin');
    const file = path.join(mnt.mountpoint, 'sub/dir/mid.bin');
    // One read of 1 MiB, in a child: it waits in the kernel for the stalled object.
    const script = `const fs = require('fs'); const b = Buffer.alloc(1 << 20); const fd = fs.openSync(process.argv[1], 'r');
      try { const n = fs.readSync(fd, b, 0, b.length, 0); console.log(require('crypto').createHash('sha256').update(b.subarray(0, n)).digest('hex')); }
      catch (e) { console.log('error ' + e.code); }`;
    const child = spawn(process.execPath, ['-e', script, file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const done = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await waitFor(() => s3.stalledReads().total >= 1, { timeoutMs: 10_000, what: 'the read to reach the store' });
      await killServing(mnt);
      s3.stallObjectReads(undefined);
      await Promise.race([done, new Promise((r) => setTimeout(r, 20_000))]);
      expect(out.trim()).toBe(sha(MID.subarray(0, MiB)));
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await done;
    }
    const resent = mnt
      .output()
      .split('\n')
      .filter((l) => l.includes('serving a request the dead serving process left unanswered'))
      .map((l) => (JSON.parse(l) as { opcode: number }).opcode);
    expect(resent).toContain(15); // READ
  });

  it('five kills in a row under 8 readers: at most one failed read per reader per kill, no wrong bytes, the same connection', async () => {
    const mnt = await mount();
    const connection = await connectionOf(mnt.mountpoint);
    const all = Array.from({ length: 8 }, (_, i) => startReader(path.join(mnt.mountpoint, 'data.bin'), mnt.mountpoint, { start: i * MiB, intervalMs: 5 }));
    for (const r of all) await goodReadAfter(r, 0);
    const kills: number[] = [];
    for (let k = 0; k < 5; k++) {
      const killed = await killServing(mnt);
      kills.push(killed.at);
      for (const r of all) await goodReadAfter(r, killed.at, 30_000);
      expect(await connectionOf(mnt.mountpoint)).toBe(connection);
    }
    const end = Date.now();
    const failedTotal = all.map((r) => reads(r).filter((s) => s.err).length);
    console.log(`five kills under 8 readers: failed reads per reader ${JSON.stringify(failedTotal)}, reads per reader ${JSON.stringify(all.map((r) => reads(r).length))}`);
    for (const r of all) {
      const samples = reads(r);
      for (let k = 0; k < kills.length; k++) {
        const failed = samples.filter((s) => s.err && s.t >= kills[k]! && s.t < (kills[k + 1] ?? end));
        expect(failed.length, `failed reads of reader ${r.pid} after kill ${k + 1}: ${JSON.stringify(failed)}`).toBeLessThanOrEqual(1);
      }
    }
    expect(await fuseConnections()).toContain(connection.split(':')[1]);
    expect((await mnt.metrics()).value('cachefs_mount_recoveries_total')).toBe(5);
  });

  it('falls back to mounting anew (logged) when the connection cannot be taken over, and new opens read on', async () => {
    const mnt = await mount();
    const connection = await connectionOf(mnt.mountpoint);
    // Without what INIT settled, the replacement cannot take the connection over.
    const initFile = path.join(controlDirFor(mnt.mountpoint), 'fuse-init.json');
    await waitFor(() => existsSync(initFile), { timeoutMs: 5000, what: 'INIT to be answered' });
    await rm(initFile);
    await killServing(mnt);
    await waitFor(async () => (await mnt.metrics().catch(() => undefined))?.value('cachefs_mount_recoveries_total') === 1, { timeoutMs: 20_000, intervalMs: 100, what: 'the recovery' });
    expect(supervisorLog(mnt, 'cannot keep the kernel connection: mounting anew')).toHaveLength(1);
    expect(supervisorLog(mnt, 'mount recovered').map((l) => l.keptConnection)).toEqual([false]);
    expect(await connectionOf(mnt.mountpoint)).not.toBe(connection);
    const reader = startReader(path.join(mnt.mountpoint, 'data.bin'), mnt.mountpoint);
    await goodReadAfter(reader, 0);
  });
});

describe('an upgrade: cachefs mount --upgrade on a live mount point hands the kept connection to the new build', () => {
  const mountArgs = (mnt: TestMount, extra: string[]): string[] => ['mount', mnt.mountpoint, '--ufs', 's3://keep', '--s3-endpoint', s3.endpoint, '--block-size', '1MiB', '--foreground', '--upgrade', '--cache-dir', mnt.cacheDir, ...extra];

  it('under readers: no failed read, the same connection, and the new command line serves', async () => {
    const mnt = await mount();
    const connection = await connectionOf(mnt.mountpoint);
    const all = Array.from({ length: 4 }, (_, i) => startReader(path.join(mnt.mountpoint, 'data.bin'), mnt.mountpoint, { start: i * 2 * MiB, intervalMs: 5 }));
    for (const r of all) await goodReadAfter(r, 0);
    const old = await servingPidOf(mnt.process.pid!);
    const r = await cachefs(mountArgs(mnt, ['--readahead', '16MiB']), env);
    expect(r.code, r.stderr).toBe(0);
    const upgradedAt = Date.now();
    const now = await servingPidOf(mnt.process.pid!, old);
    expect((await readFile(`/proc/${now}/cmdline`, 'utf8')).split('\0')).toContain('16MiB');
    await waitFor(() => !isAlive(old), { timeoutMs: 10_000, what: 'the old serving process to end' });
    for (const reader of all) await goodReadAfter(reader, upgradedAt);
    for (const reader of all) expect(reads(reader).filter((x) => x.err), `failed reads of reader ${reader.pid}`).toEqual([]);
    expect(await connectionOf(mnt.mountpoint)).toBe(connection);
    expect(supervisorLog(mnt, 'upgrade: the new build serves the mount')).toHaveLength(1);
    expect((await mnt.metrics()).value('cachefs_mount_recoveries_total')).toBe(0);
  });

  it('is refused when the FUSE options would change, and the mount serves on', async () => {
    const mnt = await mount();
    const serving = await servingPidOf(mnt.process.pid!);
    const r = await cachefs(mountArgs(mnt, ['--allow-other']), env);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/cannot upgrade the mount at .*: the FUSE options would change \(mounted with .*allow_other=false.*, asked for .*allow_other=true/);
    expect(await servingPidOf(mnt.process.pid!)).toBe(serving);
    const reader = startReader(path.join(mnt.mountpoint, 'data.bin'), mnt.mountpoint);
    await goodReadAfter(reader, 0);
  });
});
