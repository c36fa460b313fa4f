/**
 * Bad input to `cachefs mount`: each case ends with one line naming the bad value
 * and what was expected, a non-zero exit code, and nothing left mounted.
 */
import { createServer, type Server } from 'node:net';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, stopAllMounts } from './support/cachefs.js';
import { freePort, isMounted } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

let s3: S3TestServer;
let work: string;
let mnt: string;
let silent: Server;
let silentPort: number;
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '' };

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-errors-'));
  mnt = path.join(work, 'mnt');
  await mkdir(mnt);
  await writeFile(path.join(work, 'a-file'), 'x');
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'x.txt', 'x');
  // Accepts connections and never answers: an endpoint that hangs.
  silent = createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  silentPort = (silent.address() as { port: number }).port;
});

afterAll(async () => {
  await stopAllMounts();
  silent?.close();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

async function mountFails(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<{ code: number; line: string; ms: number }> {
  const t0 = Date.now();
  const r = await cachefs(['mount', ...args, '--cache-dir', path.join(work, 'cache')], { ...env, ...extraEnv });
  const ms = Date.now() - t0;
  expect(r.code, r.stderr).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^cachefs: /);
  expect(await isMounted(mnt)).toBe(false);
  return { code: r.code, line: lines[0]!, ms };
}

describe('cachefs mount refuses bad input', () => {
  const s3args = (): string[] => ['--s3-endpoint', s3.endpoint];

  it('a missing mount point', async () => {
    expect((await mountFails([path.join(work, 'nope'), '--ufs', 's3://data', ...s3args()])).line).toMatch(/mount point .*nope does not exist/);
  });
  it('a mount point that is not a directory', async () => {
    expect((await mountFails([path.join(work, 'a-file'), '--ufs', 's3://data', ...s3args()])).line).toMatch(/a-file is not a directory/);
  });
  it('a mount point that is already a mount', async () => {
    await mkdir(path.join(work, 'taken'));
    const m = await mountCachefs({ ufs: 's3://data', mountpoint: path.join(work, 'taken'), args: s3args(), env });
    const r = await cachefs(['mount', m.mountpoint, '--ufs', 's3://data', ...s3args(), '--cache-dir', path.join(work, 'cache2')], env);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim()).toMatch(/^cachefs: mount point .*taken is already a mount: unmount it first$/);
    expect(await isMounted(m.mountpoint)).toBe(true); // the first mount is untouched
    await m.stop();
  });
  it('an unknown URI scheme', async () => {
    expect((await mountFails([mnt, '--ufs', 'ftp://data'])).line).toMatch(/invalid UFS URI 'ftp:\/\/data': unknown scheme 'ftp:'/);
  });
  it('a malformed URI', async () => {
    expect((await mountFails([mnt, '--ufs', 's3:/data'])).line).toMatch(/invalid UFS URI 's3:\/data': expected s3:\/\/bucket/);
    expect((await mountFails([mnt, '--ufs', 's3://Bad_Bucket'])).line).toMatch(/bucket name 'Bad_Bucket'/);
  });
  it('a bucket that does not exist', async () => {
    const r = await mountFails([mnt, '--ufs', 's3://no-such-bucket', ...s3args()]);
    expect(r.line).toBe('cachefs: bucket not found: s3://no-such-bucket');
  });
  it('wrong credentials, without printing them', async () => {
    const r = await mountFails([mnt, '--ufs', 's3://data', ...s3args()], { AWS_ACCESS_KEY_ID: 'WRONGKEY', AWS_SECRET_ACCESS_KEY: 'wrong-secret-value' });
    expect(r.line).toMatch(/^cachefs: access denied to s3:\/\/data/);
    expect(r.line).not.toMatch(/WRONGKEY|wrong-secret-value/);
  });
  it('an endpoint that refuses connections, within a few seconds', async () => {
    const port = await freePort();
    const r = await mountFails([mnt, '--ufs', 's3://data', '--s3-endpoint', `http://127.0.0.1:${port}`]);
    expect(r.line).toMatch(/cannot reach the object store for s3:\/\/data/);
    expect(r.ms).toBeLessThan(8000);
  });
  it('an endpoint that never answers, within a few seconds', async () => {
    const r = await mountFails([mnt, '--ufs', 's3://data', '--s3-endpoint', `http://127.0.0.1:${silentPort}`]);
    expect(r.line).toMatch(/cannot reach the object store for s3:\/\/data/);
    // The check's own deadline, and three node processes starting (detach, supervisor, serving):
    // 10.5 s in a CI run on two cores; the SDK left alone would wait 30 s a try.
    expect(r.ms).toBeLessThan(15_000);
  });
  it('a cache dir that is not writable', async () => {
    const bad = path.join(work, 'a-file', 'cache');
    const background = await cachefs(['mount', mnt, '--ufs', 's3://data', ...s3args(), '--cache-dir', bad], env);
    expect(background.code).toBe(2);
    expect(background.stderr.trim()).toBe(`cachefs: cannot write the log file in the cache dir (is --cache-dir ${bad} writable?) '${bad}/cachefs.log': ENOTDIR`);
    const foreground = await cachefs(['mount', mnt, '--ufs', 's3://data', ...s3args(), '--cache-dir', bad, '--foreground'], env);
    expect(foreground.code).toBe(2);
    expect(foreground.stderr.trim()).toMatch(new RegExp(`^cachefs: cache dir '${bad}/[0-9a-f]{16}' is not writable: ENOTDIR`));
    expect(await isMounted(mnt)).toBe(false);
  });
  it('sizes that are not sizes', async () => {
    expect((await mountFails([mnt, '--ufs', 's3://data', '--cache-size', '4XB'])).line).toBe("cachefs: invalid --cache-size '4XB': expected a size like 4MiB, 2GiB, 512KiB or a number of bytes");
    expect((await mountFails([mnt, '--ufs', 's3://data', '--cache-size', '0'])).line).toBe("cachefs: invalid --cache-size '0': must be at least 1B");
    expect((await mountFails([mnt, '--ufs', 's3://data', '--cache-size', '-1'])).line).toMatch(/invalid --cache-size '-1': expected a size/);
  });
  it('a block size outside 1 MiB - 256 MiB', async () => {
    expect((await mountFails([mnt, '--ufs', 's3://data', '--block-size', '512KiB'])).line).toBe("cachefs: invalid --block-size '512KiB': must be at least 1MiB");
    expect((await mountFails([mnt, '--ufs', 's3://data', '--block-size', '1GiB'])).line).toBe("cachefs: invalid --block-size '1GiB': must be at most 256MiB");
  });
});

describe('cachefs mount in the background', () => {
  it('returns 0 only once the mount answers, and umount removes it and ends the process', async () => {
    const bg = path.join(work, 'bg');
    await mkdir(bg);
    const pidFile = path.join(work, 'bg.pid');
    const r = await cachefs(['mount', bg, '--ufs', 's3://data', '--s3-endpoint', s3.endpoint, '--cache-dir', path.join(work, 'bg-cache'), '--pid-file', pidFile], env);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    try {
      expect(r.code, r.stderr).toBe(0);
      expect(await isMounted(bg)).toBe(true);
      const u = await cachefs(['umount', bg]);
      expect(u.code, u.stderr).toBe(0);
      expect(await isMounted(bg)).toBe(false);
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && isAlive(pid)) await new Promise((res) => setTimeout(res, 100));
      expect(isAlive(pid)).toBe(false);
    } finally {
      if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    }
  });
  it('fails with the reason of the background process', async () => {
    const r = await cachefs(['mount', mnt, '--ufs', 's3://no-such-bucket', '--s3-endpoint', s3.endpoint, '--cache-dir', path.join(work, 'bg-cache')], env);
    expect(r.code).toBe(3);
    expect(r.stderr.trim()).toBe('cachefs: bucket not found: s3://no-such-bucket');
  });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
