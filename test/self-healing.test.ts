/**
 * Self-healing of a mount (issues 7 and 28), end to end with real processes and real mount
 * namespaces: the serving process is killed with SIGKILL by PID under readers that
 * loop over stat + read — in the supervisor's own namespace, in mount namespaces of
 * their own (`unshare -m --propagation slave`, standing in for application
 * containers), and through binds (a kubelet-style bind made beside the mount, a
 * container runtime's bind made inside the consumer's namespace, a bind of the
 * mount point itself). The supervisor keeps the kernel connection (issue 28), so each
 * reader's accesses wait through the recovery window and go on with correct bytes,
 * without being restarted (test/keep-connection.test.ts has the held descriptors and
 * the remount fallback); the supervisor counts the recoveries, backs off on crash
 * loops, and leaves nothing behind when stopped.
 *
 * The mount points live in a directory that is a shared mount (as a Bidirectional
 * hostPath is in Kubernetes): propagation into consumers' namespaces needs that.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { promisify } from 'node:util';
import { READY_ENV } from '../src/cli/daemon.js';
import { servingEnv, servingNodeFlags } from '../src/cli/mount.js';
import { MountAnchor } from '../src/heal/mount-anchor.js';
import { controlDirFor } from '../src/worker/control-socket.js';
import { cachefs, killServing, mountCachefs, servingPidOf, stopAllMounts, type TestMount } from './support/cachefs.js';
import { scrapeMetrics } from './support/metrics.js';
import { freePort, isAlive, isMounted, mountPoints, waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const DATA = randomBytes(3 * MiB + 777);
const DEEP = randomBytes(200 * 1024);
/** The target of issue 7, from SIGKILL to the first good read. */
const RECOVERY_TARGET_MS = 3000;
/**
 * The remount fallback (the connection could not be kept): a cold serving process, the
 * standby being bound to the old connection, and then the bind repairs; 3.2-3.4 s in CI runs
 * of four readers in three mount namespaces on two cores.
 */
const REMOUNT_TARGET_MS = 5000;

const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '' };

let s3: S3TestServer;
let work: string;
/** A shared mount: mounts made beneath it propagate into slave namespaces. */
let shared: string;
let readerScript: string;
let serial = 0;
const readers = new Set<Reader>();
/** Bind targets made by a test, unmounted (every layer) after it. */
const binds = new Set<string>();
const mountpointsUsed = new Set<string>();
/** Runs a command without a shell, writing nothing to its stdin (which a command failing at once could race). */
const run = promisify(execFile);

/**
 * The consumer: every INTERVAL ms, stat and read FILE with fresh opens and print a
 * JSON line — {t, ok} or {t, err}; `bad` if bytes were wrong. Also reads one byte
 * through a descriptor opened at start (`held`), which may break with the crash.
 */
const READER = `
const fs = require('fs'); const crypto = require('crypto');
const [file, want, interval] = process.argv.slice(2);
let held; try { held = fs.openSync(file, 'r'); } catch {}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
function tick() {
  const t = Date.now(); const s = { t };
  // done: an access waits in the kernel while no serving process answers, so the end of a read is what tells the recovery.
  try {
    fs.statSync(file);
    const got = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    if (got === want) s.ok = true; else s.bad = true;
  } catch (e) { s.err = e.code || String(e.message); }
  s.done = Date.now();
  if (held !== undefined) { try { fs.readSync(held, Buffer.alloc(1), 0, 1, 0); s.held = 'ok'; } catch (e) { s.held = e.code || 'error'; } }
  out(s); setTimeout(tick, Number(interval));
}
tick();
`;

interface Sample {
  t: number;
  /** When the stat and read ended. */
  done: number;
  ok?: boolean;
  bad?: boolean;
  err?: string;
  held?: string;
}

interface Reader {
  readonly pid: number;
  samples(): Sample[];
  /** What the reader (or the namespace setup before it) wrote to stderr. */
  stderr(): string;
  stop(): Promise<void>;
}

