/**
 * Runs the real `cachefs` binary (bin/cachefs, built into dist/) for tests: mounts
 * in the foreground as a tracked child process, waits until the mount answers,
 * and stops it by PID and unmounts — also when a test fails. Tests never touch a
 * mount synchronously from the vitest process: shell commands go through
 * `sh()` (an async child process).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { scrapeMetrics, type MetricsSnapshot } from './metrics.js';
import { forceUnmount, freePort, isMounted, runCommand, waitFor, type CommandResult } from './processes.js';

/** A block file's name in a cache or tier dir: `<id>.<checksum>` (src/cache/tier.ts). */
export const BLOCK_FILE = /^[0-9a-f]{40}\.[0-9a-f]{16}$/;

export const CACHEFS_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/cachefs');

/** Runs `cachefs ARGS` to completion. */
export function cachefs(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<CommandResult> {
  return runCommand(process.execPath, [CACHEFS_BIN, ...args], { env: { ...process.env, ...env }, timeoutMs });
}

/** Runs a shell command line (bash -c) as a child process. */
export function sh(script: string, timeoutMs = 120_000): Promise<CommandResult> {
  return runCommand('bash', ['-c', script], { timeoutMs });
}

export interface TestMount {
  readonly mountpoint: string;
  readonly cacheDir: string;
  readonly metricsPort: number;
  readonly process: ChildProcess;
  metrics(): Promise<MetricsSnapshot>;
  /** Stops the serving process (SIGTERM, then SIGKILL) and makes sure nothing stays mounted. */
  stop(): Promise<void>;
  /** Everything the process logged so far. */
  output(): string;
}

export interface MountOptions {
  /** The source; omit for a cluster mount (pass --master in args). */
  ufs?: string;
  /** `--fluid-config FILE` in place of the MOUNTPOINT argument: pass its targetPath as `mountpoint`. */
  fluidConfig?: string;
  mountpoint?: string;
  cacheDir?: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

const live = new Set<TestMount>();

// The safety net for a run cut short (a hook that timed out never reaches its cleanup): when
// the test process exits, whatever it still has mounted is killed by PID and unmounted.
process.once('exit', () => {
  for (const m of live) {
    m.process.kill('SIGKILL');
    spawnSync('fusermount', ['-uz', m.mountpoint], { stdio: 'ignore', timeout: 5000 });
  }
});

/** Mounts with `cachefs mount --foreground`; resolves once the mount point answers. */
export async function mountCachefs(options: MountOptions): Promise<TestMount> {
  const mountpoint = options.mountpoint ?? (await mkdtemp(path.join(os.tmpdir(), 'cachefs-mnt-')));
  const cacheDir = options.cacheDir ?? (await mkdtemp(path.join(os.tmpdir(), 'cachefs-cache-')));
  const metricsPort = await freePort();
  const target = options.fluidConfig ? ['--fluid-config', options.fluidConfig] : [mountpoint];
  const args = [CACHEFS_BIN, 'mount', ...target, ...(options.ufs ? ['--ufs', options.ufs] : []), '--foreground', '--cache-dir', cacheDir, '--metrics-port', String(metricsPort), '--metrics-host', '127.0.0.1', '--log-level', 'debug', ...(options.args ?? [])];
  const child = spawn(process.execPath, args, { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  // Listened for from the start: a process that exits while stop() awaits something else
  // must not leave stop() waiting for an 'exit' event that has already passed.
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const mount: TestMount = {
    mountpoint,
    cacheDir,
    metricsPort,
    process: child,
    metrics: () => scrapeMetrics(`http://127.0.0.1:${metricsPort}/metrics`),
    output: () => out,
    stop: async () => {
      live.delete(mount);
      if (child.exitCode === null && child.signalCode === null) {
        // `cachefs mount --foreground` is a supervisor; its serving process is a child of it.
        const serving = await childrenOf(child.pid!);
        child.kill('SIGTERM');
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          for (const pid of serving) killQuietly(pid);
        }, 10_000);
        await exited;
        clearTimeout(timer);
        for (const pid of serving) killQuietly(pid);
      }
      if (await isMounted(mountpoint)) await forceUnmount(mountpoint);
      // Directories made here are removed; ones the test passed in are the test's.
      if (!options.cacheDir) await rm(cacheDir, { recursive: true, force: true });
      if (!options.mountpoint && !(await isMounted(mountpoint))) await rm(mountpoint, { recursive: true, force: true });
    },
  };
  live.add(mount);
  try {
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`cachefs mount exited with ${child.exitCode}: ${out}`);
      return isMounted(mountpoint);
    }, { timeoutMs: 30_000, intervalMs: 50 });
  } catch (err) {
    await mount.stop();
    throw err;
  }
  return mount;
}

