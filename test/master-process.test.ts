/**
 * The master as a real process (`cachefs master`, `mount-table`, `report`),
 * compiled from this tree into a private directory and run through a small
 * entry that registers the three commands: acknowledged mount-table changes
 * survive `kill -9` and a restart on the same meta dir, secrets never reach
 * listings or the log file, a second master cannot take a meta dir in use,
 * SIGTERM stops it cleanly, and bad input ends in one line and a non-zero exit.
 * Every master and command is given the cluster secret with --auth-token-file.
 * Every process is stopped by PID after each test, also when it fails.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MasterClient } from '../src/master/client.js';
import { ClusterSecret } from '../src/net/auth.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// Inside the repo so that the compiled files find node_modules.
const OUT = path.join(ROOT, 'node_modules', '.cache', `cachefs-master-test-${process.pid}`);
const ENTRY = path.join(OUT, 'master-entry.mjs');
const SECRET = 'AKIA-very-secret-value-0123456789abcdef';
const TOKEN = 'cluster-token-of-the-master-process-test-0123456789';
let tokenDir: string;
let tokenFile: string;
let auth: ClusterSecret;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface MasterProcess {
  child: ChildProcess;
  port: number;
  address: string;
  output(): string;
  exited: Promise<number | null>;
}

const children = new Set<ChildProcess>();
const dirs: string[] = [];

beforeAll(async () => {
  tokenDir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-master-token-'));
  tokenFile = path.join(tokenDir, 'token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  auth = ClusterSecret.fromFile(tokenFile);
  // tsc emits even when files others are editing do not type-check; the entry only loads the master's modules.
  await promisify(execFile)(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(ROOT, 'tsconfig.json'), '--outDir', OUT]).catch(
    (err: { stdout?: string }) => {
      if (!/error TS/.test(err.stdout ?? '')) throw err;
    },
  );
  await writeFile(
    ENTRY,
    [
      "import { Command } from 'commander';",
      "import { registerMasterCommand } from './cli/master.js';",
      "import { registerMountTableCommand } from './cli/mount-table.js';",
      "import { registerReportCommand } from './cli/report.js';",
      "const program = new Command('cachefs').exitOverride((e) => process.exit(e.exitCode === 0 ? 0 : 2));",
      'registerMasterCommand(program);',
      'registerMountTableCommand(program);',
      'registerReportCommand(program);',
      'await program.parseAsync(process.argv);',
    ].join('\n'),
  );
});

afterEach(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      const gone = new Promise((resolve) => child.once('exit', resolve));
      process.kill(child.pid, 'SIGKILL');
      await gone;
    }
  }
  children.clear();
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

afterAll(async () => {
  await rm(OUT, { recursive: true, force: true });
  if (tokenDir) await rm(tokenDir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-master-proc-'));
  dirs.push(dir);
  return dir;
}

function track(child: ChildProcess): Promise<number | null> {
  children.add(child);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** Runs `cachefs ARGS` to completion; admin commands with the cluster secret unless `withToken` is false. */
