/**
 * `cachefs mount --fluid-config`: the config.json Fluid's ThinRuntime writes for its FUSE
 * container, shaped as Fluid writes it (fluid-cloudnative/fluid pkg/ddc/thin: `Config` in
 * type.go, one line of JSON from transform_config.go; encrypted options as option values
 * naming the Secret's file, `/etc/fluid/secrets/<secret>/<key>`, laid out as the kubelet
 * lays out a Secret volume: `..data` a link to a dated dir, each key a link through it).
 * Each Dataset mount is read back through a real FUSE mount from a real S3 or OSS server;
 * secrets never reach a command line or the log; a bad config is one line naming the
 * value, a non-zero exit and nothing mounted.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FLUID_SECRETS_DIR } from '../src/cli/fluid-config.js';
import { UFS_OPTION_KEYS } from '../src/ufs/option-keys.js';
import { cachefs, mountCachefs, sh, sha256Of, stopAllMounts } from './support/cachefs.js';
import { startOssServer, type OssTestServer } from './support/oss-server.js';
import { isMounted, runCommand } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const OSS_SECRET = 'fluid-oss-secret-Zq48';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const files = {
  'images/a.bin': randomBytes(3 * 1024 * 1024 + 17),
  'images/sub/b.bin': randomBytes(70_001),
  'v1/labels.json': Buffer.from(JSON.stringify({ cat: 1, dog: 2 })),
};
/** Credentials come only from the config: none from the environment. */
const NO_ENV_CREDENTIALS = { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', AWS_PROFILE: '', OSS_ACCESS_KEY_ID: '', OSS_ACCESS_KEY_SECRET: '' };

let s3: S3TestServer;
let oss: OssTestServer;
let work: string;
/** One Secret per test run, so that parallel runs never share one. */
let s3Secret: string;
let ossSecret: string;
const madeDirs: string[] = [];

/** Writes a Secret's keys as the kubelet does: `<dir>/..<stamp>/<key>`, `..data` → it, `<key>` → `..data/<key>`. */
async function kubeletSecret(name: string, data: Record<string, string>): Promise<string> {
  const dir = path.join(FLUID_SECRETS_DIR, name);
  const stamp = '..2026_12_07_07_00_00.000000001';
  await mkdir(path.join(dir, stamp), { recursive: true, mode: 0o755 });
  madeDirs.push(dir);
  for (const [key, value] of Object.entries(data)) await writeFile(path.join(dir, stamp, key), value, { mode: 0o644 });
  await symlink(stamp, path.join(dir, '..data'));
  for (const key of Object.keys(data)) await symlink(path.join('..data', key), path.join(dir, key));
  return dir;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-fluid-'));
  s3 = await startS3Server({ buckets: ['fluid-data'] });
  oss = await startOssServer({ buckets: ['labels'], accessKeyId: 'LTAIkey', secret: OSS_SECRET });
  await s3.putObject('fluid-data', 'images/a.bin', files['images/a.bin']);
  await s3.putObject('fluid-data', 'images/sub/b.bin', files['images/sub/b.bin']);
  oss.put('labels', 'v1/labels.json', files['v1/labels.json']);
  const run = randomBytes(4).toString('hex');
  s3Secret = await kubeletSecret(`cachefs-test-s3-${run}`, { 'access-key-id': 'S3RVER', 'secret-access-key': 'S3RVER' });
  ossSecret = await kubeletSecret(`cachefs-test-oss-${run}`, { 'access-key-secret': OSS_SECRET, wrong: 'not-the-secret' });
});

afterEach(async () => {
  await stopAllMounts();
});

afterAll(async () => {
  await stopAllMounts();
  await s3?.close();
  await oss?.close();
  for (const dir of madeDirs) await rm(dir, { recursive: true, force: true });
  // Only if nothing else is in them: a real Fluid container's dirs are not ours.
  for (const dir of [FLUID_SECRETS_DIR, path.dirname(FLUID_SECRETS_DIR)]) await rmdir(dir).catch(() => undefined);
  if (work) await rm(work, { recursive: true, force: true });
});

interface FluidMount {
  mountPoint: string;
  name?: string;
  path?: string;
  options?: Record<string, string>;
}

