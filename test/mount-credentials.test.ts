/**
 * OSS and COS mounts and credentials: wrong secrets, missing buckets and dead
 * endpoints end in one clear line and leave nothing mounted; secrets from files or
 * the environment work and never show in `ps`, logs or metrics; a cluster worker
 * reads through from OSS and COS as from S3.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, sh, sha256Of, stopAllMounts } from './support/cachefs.js';
import { startMaster, startWorker, stopAllServices } from './support/cluster.js';
import { startCosServer, type CosTestServer } from './support/cos-server.js';
import { freePort, isMounted } from './support/processes.js';
import { startOssServer, type OssTestServer } from './support/oss-server.js';

const SECRET = 'very-secret-Kx93';
const data = randomBytes(3 * 1024 * 1024 + 17);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

let oss: OssTestServer;
let cos: CosTestServer;
let work: string;
let mnt: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-creds-'));
  mnt = path.join(work, 'mnt');
  await mkdir(mnt);
  oss = await startOssServer({ buckets: ['data'], accessKeyId: 'LTAIkey', secret: SECRET });
  cos = await startCosServer({ buckets: ['data-1250000000'], accessKeyId: 'AKIDkey', secret: SECRET });
  oss.put('data', 'x.bin', data);
  cos.put('data-1250000000', 'x.bin', data);
});

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await oss?.close();
  await cos?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

interface Kind {
  name: 'oss' | 'cos';
  uri: (bucket: string) => string;
  bucket: () => string;
  endpointArgs: (endpoint?: string) => string[];
  secretKey: string;
  keyIdArgs: () => string[];
  env: () => NodeJS.ProcessEnv;
}

const kinds: Kind[] = [
  {
    name: 'oss',
    uri: (b) => `oss://${b}`,
    bucket: () => 'data',
    endpointArgs: (e) => ['--option', `oss.endpoint=${e ?? oss.endpoint}`, '--option', 'oss.region=oss-cn-hangzhou'],
    secretKey: 'oss.accessKeySecret',
    keyIdArgs: () => ['--option', 'oss.accessKeyId=LTAIkey'],
    env: () => ({ OSS_ACCESS_KEY_ID: 'LTAIkey', OSS_ACCESS_KEY_SECRET: SECRET }),
  },
  {
    name: 'cos',
    uri: (b) => `cosn://${b}`,
    bucket: () => 'data-1250000000',
    endpointArgs: (e) => ['--option', `cos.endpoint=${e ?? cos.endpoint}`, '--option', `cos.region=${cos.region}`],
    secretKey: 'cos.secretKey',
    keyIdArgs: () => ['--option', 'cos.secretId=AKIDkey'],
    env: () => ({ COS_SECRET_ID: 'AKIDkey', COS_SECRET_KEY: SECRET }),
  },
];

async function secretFile(value: string): Promise<string> {
  const file = path.join(work, `secret-${Math.random().toString(36).slice(2)}`);
  await writeFile(file, value, { mode: 0o600 });
  return file;
}

describe.each(kinds)('$name mounts', (k) => {
  async function fails(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ line: string; ms: number }> {
    const t0 = Date.now();
    const r = await cachefs(['mount', mnt, '--foreground', '--cache-dir', path.join(work, 'cache'), ...args], env);
    const ms = Date.now() - t0;
    expect(r.code, r.stderr).not.toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).not.toContain(SECRET);
    expect(lines[0]).not.toContain('wrong-secret');
    expect(await isMounted(mnt)).toBe(false);
    return { line: lines[0]!, ms };
  }

  it('a wrong secret: access denied, naming the bucket', async () => {
    const args = ['--ufs', k.uri(k.bucket()), ...k.endpointArgs(), ...k.keyIdArgs(), '--option-from-file', `${k.secretKey}=${await secretFile('wrong-secret')}`];
    expect((await fails(args)).line).toMatch(new RegExp(`^cachefs: access denied to ${k.uri(k.bucket())}`));
  });

  it('a missing bucket: bucket not found', async () => {
    const bucket = k.name === 'oss' ? 'nope' : 'nope-1250000000';
    const args = ['--ufs', k.uri(bucket), ...k.endpointArgs(), ...k.keyIdArgs(), '--option-from-file', `${k.secretKey}=${await secretFile(SECRET)}`];
    expect((await fails(args)).line).toMatch(new RegExp(`^cachefs: bucket not found: ${k.uri(bucket)}`));
  });

  it('an unreachable endpoint: fails fast', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const args = ['--ufs', k.uri(k.bucket()), ...k.endpointArgs(dead), ...k.keyIdArgs(), '--option-from-file', `${k.secretKey}=${await secretFile(SECRET)}`];
    const r = await fails(args);
    expect(r.line).toMatch(/cannot reach the object store/);
    expect(r.ms).toBeLessThan(8000);
  });

  it('secrets from a file or the environment work, and never show in ps, logs or metrics', async () => {
    const fromFile = await mountCachefs({ ufs: k.uri(k.bucket()), args: [...k.endpointArgs(), ...k.keyIdArgs(), '--option-from-file', `${k.secretKey}=${await secretFile(SECRET)}`] });
    const fromEnv = await mountCachefs({ ufs: k.uri(k.bucket()), args: k.endpointArgs(), env: k.env() });
    for (const m of [fromFile, fromEnv]) {
      expect(await sha256Of(path.join(m.mountpoint, 'x.bin'))).toBe(sha(data));
      expect(m.output()).not.toContain(SECRET);
      expect((await m.metrics()).text).not.toContain(SECRET);
    }
    const ps = await sh('ps -eo args');
    expect(ps.stdout).toContain(fromFile.mountpoint);
    expect(ps.stdout).not.toContain(SECRET);
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
    expect(mm.value('cachefs_client_read_bytes_total', { path: 'remote' })).toBe(2 * data.length);
    expect((await worker.metrics()).value('cachefs_ufs_read_bytes_total')).toBe(2 * data.length);
    expect(worker.output()).not.toContain(SECRET);
  });
});
