/**
 * Real cluster processes for tests: a master (`cachefs master`) and workers
 * (`cachefs worker`) started from bin/cachefs on 127.0.0.1 with free ports, each
 * a tracked child stopped by PID (SIGTERM, or SIGKILL to simulate a crash).
 *
 * The cluster is authenticated as in production: the run's token file (0600 in a
 * 0700 temp dir, made and removed by support/cluster-token-setup.ts, vitest's
 * globalSetup) is named in this test process's environment (CACHEFS_AUTH_TOKEN_FILE)
 * when this module loads, as an operator's shell would, so every cachefs process a
 * test starts — masters, workers, mounts, admin commands — presents it. A test that
 * wants a process without it passes that variable empty.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { inject } from 'vitest';
import { CACHEFS_BIN, cachefs } from './cachefs.js';
import { scrapeMetrics, type MetricsSnapshot } from './metrics.js';
import { freePort, waitFor } from './processes.js';

export interface ServiceProcess {
  readonly port: number;
  readonly address: string;
  readonly child: ChildProcess;
  output(): string;
  metrics(): Promise<MetricsSnapshot>;
  /** SIGTERM and wait; SIGKILL after 10 s. */
  stop(): Promise<void>;
  /** SIGKILL and wait: a crash. */
  kill(): Promise<void>;
}

/** The token file (0600) that CACHEFS_AUTH_TOKEN_FILE names in this process and its children. */
export const CLUSTER_TOKEN_FILE: string = inject('clusterTokenFile');
if (!CLUSTER_TOKEN_FILE) throw new Error('no cluster token file: run the tests with vitest.config.ts, whose globalSetup (test/support/cluster-token-setup.ts) makes it');
/** The cluster secret of every cluster this test process starts. */
export const CLUSTER_TOKEN = readFileSync(CLUSTER_TOKEN_FILE, 'utf8').trim();
process.env.CACHEFS_AUTH_TOKEN_FILE = CLUSTER_TOKEN_FILE;

/** The header that carries the cluster secret, for tests that speak HTTP to the cluster themselves. */
export const AUTH_HEADER = `Bearer ${CLUSTER_TOKEN}`;

const live = new Set<ServiceProcess>();
/** Temporary dirs made here; removed by stopAllServices (restarts within a test reuse them). */
const made: string[] = [];

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}

function start(args: string[], port: number, ready: (out: string) => boolean, env: NodeJS.ProcessEnv = {}, prefix: string[] = []): Promise<ServiceProcess> {
  const argv = [...prefix, process.execPath, CACHEFS_BIN, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    live.delete(svc);
    if (!running()) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  const svc: ServiceProcess = {
    port,
    address: `127.0.0.1:${port}`,
    child,
    output: () => out,
    metrics: () => scrapeMetrics(`http://127.0.0.1:${port}/metrics`),
    stop: () => halt('SIGTERM'),
    kill: () => halt('SIGKILL'),
  };
  live.add(svc);
  return waitFor(
    () => {
      if (!running()) throw new Error(`cachefs ${args[0]} exited (${child.exitCode ?? child.signalCode}): ${out}`);
      return ready(out);
    },
    { timeoutMs: 30_000, intervalMs: 50, what: `cachefs ${args[0]} to start` },
  ).then(
    () => svc,
    async (err: unknown) => {
      await svc.kill();
      throw err;
    },
  );
}

export interface MasterOptions {
  metaDir?: string;
  port?: number;
  workerTimeout?: string;
  /** More flags, e.g. --tls-cert/--tls-key. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

export async function startMaster(options: MasterOptions = {}): Promise<ServiceProcess & { metaDir: string }> {
  const metaDir = options.metaDir ?? (await tempDir('cachefs-meta-'));
  const port = options.port ?? (await freePort());
  const svc = await start(
    ['master', '--meta-dir', metaDir, '--host', '127.0.0.1', '--port', String(port), '--worker-timeout', options.workerTimeout ?? '3s', ...(options.args ?? [])],
    port,
    (out) => out.includes('listening on'),
    options.env,
  );
  return Object.assign(svc, { metaDir });
}

export interface WorkerOptions {
  master: string;
  cacheGroup?: string;
  id?: string;
  port?: number;
  tierDir?: string;
  tierSize?: string;
  /** The worker's --block-size (its default, 4MiB, when absent): mounts that read from it give the same. */
  blockSize?: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Unix socket dir for co-located clients; none by default, so reads take the network path. */
  socketDir?: string;
  /** The worker's --state-dir (a new one by default): a restart that keeps it keeps its registration credential. */
  stateDir?: string;
  /** A command the worker runs under (it must exec it, keeping the pid), e.g. `unshare -m ...`. */
  prefix?: string[];
}

export async function startWorker(options: WorkerOptions): Promise<ServiceProcess & { tierDir: string; id: string; stateDir: string }> {
  const port = options.port ?? (await freePort());
  const tierDir = options.tierDir ?? (await tempDir('cachefs-tier-'));
  const stateDir = options.stateDir ?? (await tempDir('cachefs-wstate-'));
  const id = options.id ?? `worker-${port}`;
  const svc = await start(
    ['worker', '--master', options.master, '--cache-group', options.cacheGroup ?? 'g', '--id', id, '--host', '127.0.0.1', '--port', String(port), '--tier', `SSD:${tierDir}:${options.tierSize ?? '1GiB'}`, '--state-dir', stateDir, '--domain-socket-dir', options.socketDir ?? 'none', '--log-level', 'debug', ...(options.blockSize ? ['--block-size', options.blockSize] : []), ...(options.args ?? [])],
    port,
    (out) => out.includes('registered with the master'),
    options.env,
    options.prefix,
  );
  return Object.assign(svc, { tierDir, id, stateDir });
}

/** Adds a mount-table entry through the CLI. */
export async function addMountEntry(master: string, mountPath: string, uri: string, options: string[] = []): Promise<void> {
  const r = await cachefs(['mount-table', 'add', mountPath, uri, '--master', master, ...options.flatMap((o) => ['--option', o])]);
  if (r.code !== 0) throw new Error(`mount-table add failed: ${r.stderr}`);
}

export async function stopAllServices(): Promise<void> {
  for (const s of [...live]) await s.stop();
  for (const dir of made.splice(0)) await rm(dir, { recursive: true, force: true });
}