/** The Dataset of deploy/fluid as Fluid writes it: an S3 prefix and an OSS prefix, credentials as Secret files. */
function datasetMounts(): FluidMount[] {
  return [
    {
      mountPoint: 's3://fluid-data/images',
      name: 'images',
      options: {
        's3.endpoint': s3.endpoint,
        's3.region': 'us-east-1',
        's3.accessKeyId': path.join(s3Secret, 'access-key-id'),
        's3.secretAccessKey': path.join(s3Secret, 'secret-access-key'),
      },
    },
    {
      mountPoint: 'oss://labels/v1',
      name: 'labels',
      // Keys without the scheme, as a Dataset may name them.
      options: { endpoint: oss.endpoint, region: oss.region, accessKeyId: 'LTAIkey', accessKeySecret: path.join(ossSecret, 'access-key-secret') },
    },
  ];
}

let configs = 0;

/** Writes config.json as Fluid does (one line of JSON); returns its path and the targetPath in it. */
async function fluidConfig(config: Record<string, unknown>): Promise<string> {
  const file = path.join(work, `config-${++configs}.json`);
  await writeFile(file, `${JSON.stringify(config)}\n`);
  return file;
}

/** A targetPath as Fluid makes it (`<mount root>/thin/<namespace>/<dataset>/thin-fuse`), not yet there. */
function targetPath(): string {
  return path.join(work, 'runtime-mnt', 'thin', 'default', `training-data-${configs + 1}`, 'thin-fuse');
}

/** Command lines of every process now, from /proc. */
async function commandLines(): Promise<string[]> {
  const r = await runCommand('ps', ['-eo', 'args']);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.split('\n');
}

