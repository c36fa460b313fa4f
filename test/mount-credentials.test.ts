/**
 * OSS and COS mounts and credentials: wrong secrets, missing buckets and dead
 * endpoints end in one clear line and leave nothing mounted or running; secrets
 * from files or the environment work and never show in `ps`, logs, metrics or
 * errors; a cluster worker reads through from OSS and COS as from S3.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CACHEFS_BIN, cachefs, mountCachefs, sh, sha256Of, stopAllMounts } from './support/cachefs.js';
import { startMaster, startWorker, stopAllServices } from './support/cluster.js';
import { startCosServer, type CosTestServer } from './support/cos-server.js';
import { freePort, isMounted, runCommand } from './support/processes.js';
import { startOssServer, type OssTestServer } from './support/oss-server.js';
import { expectServedBy } from './support/metrics.js';

const SECRET = 'very-secret-Kx93';
const WRONG = 'wrong-secret-Pq71';
const data = randomBytes(3 * 1024 * 1024 + 17);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

let oss: OssTestServer;
let cos: CosTestServer;
let work: string;
let mnt: string;
/** Accepts connections and never answers: an endpoint that hangs. */
let silent: Server;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-creds-'));
  mnt = path.join(work, 'mnt');
  await mkdir(mnt);
  silent = createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  oss = await startOssServer({ buckets: ['data'], accessKeyId: 'LTAIkey', secret: SECRET });
  cos = await startCosServer({ buckets: ['data-1250000000'], accessKeyId: 'AKIDkey', secret: SECRET });
  for (const key of ['x.bin', 'refused.bin', 'broken.bin']) {
    oss.put('data', key, data);
    cos.put('data-1250000000', key, data);
  }
});

afterEach(async () => {
  await stopAllMounts();
});

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  silent?.close();
  await oss?.close();
  await cos?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

interface Kind {
  name: 'oss' | 'cos';
  uri: (bucket: string) => string;
  bucket: string;
  missingBucket: string;
  endpointArgs: (endpoint?: string) => string[];
  secretKey: string;
  keyIdArgs: string[];
  env: (secret: string) => NodeJS.ProcessEnv;
  server: () => OssTestServer | CosTestServer;
}

const kinds: Kind[] = [
  {
    name: 'oss',
    uri: (b) => `oss://${b}`,
    bucket: 'data',
    missingBucket: 'nope',
    endpointArgs: (e) => ['--option', `oss.endpoint=${e ?? oss.endpoint}`, '--option', 'oss.region=oss-cn-hangzhou'],
    secretKey: 'oss.accessKeySecret',
    keyIdArgs: ['--option', 'oss.accessKeyId=LTAIkey'],
    env: (secret) => ({ OSS_ACCESS_KEY_ID: 'LTAIkey', OSS_ACCESS_KEY_SECRET: secret }),
    server: () => oss,
  },
  {
    name: 'cos',
    uri: (b) => `cosn://${b}`,
    bucket: 'data-1250000000',
    missingBucket: 'nope-1250000000',
    endpointArgs: (e) => ['--option', `cos.endpoint=${e ?? cos.endpoint}`, '--option', `cos.region=${cos.region}`],
    secretKey: 'cos.secretKey',
    keyIdArgs: ['--option', 'cos.secretId=AKIDkey'],
    env: (secret) => ({ COS_SECRET_ID: 'AKIDkey', COS_SECRET_KEY: secret }),
    server: () => cos,
  },
];

/** A secret file as Kubernetes mounts one; `echo`-made files end in a newline. */
async function secretFile(value: string, newline = false): Promise<string> {
  const file = path.join(work, `secret-${Math.random().toString(36).slice(2)}`);
  await writeFile(file, newline ? `${value}\n` : value, { mode: 0o600 });
  return file;
}

