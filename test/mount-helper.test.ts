/**
 * `mount -t cachefs` and fstab entries through the mount(8) helpers `mount.cachefs` and
 * `mount.fuse.cachefs`: real mounts of the tests' S3 server read byte-exact, `umount`
 * ends them and every cachefs process, bad options end in one line and a non-zero
 * exit, and the S3 secret (given in files) never shows in /proc/mounts, the argv of a
 * cachefs process or the log.
 *
 * mount(8) finds helpers only in /sbin, /sbin/fs.d and /sbin/fs (libmount's fixed
 * search path; no environment variable moves it), so the helpers are installed as
 * /sbin symlinks for the run. The symlink itself is the lock against a concurrent
 * run: it is created exclusively and points into a directory named after this
 * process's pid, so a run that died leaves a link the next run recognises as stale.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readlinkSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sha256Of } from './support/cachefs.js';
import { forceUnmount, isAlive, isMounted, runCommand, waitFor, type CommandResult } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';
import { mountCommandArgs, parseHelperArgs, splitOptions } from '../src/cli/mount-helper.js';
import { MOUNT_DEFAULTS, parseMountConfig, type MountFlags } from '../src/cli/mount-config.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin');
const HELPERS = ['mount.cachefs', 'mount.fuse.cachefs'];
const SBIN = '/sbin';
/** Where this run's /sbin links point: the pid in the name tells a later run whether we are alive. */
const OWN = path.join(os.tmpdir(), `cachefs-mount-helpers-${process.pid}`);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const big = randomBytes(3 * 1024 * 1024 + 4321);
const small = Buffer.from('hello through fstab\n');

let s3: S3TestServer;
let work: string;
let mnt: string;
let cacheDir: string;
let logFile: string;
let keyIdFile: string;
let secretFile: string;

/** mount(8)'s environment: no AWS credentials, so the mount can only have them from the files. */
function mountEnv(): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_') && !k.startsWith('CACHEFS_')));
  return { ...env, AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' };
}

function run(cmd: string, args: string[]): Promise<CommandResult> {
  return runCommand(cmd, args, { env: mountEnv(), timeoutMs: 60_000 });
}

/** The options of a mount of the test server, credentials from files. */
function options(extra: string[] = []): string {
  return [
    'ro',
    `s3-endpoint=${s3.endpoint}`,
    'block-size=1MiB',
    `cache-dir=${cacheDir}`,
    `log-file=${logFile}`,
    'log-level=debug',
    `option-from-file=s3.accessKeyId=${keyIdFile}`,
    `option-from-file=s3.secretAccessKey=${secretFile}`,
    ...extra,
  ].join(',');
}

/** PIDs of the processes whose command line names `mountpoint` (the helper, the supervisor, the serving process). */
async function processesOf(mountpoint: string): Promise<{ pid: number; argv: string[] }[]> {
  const out: { pid: number; argv: string[] }[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const argv = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean);
    if (argv.includes(mountpoint) && argv.some((a) => a.endsWith('/bin/cachefs') || a.endsWith('mount-helper-main.js'))) out.push({ pid: Number(name), argv });
  }
  return out;
}

/** The /proc/mounts line of `mountpoint`. */
async function mountsLine(mountpoint: string): Promise<string | undefined> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text.split('\n').find((line) => line.split(' ')[1] === mountpoint);
}

/** Kills by PID whatever still serves `mountpoint` and unmounts it: the cleanup after any test, passed or failed. */
async function cleanUp(mountpoint: string): Promise<void> {
  for (const { pid } of await processesOf(mountpoint)) killQuietly(pid, 'SIGTERM');
  await waitFor(async () => (await processesOf(mountpoint)).length === 0, { timeoutMs: 10_000 }).catch(async () => {
    for (const { pid } of await processesOf(mountpoint)) killQuietly(pid, 'SIGKILL');
  });
  await forceUnmount(mountpoint);
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // gone already
  }
}

/** Links /sbin/NAME to this run's copy, waiting while another live run holds it. */
async function installHelper(name: string): Promise<void> {
  const link = path.join(SBIN, name);
  const target = path.join(OWN, name);
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      symlinkSync(target, link);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const held = readLinkOrUndefined(link);
    const owner = held === undefined ? undefined : /cachefs-mount-helpers-(\d+)\//.exec(held)?.[1];
    if (held !== undefined && owner === undefined) throw new Error(`${link} exists and is not a test's link (${held}): not replacing an installed helper`);
    if (owner !== undefined && !isAlive(Number(owner))) unlinkQuietly(link);
    else if (Date.now() > deadline) throw new Error(`${link} is held by the test run of pid ${owner} for more than 5 minutes`);
    else await new Promise((r) => setTimeout(r, 500));
  }
}

function removeHelpers(): void {
  for (const name of HELPERS) {
    const link = path.join(SBIN, name);
    if (readLinkOrUndefined(link) === path.join(OWN, name)) unlinkQuietly(link);
  }
  rmSync(OWN, { recursive: true, force: true });
}