/** Starts a consumer reading `file`; with `namespace`, in a new mount namespace after running `setup` there. */
function startReader(file: string, want: string, options: { namespace?: 'slave' | 'private'; setup?: string } = {}): Reader {
  const args = [readerScript, file, want, '50'];
  let child: ChildProcess;
  if (options.namespace) {
    const script = `${options.setup ?? 'true'} && exec ${JSON.stringify(process.execPath)} ${args.map((a) => JSON.stringify(a)).join(' ')}`;
    child = spawn('unshare', ['-m', '--propagation', options.namespace, 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  } else {
    child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  }
  let text = '';
  let errors = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  const reader: Reader = {
    pid: child.pid!,
    samples: () => completeLines(text).map((l) => JSON.parse(l) as Sample),
    stderr: () => errors,
    stop: async () => {
      readers.delete(reader);
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      process.kill(child.pid!, 'SIGKILL');
      await exited;
    },
  };
  child.once('exit', (code, signal) => (errors += `\nreader exited with ${code ?? signal}`));
  readers.add(reader);
  return reader;
}

/** Waits until `reader` has read correct bytes at or after `since`; resolves to that sample. */
async function goodReadAfter(reader: Reader, since: number, timeoutMs = 15_000): Promise<Sample> {
  let found: Sample | undefined;
  await waitFor(
    () => {
      found = reader.samples().find((s) => s.t >= since && s.ok);
      return found !== undefined;
    },
    { timeoutMs, intervalMs: 20, what: `a good read through the mount by reader ${reader.pid} (${reader.stderr().trim()})` },
  );
  return found!;
}

/** A fresh mount point in the shared directory, mounted through a supervisor (`--foreground`). */
async function mountShared(args: string[] = []): Promise<TestMount> {
  const mountpoint = path.join(shared, `mnt-${++serial}`);
  await mkdir(mountpoint);
  mountpointsUsed.add(mountpoint);
  return mountCachefs({ ufs: 's3://heal', mountpoint, args: ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB', ...args], env });
}

/** Asserts what a reader saw around a crash at `killedAt`: only errors until the first good read, then only good reads; the time to the end of that read. */
function recoveryWindow(reader: Reader, killedAt: number, recovered: Sample): number {
  const after = reader.samples().filter((s) => s.t >= killedAt);
  expect(after.filter((s) => s.bad), 'wrong bytes were read').toEqual([]);
  const later = after.filter((s) => s.t > recovered.t);
  expect(later.filter((s) => !s.ok), 'errors after the recovery').toEqual([]);
  return recovered.done - killedAt;
}

function supervisorLog(mount: TestMount): Array<Record<string, unknown>> {
  return completeLines(mount.output())
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.role === 'supervisor');
}

/** The JSON lines of a stream so far, without a line still being written. */
function completeLines(text: string): string[] {
  return text
    .slice(0, text.lastIndexOf('\n') + 1)
    .split('\n')
    .filter((l) => l.startsWith('{'));
}

async function bind(source: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  binds.add(target);
  await run('mount', ['--bind', source, target]);
}

/** sha256 of a file read by a child process (the test process never touches a mount itself). */
async function sha256Of(file: string): Promise<string> {
  return (await run('sha256sum', [file])).stdout.split(' ')[0]!;
}

async function unmountAllLayers(target: string): Promise<void> {
  for (let i = 0; i < 20 && (await isMounted(target)); i++) await run('umount', ['-l', target]);
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-heal-'));
  shared = path.join(work, 'shared');
  await mkdir(shared);
  await run('mount', ['--bind', shared, shared]);
  await run('mount', ['--make-shared', shared]);
  readerScript = path.join(work, 'reader.cjs');
  await writeFile(readerScript, READER);
  s3 = await startS3Server({ buckets: ['heal'] });
  await s3.putObject('heal', 'data.bin', DATA);
  await s3.putObject('heal', 'sub/dir/deep.bin', DEEP);
}, 120_000);

afterEach(async () => {
  for (const r of [...readers]) await r.stop();
  await stopAllMounts();
  for (const target of binds) await unmountAllLayers(target);
  binds.clear();
});

afterAll(async () => {
  for (const r of [...readers]) await r.stop();
  await stopAllMounts();
  // Anchors of supervisors that a failed test may have left behind.
  for (const m of mountpointsUsed) await unmountAllLayers(MountAnchor.dirFor(m));
  if (shared) await unmountAllLayers(shared);
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('a killed serving process is replaced', () => {
  it('a reader sees errors only during the recovery window, then correct bytes; the recovery counter is 1', async () => {
    const mnt = await mountShared();
    const file = path.join(mnt.mountpoint, 'data.bin');
    const reader = startReader(file, sha(DATA));
    await goodReadAfter(reader, 0);
    const killed = await killServing(mnt);
    const recovered = await goodReadAfter(reader, killed.gone);
    const window = recoveryWindow(reader, killed.at, recovered);
    expect(window).toBeLessThan(RECOVERY_TARGET_MS);
    // The failed reads of the window (a read begun after the kill may still have been answered,
    // right, by the process before it was gone; wrong bytes are refused above).
    const during = reader.samples().filter((s) => s.t >= killed.at && s.t < recovered.t && !s.ok);
    // ECONNABORTED: a read that was with the kernel as the connection died.
    for (const s of during) expect(['ENOTCONN', 'ECONNABORTED', 'ENOENT', 'EIO']).toContain(s.err);
    // A descriptor opened before the crash may keep failing; new opens succeed (checked above).
    const heldAfter = reader.samples().filter((s) => s.t > recovered.t).map((s) => s.held);
    for (const h of heldAfter) expect(['ok', 'ENOTCONN', 'ECONNABORTED', 'EIO']).toContain(h);
    const metrics = await mnt.metrics();
    expect(metrics.value('cachefs_mount_recoveries_total')).toBe(1);
    expect(metrics.value('cachefs_mount_serving_up')).toBe(1);
    expect(await servingPidOf(mnt.process.pid!)).not.toBe(killed.pid);
    expect(isAlive(mnt.process.pid!)).toBe(true);
  });

  it('consumers in mount namespaces of their own read on, a private namespace too: the kernel connection is kept', async () => {
    const mnt = await mountShared();
    const file = path.join(mnt.mountpoint, 'data.bin');
    const slave = startReader(file, sha(DATA), { namespace: 'slave' });
    const isolated = startReader(file, sha(DATA), { namespace: 'private' });
    await goodReadAfter(slave, 0);
    await goodReadAfter(isolated, 0);
    const killed = await killServing(mnt);
    const recovered = await goodReadAfter(slave, killed.gone);
    expect(recoveryWindow(slave, killed.at, recovered)).toBeLessThan(RECOVERY_TARGET_MS);
    expect(isAlive(slave.pid)).toBe(true); // the same consumer, never restarted
    // A private namespace receives no propagation; its copy of the mount is of the same connection, which lives on.
    const isolatedRecovered = await goodReadAfter(isolated, killed.gone);
    expect(recoveryWindow(isolated, killed.at, isolatedRecovered)).toBeLessThan(RECOVERY_TARGET_MS);
  });

  it('where the connection is not kept, consumers of binds heal by repair: a kubelet-style bind beside the mount, a runtime bind inside the consumer, a bind of the mount point itself', async () => {
    const mnt = await mountShared();
    const n = serial;
    // kubelet: a bind of a subdirectory, made in the supervisor's namespace.
    const volume = path.join(shared, `pods-${n}`, 'vol');
    await bind(path.join(mnt.mountpoint, 'sub'), volume);
    const deepSha = sha(DEEP);
    // Seen by a consumer through propagation.
    const viaPropagation = startReader(path.join(volume, 'dir/deep.bin'), deepSha, { namespace: 'slave' });
    // A container runtime binds the volume into the container's root, inside the container's namespace.
    const ctr = path.join(shared, `ctr-${n}`);
    const ctrRoot = path.join(shared, `ctr-root-${n}`);
    await mkdir(ctr);
    await mkdir(ctrRoot);
    const runtimeBind = startReader(path.join(ctr, 'dir/deep.bin'), deepSha, { namespace: 'slave', setup: `mount --bind ${volume} ${ctr}` });
    // A hostPath volume that resolves to the mount point itself.
    const rootBind = startReader(path.join(ctrRoot, 'data.bin'), sha(DATA), { namespace: 'slave', setup: `mount --bind ${mnt.mountpoint} ${ctrRoot}` });
    // And the kubelet bind read in the supervisor's namespace.
    const host = startReader(path.join(volume, 'dir/deep.bin'), deepSha);
    const all = [viaPropagation, runtimeBind, rootBind, host];
    for (const r of all) await goodReadAfter(r, 0);

    // Without what INIT settled, the replacement cannot take the connection over: the supervisor mounts anew.
    const initFile = path.join(controlDirFor(mnt.mountpoint), 'fuse-init.json');
    await waitFor(() => existsSync(initFile), { timeoutMs: 5000, what: 'INIT to be answered' });
    await rm(initFile);
    const killed = await killServing(mnt);
    for (const r of all) {
      const recovered = await goodReadAfter(r, killed.gone);
      expect(recoveryWindow(r, killed.at, recovered)).toBeLessThan(REMOUNT_TARGET_MS);
      expect(isAlive(r.pid)).toBe(true);
    }
    const metrics = await mnt.metrics();
    expect(metrics.value('cachefs_mount_recoveries_total')).toBe(1);
    expect(metrics.value('cachefs_mount_bind_repairs_total', { outcome: 'repaired' })).toBeGreaterThanOrEqual(1);
    expect(metrics.value('cachefs_mount_bind_repairs_total', { outcome: 'failed' })).toBe(0);
  });
});

describe('crash loops and stopping', () => {
  it('five kills in a row back off exponentially and still recover', async () => {
    const mnt = await mountShared();
    const reader = startReader(path.join(mnt.mountpoint, 'data.bin'), sha(DATA));
    await goodReadAfter(reader, 0);
    const windows: number[] = [];
    for (let i = 0; i < 5; i++) {
      const killed = await killServing(mnt);
      const recovered = await goodReadAfter(reader, killed.gone, 30_000);
      windows.push(recoveryWindow(reader, killed.at, recovered));
    }
    const delays = supervisorLog(mnt).filter((l) => l.msg === 'restarting the serving process').map((l) => l.delayMs);
    expect(delays).toEqual([0, 500, 1000, 2000, 4000]);
    expect(windows[0]).toBeLessThan(RECOVERY_TARGET_MS);
    expect(windows[4]).toBeGreaterThanOrEqual(4000);
    expect((await mnt.metrics()).value('cachefs_mount_recoveries_total')).toBe(5);
  });

  it('SIGTERM to the supervisor after a recovery leaves no mount, no anchor and no process behind', async () => {
    const mnt = await mountShared();
    const volume = path.join(shared, `pods-${serial}`, 'vol');
    await bind(mnt.mountpoint, volume);
    const reader = startReader(path.join(mnt.mountpoint, 'data.bin'), sha(DATA));
    await goodReadAfter(reader, 0);
    const killed = await killServing(mnt);
    await goodReadAfter(reader, killed.gone);
    await reader.stop();
    const supervisor = mnt.process.pid!;
    const serving = await servingPidOf(supervisor);
    const exited = new Promise((resolve) => mnt.process.once('exit', (code, signal) => resolve({ code, signal })));
    process.kill(supervisor, 'SIGTERM');
    expect(await exited).toEqual({ code: 0, signal: null });
    expect(isAlive(serving)).toBe(false);
    expect(isAlive(killed.pid)).toBe(false);
    const left = (await mountPoints()).filter((m) => m === mnt.mountpoint || m.startsWith(MountAnchor.dirFor(mnt.mountpoint)));
    expect(left).toEqual([]);
  });

  it('a supervisor killed with SIGKILL: the serving process serves on, and clears the anchor when unmounted', async () => {
    const mnt = await mountShared();
    const anchor = path.join(MountAnchor.dirFor(mnt.mountpoint), 'mount');
    await waitFor(() => isMounted(anchor), { timeoutMs: 5000, what: 'the anchor' });
    const serving = await servingPidOf(mnt.process.pid!);
    const exited = new Promise((resolve) => mnt.process.once('exit', resolve));
    process.kill(mnt.process.pid!, 'SIGKILL');
    await exited;
    expect(await sha256Of(path.join(mnt.mountpoint, 'data.bin'))).toBe(sha(DATA));
    const u = await cachefs(['umount', mnt.mountpoint]);
    expect(u.code, u.stderr).toBe(0);
    await waitFor(() => !isAlive(serving), { timeoutMs: 10_000, what: 'the serving process to end' });
    expect(await isMounted(anchor)).toBe(false);
  });

  it('the anchor of a supervisor killed with its serving process is cleared by the next supervisor', async () => {
    const first = await mountShared();
    const anchor = path.join(MountAnchor.dirFor(first.mountpoint), 'mount');
    await waitFor(() => isMounted(anchor), { timeoutMs: 5000, what: 'the anchor' });
    const serving = await servingPidOf(first.process.pid!);
    const exited = new Promise((resolve) => first.process.once('exit', resolve));
    process.kill(first.process.pid!, 'SIGKILL');
    process.kill(serving, 'SIGKILL');
    await exited;
    await unmountAllLayers(first.mountpoint);
    expect(await isMounted(anchor)).toBe(true);
    await mountShared();
    await waitFor(async () => !(await isMounted(anchor)), { timeoutMs: 5000, what: 'the orphaned anchor to be cleared' });
  });

  it('in the background: the pid file names the supervisor, a crash heals, cachefs umount ends both processes', async () => {
    const mountpoint = path.join(shared, `mnt-${++serial}`);
    await mkdir(mountpoint);
    mountpointsUsed.add(mountpoint);
    const pidFile = path.join(work, `bg-${serial}.pid`);
    const metricsPort = await freePort();
    const r = await cachefs(['mount', mountpoint, '--ufs', 's3://heal', '--s3-endpoint', s3.endpoint, '--cache-dir', path.join(work, `bg-cache-${serial}`), '--pid-file', pidFile, '--metrics-port', String(metricsPort), '--metrics-host', '127.0.0.1'], env);
    const supervisor = Number(readFileSync(pidFile, 'utf8'));
    try {
      expect(r.code, r.stderr).toBe(0);
      expect(await isMounted(mountpoint)).toBe(true);
      const serving = await servingPidOf(supervisor);
      const cmdline = (await readFile(`/proc/${supervisor}/cmdline`, 'utf8')).split('\0');
      expect(cmdline).not.toContain('--supervised');
      expect(cmdline).not.toContain('--max-semi-space-size=4');
      // The serving process runs with a small young generation (less RSS, fewer page faults).
      expect((await readFile(`/proc/${serving}/cmdline`, 'utf8')).split('\0')).toContain('--max-semi-space-size=4');
      const reader = startReader(path.join(mountpoint, 'data.bin'), sha(DATA));
      await goodReadAfter(reader, 0);
      const killedAt = Date.now();
      process.kill(serving, 'SIGKILL');
      const recovered = await goodReadAfter(reader, killedAt);
      expect(recoveryWindow(reader, killedAt, recovered)).toBeLessThan(RECOVERY_TARGET_MS);
      await reader.stop();
      const metrics = await scrapeMetrics(`http://127.0.0.1:${metricsPort}/metrics`);
      expect(metrics.value('cachefs_mount_recoveries_total')).toBe(1);
      const replacement = await servingPidOf(supervisor);
      const u = await cachefs(['umount', mountpoint]);
      expect(u.code, u.stderr).toBe(0);
      await waitFor(() => !isAlive(supervisor) && !isAlive(replacement), { timeoutMs: 10_000, what: 'both processes to exit' });
      expect(await isMounted(mountpoint)).toBe(false);
      expect(await isMounted(path.join(MountAnchor.dirFor(mountpoint), 'mount'))).toBe(false);
    } finally {
      if (isAlive(supervisor)) process.kill(supervisor, 'SIGKILL');
      await unmountAllLayers(mountpoint);
    }
  });
});

describe('the serving process\'s node flags', () => {
  it('adds a 4 MiB young generation and a 10% old-generation growth unless the node command line or NODE_OPTIONS set them', () => {
    const growth = '--heap-growing-percent=10';
    expect(servingNodeFlags([])).toEqual(['--max-semi-space-size=4', growth]);
    expect(servingNodeFlags(['--inspect'], '--enable-source-maps')).toEqual(['--max-semi-space-size=4', growth, '--inspect']);
    expect(servingNodeFlags(['--max_semi_space_size=8'])).toEqual([growth, '--max_semi_space_size=8']);
    expect(servingNodeFlags([], '--trace-gc  --max-semi-space-size=16 --heap-growing-percent=50')).toEqual([]);
  });

  it('runs it with two malloc arenas and its thread pool unless the environment sets them, without the supervisor\'s ready pipe', () => {
    const env = servingEnv({ PATH: '/bin', [READY_ENV]: '3' });
    expect([env.PATH, env.MALLOC_ARENA_MAX, env.UV_THREADPOOL_SIZE !== undefined, READY_ENV in env]).toEqual(['/bin', '2', true, false]);
    expect(servingEnv({ MALLOC_ARENA_MAX: '8', UV_THREADPOOL_SIZE: '16' })).toMatchObject({ MALLOC_ARENA_MAX: '8', UV_THREADPOOL_SIZE: '16' });
  });
});

describe('the embedded cache across a crash', () => {
  it('blocks cached before the crash are hits after it, with no object reads', async () => {
    // Without passthrough: with it, the whole-object file made of the blocks is read by the kernel (no hits to count).
    const mnt = await mountShared(['--no-passthrough']);
    const file = path.join(mnt.mountpoint, 'data.bin');
    expect(await sha256Of(file)).toBe(sha(DATA));
    const before = await mnt.metrics();
    expect(before.value('cachefs_cache_misses_total')).toBeGreaterThanOrEqual(4);
    const killed = await killServing(mnt);
    await waitFor(async () => (await mnt.metrics()).value('cachefs_mount_recoveries_total') === 1, { timeoutMs: 10_000, intervalMs: 50, what: 'the recovery' });
    expect(await servingPidOf(mnt.process.pid!)).not.toBe(killed.pid);
    s3.clearRequestLog();
    expect(await sha256Of(file)).toBe(sha(DATA));
    const after = await mnt.metrics(); // the new serving process's counters
    expect(after.value('cachefs_cache_misses_total')).toBe(0);
    expect(after.value('cachefs_cache_hits_total')).toBeGreaterThanOrEqual(4);
    expect(s3.requestLog().filter((q) => q.method === 'GET' && q.key === 'data.bin')).toEqual([]);
  });
});