/** Command lines of every process, from `ps` in a child process. */
async function psArgs(): Promise<string> {
  const r = await runCommand('ps', ['-eo', 'args']);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

describe.each(kinds)('$name mounts', (k) => {
  /** `cachefs mount` that must fail: the whole output, and what is left behind, checked. */
  async function fails(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ stderr: string; ms: number }> {
    const t0 = Date.now();
    const r = await cachefs(['mount', mnt, '--foreground', '--cache-dir', path.join(work, 'cache'), ...args], env);
    const ms = Date.now() - t0;
    expect(r.code, r.stderr).not.toBe(0);
    for (const secret of [SECRET, WRONG]) expect(r.stdout + r.stderr).not.toContain(secret);
    expect(await isMounted(mnt)).toBe(false);
    // Neither the supervisor nor a serving process stays behind.
    expect((await psArgs()).split('\n').filter((line) => line.includes(mnt))).toEqual([]);
    return { stderr: r.stderr, ms };
  }

  /** The one line a failing mount prints at the default log level. */
  function oneLine(stderr: string): string {
    const lines = stderr.trim().split('\n');
    expect(lines, stderr).toHaveLength(1);
    expect(lines[0]).not.toMatch(/^\s+at /);
    return lines[0]!;
  }

  const deniedLine = (): RegExp => new RegExp(`^cachefs: access denied to ${k.uri(k.bucket)}\\b`);

  it('a wrong secret from a file or the environment: one line, access denied, naming the bucket', async () => {
    const base = ['--ufs', k.uri(k.bucket), ...k.endpointArgs()];
    expect(oneLine((await fails([...base, ...k.keyIdArgs, '--option-from-file', `${k.secretKey}=${await secretFile(WRONG)}`])).stderr)).toMatch(deniedLine());
    expect(oneLine((await fails(base, k.env(WRONG))).stderr)).toMatch(deniedLine());
    // Logging everything still shows neither secret (checked in fails) and ends with the same line.
    const debug = await fails([...base, '--log-level', 'trace'], k.env(WRONG));
    expect(debug.stderr.trim().split('\n').at(-1)).toMatch(deniedLine());
  });

  it('a missing bucket: one line, bucket not found, naming it', async () => {
    const args = ['--ufs', k.uri(k.missingBucket), ...k.endpointArgs(), ...k.keyIdArgs, '--option-from-file', `${k.secretKey}=${await secretFile(SECRET)}`];
    expect(oneLine((await fails(args)).stderr)).toMatch(new RegExp(`^cachefs: bucket not found: ${k.uri(k.missingBucket)}\\b`));
  });

  it('an unreachable endpoint: one line, fails fast', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const args = ['--ufs', k.uri(k.bucket), ...k.endpointArgs(dead), ...k.keyIdArgs, '--option-from-file', `${k.secretKey}=${await secretFile(SECRET)}`];
    const r = await fails(args);
    expect(oneLine(r.stderr)).toMatch(new RegExp(`^cachefs: cannot reach the object store for ${k.uri(k.bucket)}\\b`));
    expect(r.ms).toBeLessThan(8000);
  });

  it('an endpoint that never answers: one line, within a few seconds', async () => {
    const hanging = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
    const args = ['--ufs', k.uri(k.bucket), ...k.endpointArgs(hanging), ...k.keyIdArgs, '--option-from-file', `${k.secretKey}=${await secretFile(SECRET)}`];
    const r = await fails(args);
    // The mount's check gives up first (a timeout); S3 words the same end as unreachable.
    expect(oneLine(r.stderr)).toMatch(new RegExp(`^cachefs: (?:timed out: request to|cannot reach the object store for) ${k.uri(k.bucket)}\\b`));
    expect(r.ms).toBeLessThan(10_000);
  });

  it('secrets from a file or the environment work, and never show in ps, logs, metrics or read errors', async () => {
    const fromFile = await mountCachefs({
      ufs: k.uri(k.bucket),
      args: [...k.endpointArgs(), ...k.keyIdArgs, '--option-from-file', `${k.secretKey}=${await secretFile(SECRET, true)}`],
    });
    // COS also answers to `cos://`.
    const fromEnv = await mountCachefs({ ufs: k.name === 'cos' ? `cos://${k.bucket}` : k.uri(k.bucket), args: k.endpointArgs(), env: k.env(SECRET) });
    const ps = await psArgs();
    for (const m of [fromFile, fromEnv]) {
      // The supervisor and its serving process are there to look at, and the standby once it has
      // started. (Other lines may name the mount point too: the supervisor binds its anchor with
      // `mount` once the mount answers, and a child it is starting shows the supervisor's own
      // command line until its exec.)
      const lines = ps.split('\n').filter((line) => line.includes(`${CACHEFS_BIN} mount ${m.mountpoint} `));
      expect(new Set(lines.filter((line) => !line.endsWith(' --standby'))).size, ps).toBe(2);
      expect(lines.filter((line) => line.includes(' --supervised ') && !line.endsWith(' --standby')).length, ps).toBeGreaterThanOrEqual(1);
    }
    expect(ps).not.toContain(SECRET);
    for (const m of [fromFile, fromEnv]) {
      expect(await sha256Of(path.join(m.mountpoint, 'x.bin'))).toBe(sha(data));
      // Failed reads, so that the log holds SDK errors too. Each fault twice: the kernel
      // reads a page again itself after its readahead of it failed. Faults are bound to their
      // object, so a late retry of one read cannot use up the other's.
      const refused = path.join(m.mountpoint, 'refused.bin');
      const broken = path.join(m.mountpoint, 'broken.bin');
      expect((await sh(`stat -c %s ${refused} ${broken}`)).stdout.trim().split('\n')).toEqual([String(data.length), String(data.length)]);
      k.server().failNext(403, 'AccessDenied', 2, 'refused.bin');
      const denied = await sh(`cat ${refused} > /dev/null`);
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toMatch(/Permission denied/);
      k.server().failNext(400, 'InvalidArgument', 2, 'broken.bin');
      const failed = await sh(`cat ${broken} > /dev/null`);
      expect(failed.code).not.toBe(0);
      expect(failed.stderr).toMatch(/Input\/output error/);
      // Faults pass; nothing failed is remembered.
      expect(await sha256Of(refused)).toBe(sha(data));
      expect(await sha256Of(broken)).toBe(sha(data));
      const metrics = await m.metrics();
      expect(metrics.value('cachefs_fuse_errors_total', { op: 'read', errno: 'EACCES' })).toBeGreaterThanOrEqual(1);
      expect(metrics.value('cachefs_fuse_errors_total', { op: 'read', errno: 'EIO' })).toBeGreaterThanOrEqual(1);
      expect(metrics.text).not.toContain(SECRET);
      expect(m.output()).toMatch(/FUSE op failed.*broken\.bin|broken\.bin.*FUSE op failed/);
      // Not only EIO: a refused read is a failure the operator must see, with its errno.
      expect(m.output()).toMatch(/"path":"\/refused\.bin","errno":"EACCES".*"msg":"FUSE op failed"/);
      expect(m.output()).not.toContain(SECRET);
    }
    await fromFile.stop();
    await fromEnv.stop();
  });
});