function readLinkOrUndefined(link: string): string | undefined {
  try {
    return readlinkSync(link);
  } catch {
    return undefined;
  }
}

function unlinkQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // someone else removed it
  }
}

// A run cut short (a hook that timed out never reaches afterAll) still gives the links back.
process.once('exit', removeHelpers);

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-helper-'));
  mnt = path.join(work, 'mnt');
  cacheDir = path.join(work, 'cache');
  logFile = path.join(work, 'cachefs.log');
  keyIdFile = path.join(work, 'key-id');
  secretFile = path.join(work, 'secret');
  await mkdir(mnt);
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'big.bin', big);
  await s3.putObject('data', 'dir/small.txt', small);
  await writeFile(keyIdFile, `${s3.accessKeyId}\n`, { mode: 0o600 });
  await writeFile(secretFile, `${s3.secretAccessKey}\n`, { mode: 0o600 });
  mkdirSync(OWN, { recursive: true });
  for (const name of HELPERS) symlinkSync(path.join(BIN, name), path.join(OWN, name));
  for (const name of HELPERS) await installHelper(name);
}, 360_000);

afterEach(async () => {
  await cleanUp(mnt);
});

afterAll(async () => {
  if (mnt) await cleanUp(mnt);
  removeHelpers();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Unmounts with umount(8) and waits for every process of the mount to be gone (by PID). */
async function umountLeavesNoProcess(mountpoint: string): Promise<void> {
  const pids = (await processesOf(mountpoint)).map((p) => p.pid);
  // The helper has exited; what serves the mount is the supervisor and its serving process.
  expect(pids.length).toBeGreaterThanOrEqual(2);
  const r = await run('umount', [mountpoint]);
  expect(r.code, r.stderr).toBe(0);
  expect(await isMounted(mountpoint)).toBe(false);
  await waitFor(() => pids.every((pid) => !isAlive(pid)), { timeoutMs: 15_000, what: `pids ${pids.join(', ')} to exit after umount` });
}

/** The secret (S3RVER) shows nowhere: not in /proc/mounts, the argv of any cachefs process, or the log. */
async function expectSecretHidden(mountpoint: string): Promise<void> {
  const secret = s3.secretAccessKey;
  const line = await mountsLine(mountpoint);
  expect(line, 'the mount in /proc/mounts').toBeDefined();
  expect(line).not.toContain(secret);
  const procs = await processesOf(mountpoint);
  expect(procs.length).toBeGreaterThanOrEqual(2);
  for (const p of procs) expect(p.argv.join(' '), `argv of pid ${p.pid}`).not.toContain(secret);
  const ps = await runCommand('ps', ['-eo', 'args']);
  for (const l of ps.stdout.split('\n').filter((l) => l.includes(mountpoint))) expect(l).not.toContain(secret);
  const log = await readFile(logFile, 'utf8');
  expect(log.length).toBeGreaterThan(0);
  expect(log).not.toContain(secret);
}

describe('mount -t cachefs', () => {
  it('mounts s3://data for real, reads byte-exact, hides the secret, and umount leaves no process', async () => {
    const r = await run('mount', ['-t', 'cachefs', 's3://data', mnt, '-o', options(['_netdev', 'nofail', 'noatime', 'allow_other'])]);
    expect(r.code, r.stderr).toBe(0);
    // Returned once the mount answers: no waiting needed.
    expect(await isMounted(mnt)).toBe(true);
    expect(await sha256Of(path.join(mnt, 'big.bin'))).toBe(sha(big));
    expect(await readFile(path.join(mnt, 'dir/small.txt'))).toEqual(small);
    const line = (await mountsLine(mnt))!;
    expect(line.split(' ')[2]).toBe('fuse.cachefs');
    // The source is the URI, so findmnt and df name what is mounted.
    expect(line.split(' ')[0]).toBe('s3://data');
    expect(line.split(' ')[3]).toMatch(/^ro,/);
    expect(line).toContain('allow_other');
    await expectSecretHidden(mnt);
    await umountLeavesNoProcess(mnt);
  });

  it('mounts an fstab entry with `mount -T FILE MOUNTPOINT` through mount.fuse.cachefs', async () => {
    const fstab = path.join(work, 'fstab');
    await writeFile(fstab, `# a test fstab\ns3://data/dir ${mnt} fuse.cachefs ${options(['_netdev', 'nofail', 'x-systemd.automount', 'defaults'])} 0 0\n`);
    const r = await run('mount', ['-T', fstab, mnt]);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(path.join(mnt, 'small.txt'))).toEqual(small);
    await expectSecretHidden(mnt);
    await umountLeavesNoProcess(mnt);
  });
});

describe('bad mount options', () => {
  const cases: [string, string, RegExp][] = [
    ['rw (mount(8) adds it without ro)', 'defaults', /read-only: give 'ro'/],
    ['a secret given inline', 'ro,option=s3.secretAccessKey=inline-Secret-77', /refusing the secret option 's3\.secretAccessKey' given inline/],
    ['an unknown option', 'ro,cache-sise=1GiB', /unknown mount option 'cache-sise'/],
    ['a flag without its value', 'ro,cache-dir', /mount option 'cache-dir' needs a value/],
    ['a value for a switch', 'ro,no-sharing=yes', /mount option 'no-sharing' takes no value/],
    ['the UFS as an option', 'ro,ufs=s3://other', /the UFS URI is the mount's source/],
  ];
  for (const [what, opts, message] of cases) {
    it(`refuses ${what} in one line with a non-zero exit`, async () => {
      const r = await run('mount', ['-t', 'cachefs', 's3://data', mnt, '-o', opts]);
      expect(r.code).not.toBe(0);
      const lines = r.stderr.trim().split('\n');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^mount\.cachefs: /);
      expect(lines[0]).toMatch(message);
      expect(lines[0]).not.toContain('inline-Secret-77');
      expect(await isMounted(mnt)).toBe(false);
    });
  }

  it('passes a bad value on to cachefs mount, which refuses it in one line', async () => {
    const r = await run('mount', ['-t', 'cachefs', 's3://data', mnt, '-o', `ro,cache-size=lots,cache-dir=${cacheDir}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n'), r.stderr).toEqual([expect.stringMatching(/^cachefs: invalid --cache-size 'lots'/)]);
    expect(await isMounted(mnt)).toBe(false);
  });

  it('refuses a source that is neither a UFS URI nor master=HOST:PORT', async () => {
    const r = await run('mount', ['-t', 'cachefs', 'data', mnt, '-o', 'ro']);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim()).toMatch(/^mount\.cachefs: invalid source 'data': expected a UFS URI/);
  });
});

describe('the helper convention (no mount)', () => {
  it('takes -sfnv, -t and -o before or after the operands', () => {
    const a = parseHelperArgs(['-sfnv', 's3://b/p', '/mnt', '-o', 'ro,cache-size=1GiB', '-t', 'fuse.cachefs']);
    expect(a).toEqual({ source: 's3://b/p', mountpoint: '/mnt', options: 'ro,cache-size=1GiB', sloppy: true, fake: true, verbose: true });
    expect(() => parseHelperArgs(['s3://b', '/mnt', '-t', 'ext4'])).toThrow(/unexpected file-system type 'ext4'/);
    expect(() => parseHelperArgs(['s3://b', '/mnt', '-N', '1234'])).toThrow(/another namespace/);
    expect(() => parseHelperArgs(['s3://b'])).toThrow(/expected SOURCE and MOUNTPOINT, got 1 operand/);
  });

  it('turns options into cachefs mount flags of the same name, master=HOST:PORT into --master', () => {
    const args = mountCommandArgs({ source: 'master=m1:19998', mountpoint: '/mnt', options: 'ro,cache-group=g,no-sharing,allow_other,auth-token-file=/etc/cachefs/token,x-systemd.requires=net.target,_netdev,users,nosuid,nodev', sloppy: false, fake: false, verbose: false });
    expect(args).toEqual(['/mnt', '--master', 'm1:19998', '--cache-group', 'g', '--no-sharing', '--allow-other', '--auth-token-file', '/etc/cachefs/token']);
  });

  it('ignores unknown options only when sloppy (-s)', () => {
    const inv = { source: 's3://b', mountpoint: '/mnt', options: 'ro,frobnicate', sloppy: true, fake: false, verbose: false };
    expect(mountCommandArgs(inv)).toEqual(['/mnt', '--ufs', 's3://b']);
    expect(() => mountCommandArgs({ ...inv, sloppy: false })).toThrow(/unknown mount option 'frobnicate'/);
  });

  it('keeps commas inside double quotes in one option', () => {
    expect(splitOptions('ro,option="s3.endpoint=http://h:1/a,b",nofail')).toEqual(['ro', 'option=s3.endpoint=http://h:1/a,b', 'nofail']);
    expect(() => splitOptions('ro,"x')).toThrow(/unbalanced/);
  });
});

describe('the source /proc/mounts shows', () => {
  const flags = (extra: Partial<MountFlags>): MountFlags => ({ ...MOUNT_DEFAULTS, sharing: true, option: [], optionFromFile: [], ...extra });

  it('is the UFS URI as given, or master=HOST:PORT', () => {
    expect(parseMountConfig('/mnt', flags({ ufs: 's3://data/a,b c' })).source).toBe('s3://data/a,b c');
    expect(parseMountConfig('/mnt', flags({ master: '10.0.0.1:19998', insecure: true })).source).toBe('master=10.0.0.1:19998');
  });

  it('never carries credentials: a URI with them is refused', () => {
    expect(() => parseMountConfig('/mnt', flags({ ufs: 's3://AKID:secret@data/p' }))).toThrow(/credentials are not allowed in the URI/);
  });
});