describe('cachefs mount --fluid-config', () => {
  it('mounts each Dataset mount at <targetPath>/<name>, credentials read from the Secret files Fluid names, runtimeOptions over the flags', async () => {
    const target = targetPath();
    const file = await fluidConfig({
      mounts: datasetMounts(),
      targetPath: target,
      runtimeOptions: { 'cache-size': '64MiB', 'block-size': '1MiB' },
      accessModes: ['ReadOnlyMany'],
    });
    const mount = await mountCachefs({ fluidConfig: file, mountpoint: target, args: ['--cache-size', '1GiB'], env: NO_ENV_CREDENTIALS });

    expect((await readdir(target)).sort()).toEqual(['images', 'labels']);
    expect(await sha256Of(path.join(target, 'images/a.bin'))).toBe(sha(files['images/a.bin']));
    expect(await sha256Of(path.join(target, 'images/sub/b.bin'))).toBe(sha(files['images/sub/b.bin']));
    expect(await readFile(path.join(target, 'labels/labels.json'), 'utf8')).toBe(files['v1/labels.json'].toString());
    // cache-size from runtimeOptions, not --cache-size: statfs reports the cache as the size.
    const statfs = await sh(`stat -f -c '%b %S' '${target}'`);
    expect(statfs.stdout.trim()).toBe(`${(64 * 1024 * 1024) / 4096} 4096`);
    const source = await runCommand('findmnt', ['-n', '-o', 'SOURCE,FSTYPE', target]);
    expect(source.stdout.trim()).toBe('s3://fluid-data/images,oss://labels/v1 fuse.cachefs');

    // The supervisor's and the serving process's command lines name the file, never a secret.
    const ours = (await commandLines()).filter((line) => line.includes(file));
    expect(ours.length).toBeGreaterThanOrEqual(2);
    expect(ours.some((line) => line.includes('--supervised'))).toBe(true);
    for (const line of [...ours, mount.output()]) expect(line).not.toContain(OSS_SECRET);
    expect(mount.output()).toContain('mounted');
  });

  it('mounts a single Dataset mount with path / as the whole mount', async () => {
    const target = targetPath();
    const [images] = datasetMounts();
    const file = await fluidConfig({ mounts: [{ ...images, path: '/' }], targetPath: target });
    await mountCachefs({ fluidConfig: file, mountpoint: target, env: NO_ENV_CREDENTIALS });
    expect((await readdir(target)).sort()).toEqual(['a.bin', 'sub']);
    expect(await sha256Of(path.join(target, 'a.bin'))).toBe(sha(files['images/a.bin']));
  });

  it('uses the secret the file holds: a wrong one is refused by the store', async () => {
    const target = targetPath();
    const [, labels] = datasetMounts();
    const file = await fluidConfig({ mounts: [{ ...labels, options: { ...labels!.options, accessKeySecret: path.join(ossSecret, 'wrong') } }], targetPath: target });
    const r = await cachefs(['mount', '--fluid-config', file, '--foreground', '--cache-dir', path.join(work, 'cache')], NO_ENV_CREDENTIALS);
    expect(r.code, r.stderr).toBe(4);
    expect(await isMounted(target)).toBe(false);
  });

  const bad: [string, () => Record<string, unknown>, RegExp][] = [
    ['no targetPath', () => ({ mounts: datasetMounts() }), /^cachefs: invalid --fluid-config '[^']+': missing targetPath/],
    [
      'an option no backend reads',
      () => ({ mounts: [{ ...datasetMounts()[0], options: { ...datasetMounts()[0]!.options, 'fs.s3a.endpoint': 'http://x' } }], targetPath: targetPath() }),
      /unknown option 'fs\.s3a\.endpoint' of mount 'images': expected one of s3\.endpoint, /,
    ],
    [
      'a secret file that is not there',
      () => ({ mounts: [{ ...datasetMounts()[0], options: { ...datasetMounts()[0]!.options, 's3.secretAccessKey': path.join(s3Secret, 'no-such-key') } }], targetPath: targetPath() }),
      /cannot read the secret of option 's3\.secretAccessKey' of mount 'images' at \/etc\/fluid\/secrets\/cachefs-test-s3-[0-9a-f]+\/no-such-key \(ENOENT\)/,
    ],
    ['a runtimeOptions key no flag has', () => ({ mounts: datasetMounts(), targetPath: targetPath(), runtimeOptions: { 'cache-sise': '1GiB' } }), /unknown runtimeOptions key 'cache-sise'/],
    ['a read-write Dataset', () => ({ mounts: datasetMounts(), targetPath: targetPath(), accessModes: ['ReadWriteMany'] }), /accessModes ReadWriteMany: cachefs mounts read-only/],
    ['two mounts at one path', () => ({ mounts: [datasetMounts()[0], { ...datasetMounts()[1], name: 'images' }], targetPath: targetPath() }), /two mounts at \/images/],
  ];

  it.each(bad)('refuses %s with one line naming it, and mounts nothing', async (_what, config, message) => {
    const shaped = config();
    const file = await fluidConfig(shaped);
    const r = await cachefs(['mount', '--fluid-config', file, '--foreground', '--cache-dir', path.join(work, 'cache')], NO_ENV_CREDENTIALS);
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
    expect(r.stdout + r.stderr).not.toContain(OSS_SECRET);
    if (typeof shaped.targetPath === 'string') expect(await isMounted(shaped.targetPath)).toBe(false);
    expect((await commandLines()).filter((line) => line.includes(file))).toEqual([]);
  });

  it('refuses a MOUNTPOINT or --ufs beside it: the file gives both', async () => {
    const file = await fluidConfig({ mounts: datasetMounts(), targetPath: targetPath() });
    const withMountpoint = await cachefs(['mount', work, '--fluid-config', file]);
    expect(withMountpoint.code).toBe(2);
    expect(withMountpoint.stderr.trim()).toMatch(/--fluid-config gives the mount point \(targetPath\): drop MOUNTPOINT/);
    const withUfs = await cachefs(['mount', '--fluid-config', file, '--ufs', 's3://fluid-data']);
    expect(withUfs.code).toBe(2);
    expect(withUfs.stderr.trim()).toMatch(/--ufs excludes --fluid-config/);
  });
});

describe('UFS_OPTION_KEYS', () => {
  it('lists exactly the option keys each backend reads', async () => {
    for (const [scheme, file] of [['s3', 's3.ts'], ['oss', 'oss.ts'], ['cos', 'cos.ts']] as const) {
      const text = await readFile(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/ufs', file), 'utf8');
      const read = new Set([...text.matchAll(/options\['([a-z0-9]+\.[A-Za-z0-9]+)'\]/g)].map((m) => m[1]!));
      expect([...read].sort()).toEqual([...UFS_OPTION_KEYS[scheme]].sort());
    }
  });
});