describe('a cluster over OSS and COS', () => {
  it('reads through a worker from both', async () => {
    const master = await startMaster();
    const ossSecret = await secretFile(SECRET);
    const cosSecret = await secretFile(SECRET);
    for (const [p, uri, opts, secretKey, file] of [
      ['/o', 'oss://data', [`oss.endpoint=${oss.endpoint}`, 'oss.region=oss-cn-hangzhou', 'oss.accessKeyId=LTAIkey'], 'oss.accessKeySecret', ossSecret],
      ['/c', 'cosn://data-1250000000', [`cos.endpoint=${cos.endpoint}`, `cos.region=${cos.region}`, 'cos.secretId=AKIDkey'], 'cos.secretKey', cosSecret],
    ] as const) {
      const r = await cachefs(['mount-table', 'add', p, uri, '--master', master.address, ...opts.flatMap((o) => ['--option', o]), '--option-from-file', `${secretKey}=${file}`]);
      expect(r.code, r.stderr).toBe(0);
    }
    const list = await cachefs(['mount-table', 'list', '--master', master.address]);
    expect(list.stdout).not.toContain(SECRET);
    const worker = await startWorker({ master: master.address, cacheGroup: 'oc' });
    const m = await mountCachefs({ args: ['--master', master.address, '--cache-group', 'oc', '--no-sharing'] });
    for (const p of ['o', 'c']) expect(await sha256Of(path.join(m.mountpoint, p, 'x.bin')), p).toBe(sha(data));
    const mm = await m.metrics();
    expectServedBy(mm, 'remote', 2 * data.length);
    expect((await worker.metrics()).value('cachefs_ufs_read_bytes_total')).toBe(2 * data.length);
    expect(worker.output()).not.toContain(SECRET);
  });
});