async function cachefs(args: string[], withToken = args[0] !== 'master' && !args.includes('--auth-token-file')): Promise<Run> {
  const child = spawn(process.execPath, [ENTRY, ...args, ...(withToken ? ['--auth-token-file', tokenFile] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await track(child);
  return { code, stdout, stderr };
}

/** Starts `cachefs master` on a free port; resolves once it prints its ready line. */
async function startMaster(metaDir: string, extra: string[] = []): Promise<MasterProcess> {
  const child = spawn(process.execPath, [ENTRY, 'master', '--meta-dir', metaDir, '--host', '127.0.0.1', '--port', '0', '--auth-token-file', tokenFile, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = track(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /cachefs master: listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    void exited.then((code) => reject(new Error(`master exited with ${code} before it was ready: ${out}`)));
  });
  return { child, port, address: `127.0.0.1:${port}`, output: () => out, exited };
}

/** Resolves once `server` has accepted a connection. */
async function waitForConnection(server: net.Server): Promise<void> {
  for (;;) {
    const count = await new Promise<number>((resolve) => server.getConnections((_err, n) => resolve(n)));
    if (count > 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function kill9(master: MasterProcess): Promise<void> {
  process.kill(master.child.pid!, 'SIGKILL');
  await master.exited;
}

describe('cachefs master process', () => {
  it('keeps every acknowledged mount-table change across kill -9 and a restart on the same meta dir', async () => {
    const metaDir = await tempDir();
    const first = await startMaster(metaDir);
    const client = new MasterClient(first.address, { retries: 0, auth });
    try {
      for (let i = 0; i < 20; i++) await client.addMount({ path: `/data${i}`, uri: `s3://bucket/prefix-${i}`, secretOptions: { 's3.secretAccessKey': `${SECRET}-${i}` } });
      await client.removeMount('/data7');
      await client.registerWorker({
        id: 'w1', cacheGroup: 'g', address: '127.0.0.1:29999', hostname: 'node-a', domainSocketPath: '', startedAt: 1,
        capacityBytes: 10, usedBytes: 1, blocks: 1, tiers: [],
      });
      // The last change was acknowledged: kill the master at once, no chance to flush anything more.
      await kill9(first);
    } finally {
      await client.close();
    }

    const second = await startMaster(metaDir);
    const again = new MasterClient(second.address, { retries: 0, auth });
    try {
      const table = await again.mountTable();
      expect(table.value.map((e) => e.path).sort()).toEqual(
        Array.from({ length: 20 }, (_, i) => `/data${i}`).filter((p) => p !== '/data7').sort(),
      );
      expect(table.value.find((e) => e.path === '/data19')).toMatchObject({ uri: 's3://bucket/prefix-19', secretOptions: { 's3.secretAccessKey': `${SECRET}-19` } });
      expect((await again.listWorkers({ cacheGroup: 'g' })).workers).toMatchObject([{ id: 'w1', state: 'alive' }]);
    } finally {
      await again.close();
    }
  });

  it('adds, lists and removes entries from the command line, never showing secrets in output or the log', async () => {
    const dir = await tempDir();
    const logFile = path.join(dir, 'master.log');
    const secretFile = path.join(dir, 'secret-key');
    await writeFile(secretFile, `${SECRET}\n`);
    const master = await startMaster(path.join(dir, 'meta'), ['--log-level', 'debug', '--log-file', logFile]);

    const add = await cachefs(['mount-table', 'add', '/data', 's3://bucket/prefix', '--option', 's3.endpoint=http://127.0.0.1:9000', '--option-from-file', `s3.secretAccessKey=${secretFile}`, '--master', master.address]);
    expect(add).toMatchObject({ code: 0 });
    expect(add.stdout).toMatch(/^added: \/data\s+s3:\/\/bucket\/prefix\s+s3\.endpoint=http:\/\/127\.0\.0\.1:9000 s3\.secretAccessKey=\[secret\]\n$/);

    const list = await cachefs(['mount-table', 'list', '--master', master.address]);
    expect(list.code).toBe(0);
    expect(list.stdout).toContain('s3.secretAccessKey=[secret]');
    const json = await cachefs(['mount-table', 'list', '--json', '--master', master.address]);
    expect(JSON.parse(json.stdout)).toMatchObject({ entries: [{ path: '/data', secretOptions: { 's3.secretAccessKey': '[secret]' } }] });

    // The secret did reach the master: a mount resolving the path gets it (without the file's newline).
    const client = new MasterClient(master.address, { retries: 0, auth });
    try {
      expect((await client.resolveMount('/data/file')).value.entry.secretOptions).toEqual({ 's3.secretAccessKey': SECRET });
    } finally {
      await client.close();
    }

    const remove = await cachefs(['mount-table', 'remove', '/data/', '--master', master.address]);
    expect(remove).toMatchObject({ code: 0, stdout: expect.stringMatching(/^removed: \/data /) });
    expect((await cachefs(['mount-table', 'list', '--master', master.address])).stdout).toBe('the mount table is empty\n');

    // Stop cleanly so the log is complete, then look for the secret everywhere.
    process.kill(master.child.pid!, 'SIGTERM');
    expect(await master.exited).toBe(0);
    const log = await readFile(logFile, 'utf8');
    expect(log).toContain('mount-table entry added');
    expect(log).toContain('s3.secretAccessKey');
    for (const text of [log, master.output(), add.stdout, add.stderr, list.stdout, json.stdout, remove.stdout]) expect(text).not.toContain(SECRET);
  });

  it('reports workers, capacity, cached bytes, tiers and short-circuit bytes', async () => {
    const master = await startMaster(await tempDir(), ['--worker-timeout', '1s']);
    const client = new MasterClient(master.address, { retries: 0, auth });
    // w1 heartbeats throughout; w2 never does and is lost after 1s.
    let beating: NodeJS.Timeout | undefined;
    try {
      const tiers = [
        { medium: 'MEM' as const, dir: '/dev/shm/cachefs', quotaBytes: 2 * 1024 ** 3, usedBytes: 1024 ** 3 },
        { medium: 'SSD' as const, dir: '/mnt/ssd/cachefs', quotaBytes: 8 * 1024 ** 3, usedBytes: 1024 ** 3 },
      ];
      const { credential } = await client.registerWorker({ id: 'w1', cacheGroup: 'g', address: '127.0.0.1:29999', hostname: 'node-a', domainSocketPath: '/run/cachefs/w1', startedAt: 1, capacityBytes: 10 * 1024 ** 3, usedBytes: 2 * 1024 ** 3, blocks: 512, tiers, shortCircuitBytes: 3 * 1024 ** 2 });
      await client.registerWorker({ id: 'w2', cacheGroup: 'g', address: '127.0.0.1:29998', hostname: 'node-b', domainSocketPath: '', startedAt: 1, capacityBytes: 10 * 1024 ** 3, usedBytes: 0, blocks: 0, tiers: [] });
      beating = setInterval(() => void client.heartbeat({ id: 'w1', startedAt: 1, credential }).catch(() => undefined), 100);
      await new Promise((resolve) => setTimeout(resolve, 1500));

      const text = await cachefs(['report', '--master', master.address]);
      expect(text.code).toBe(0);
      expect(text.stdout).toContain('cache group g: 1 alive, 1 lost; cached 2GiB of 10GiB (20%), 512 blocks');
      expect(text.stdout).toMatch(/w1\s+alive\s+127\.0\.0\.1:29999\s+node-a\s+10GiB\s+2GiB\s+20%\s+512\s+3MiB/);
      expect(text.stdout).toMatch(/w2\s+lost/);
      expect(text.stdout).toMatch(/w1\s+SSD\s+\/mnt\/ssd\/cachefs\s+1GiB \/ 8GiB\s+12\.5%/);

      const json = await cachefs(['report', '--json', '--master', master.address]);
      expect(JSON.parse(json.stdout)).toMatchObject({
        alive: 1,
        lost: 1,
        capacityBytes: 10 * 1024 ** 3,
        cachedBytes: 2 * 1024 ** 3,
        cachedPercent: 20,
        cacheGroups: [{ name: 'g', workers: [{ id: 'w1', state: 'alive', shortCircuitBytes: 3 * 1024 ** 2, tiers: [{ medium: 'MEM', usedPercent: 50 }, { medium: 'SSD', usedPercent: 12.5 }] }, { id: 'w2', state: 'lost' }] }],
      });
    } finally {
      clearInterval(beating);
      await client.close();
    }
  });

  it('refuses a second master on a meta dir in use, and lets a new one take it after kill -9', async () => {
    const metaDir = await tempDir();
    const first = await startMaster(metaDir);
    const second = await cachefs(['master', '--meta-dir', metaDir, '--host', '127.0.0.1', '--port', '0', '--auth-token-file', tokenFile]);
    expect(second.code).toBe(6);
    expect(second.stderr).toMatch(/^cachefs: meta dir '.*' is in use by master process \d+/);
    await kill9(first);
    const third = await startMaster(metaDir);
    expect(third.port).toBeGreaterThan(0);
  });

  it('stops cleanly on SIGTERM and SIGINT', async () => {
    const metaDir = await tempDir();
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const master = await startMaster(metaDir);
      process.kill(master.child.pid!, signal);
      expect(await master.exited).toBe(0);
    }
  });

  it('stops on SIGTERM while a namespace request waits on an object store that never answers', async () => {
    // A store that takes the connection and then says nothing: the master's listing waits on it.
    const silent = net.createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const storePort = (silent.address() as net.AddressInfo).port;
    const master = await startMaster(await tempDir());
    const client = new MasterClient(master.address, { retries: 0, auth });
    try {
      await client.addMount({
        path: '/stuck', uri: 's3://bucket/prefix',
        options: { 's3.endpoint': `http://127.0.0.1:${storePort}`, 's3.region': 'us-east-1', 's3.pathStyle': 'true', 's3.accessKeyId': 'AKIA' },
        secretOptions: { 's3.secretAccessKey': SECRET },
      });
      const waiting = client.namespaceList('stuck/', {}).then(() => 'answered', () => 'failed');
      await waitForConnection(silent);
      const stopping = Date.now();
      process.kill(master.child.pid!, 'SIGTERM');
      expect(await master.exited).toBe(0);
      expect(Date.now() - stopping).toBeLessThan(10_000);
      expect(await waiting).toBe('failed');
      expect(master.output()).toMatch(/left 1 request unanswered/);
    } finally {
      await client.close();
      silent.close();
    }
  });

  it.each([
    [['master', '--worker-timeout', 'soon'], 2, /invalid --worker-timeout 'soon'/],
    [['master', '--port', '99999'], 2, /invalid --port '99999'/],
    [['mount-table', 'add', 'data', 's3://bucket/p'], 2, /invalid mount path 'data'/],
    [['mount-table', 'add', '/data', 'gs://bucket/p'], 2, /invalid UFS URI 'gs:\/\/bucket\/p'/],
    [['mount-table', 'add', '/data', 's3://bucket/p', '--option', 'novalue'], 2, /invalid --option 'novalue': expected KEY=VALUE/],
    [['mount-table', 'add', '/data', 's3://bucket/p', '--option-from-file', 'k=/nonexistent/file'], 2, /invalid --option-from-file 'k=\/nonexistent\/file'/],
    [['mount-table', 'list', '--master', 'not-an-address'], 2, /invalid --master address 'not-an-address'/],
    [['report', '--master', '127.0.0.1:1'], 5, /cannot reach master 127\.0\.0\.1:1/],
    [['report', '--cache-group', 'bad group'], 2, /invalid --cache-group 'bad group'/],
    [['report', '--auth-token-file', '/nonexistent/token'], 2, /invalid --auth-token-file '\/nonexistent\/token': cannot open it \(ENOENT\)/],
    [['master', '--tls-cert', '/nonexistent/cert.pem'], 2, /--tls-cert and --tls-key go together/],
    [['master', '--tls-cert', '/nonexistent/cert.pem', '--tls-key', '/nonexistent/key.pem'], 2, /invalid --tls-cert '\/nonexistent\/cert\.pem': cannot read it \(ENOENT\)/],
  ])('fails with one line and a non-zero exit for %j', async (args, code, message) => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'meta'));
    const run = await cachefs(args[0] === 'master' ? [...args, '--meta-dir', path.join(dir, 'meta'), '--auth-token-file', tokenFile] : args);
    expect(run.code).toBe(code);
    expect(run.stderr).toMatch(message);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('answers 404 for an unknown path through the command line', async () => {
    const master = await startMaster(await tempDir());
    const run = await cachefs(['mount-table', 'remove', '/nothing', '--master', master.address]);
    expect(run.code).toBe(3);
    expect(run.stderr).toBe("cachefs: no mount-table entry at '/nothing'\n");
  });
});