/** Stops every mount still running (for afterAll/afterEach). */
export async function stopAllMounts(): Promise<void> {
  for (const m of [...live]) await m.stop();
}

/**
 * Waits until the mount's cache dir holds a file of `length` bytes under a block file's name:
 * an object's whole-object file, assembled in the background once its last block is cached
 * (cache/whole-objects.ts), after which its opens pass through.
 */
export async function waitForWholeFile(m: TestMount, length: number, timeoutMs = 20_000): Promise<void> {
  const held = async (): Promise<boolean> => {
    for (const e of await readdir(m.cacheDir, { recursive: true, withFileTypes: true })) {
      if (e.isFile() && BLOCK_FILE.test(e.name) && !e.parentPath.endsWith(`${path.sep}tmp`) && (await stat(path.join(e.parentPath, e.name)).catch(() => undefined))?.size === length) return true;
    }
    return false;
  };
  await waitFor(held, { timeoutMs, what: `a whole-object file of ${length} bytes in ${m.cacheDir}` });
}

/**
 * Drops the kernel's cached pages of one file (posix_fadvise DONTNEED, by `dd`), so its
 * next read goes to the filesystem. Only that file: test files run in parallel, and a
 * system-wide drop would also evict pages another test's reader has read ahead but not
 * yet consumed, making the kernel ask that test's mount for them twice.
 */
export async function dropPageCache(file: string): Promise<void> {
  const r = await runCommand('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  if (r.code !== 0) throw new Error(`dropping the cached pages of ${file} failed: ${r.stderr}`);
}

/** sha256 of a file read through a child process (`sha256sum`). */
export async function sha256Of(file: string): Promise<string> {
  // In a child process, with the name as an argument (never through a shell).
  const r = await runCommand('sha256sum', ['--', file], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`sha256sum ${file} failed: ${r.stderr}`);
  return r.stdout.split(' ')[0]!;
}

/**
 * The serving process of a supervisor (other than `not`): its child that holds the journal of
 * the kernel's nodes open. A standby (a child waiting to take over) holds none; nor does any
 * child while the mount is being recovered, so this waits.
 */
export async function servingPidOf(supervisorPid: number, not?: number, timeoutMs = 15_000): Promise<number> {
  let found: number | undefined;
  await waitFor(
    async () => {
      for (const pid of await childrenOf(supervisorPid)) {
        if (pid === not) continue;
        const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
        for (const fd of fds) {
          if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')).endsWith('/kernel-journal')) {
            found = pid;
            return true;
          }
        }
      }
      return false;
    },
    { timeoutMs, intervalMs: 20, what: `the serving process of supervisor ${supervisorPid}` },
  );
  return found!;
}

/** Kills the serving process of a supervised mount with SIGKILL; resolves to its pid and the kill time. */
export async function killServing(mount: TestMount): Promise<{ pid: number; at: number; gone: number }> {
  const pid = await servingPidOf(mount.process.pid!);
  const at = Date.now();
  process.kill(pid, 'SIGKILL');
  // Until it is gone, a request it had read may still be answered: a read that began after
  // `at` is no proof of a recovery before `gone`.
  await waitFor(async () => !/^\S+ \(.*\) [^Z]/s.test(await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')), { timeoutMs: 10_000, intervalMs: 5, what: `serving process ${pid} to be gone` });
  return { pid, at, gone: Date.now() };
}

/** Direct children of a process, from /proc (by PID, never by name). */
async function childrenOf(pid: number): Promise<number[]> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const out: number[] = [];
  for (const t of tasks) {
    const text = await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '');
    out.push(...text.split(' ').filter(Boolean).map(Number));
  }
  return out;
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
