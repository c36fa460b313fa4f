/**
 * Cancellation end to end: a reader with a signal handler, blocked on a cold read of a
 * mount whose object store hangs (s3rver behind the tests' wrapper, told to accept the
 * GET and never answer), gets EINTR within a second of its signal, and nothing is left
 * behind: no request, read or open file in flight, no pin, the GET's connection closed
 * by the mount, and the mount still reads other files.
 *
 * The reader reads with O_DIRECT: the kernel sends INTERRUPT only for a task waiting in
 * a request's answer, and a buffered read waits on a page that the kernel's readahead
 * requested in the background (killable, never interrupted by a handled signal).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountCachefs, sha256Of, stopAllMounts, type TestMount } from './support/cachefs.js';
import { waitFor } from './support/processes.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const MiB = 1024 * 1024;
const slow = randomBytes(MiB);
const other = randomBytes(3 * MiB + 17);

/** Reads 64 KiB of a file with SIGUSR1 handled without SA_RESTART; says what the read returned. */
const READER = `
use strict; use warnings;
use POSIX qw(:signal_h);
use Fcntl;
my ($path) = @ARGV;
sigaction(SIGUSR1, POSIX::SigAction->new(sub { }, POSIX::SigSet->new, 0)) or die "sigaction: $!";
sysopen(my $fh, $path, O_RDONLY | O_DIRECT) or die "open: $!";
$| = 1;
print "reading\\n";
my $n = sysread($fh, my $buf, 65536);
if (defined $n) { print "read $n\\n"; exit 0 }
print $!{EINTR} ? "EINTR\\n" : "error $!\\n";
exit 1;
`;

let s3: S3TestServer;
let work: string;
let mnt: TestMount;
const env = (): NodeJS.ProcessEnv => ({ AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' });

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-interrupt-'));
  await writeFile(path.join(work, 'reader.pl'), READER);
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'slow.bin', slow);
  await s3.putObject('data', 'other.bin', other);
  mnt = await mountCachefs({ ufs: 's3://data', args: ['--s3-endpoint', s3.endpoint, '--block-size', '1MiB'], env: env() });
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('an interrupted read', () => {
  it('returns EINTR within a second of the reader\'s signal while the store hangs, and leaves nothing behind', async () => {
    const before = await mnt.metrics();
    s3.stallObjectReads((key) => key === 'slow.bin');
    const reader = spawn('perl', [path.join(work, 'reader.pl'), path.join(mnt.mountpoint, 'slow.bin')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    reader.stdout.on('data', (d: Buffer) => (out += d.toString()));
    reader.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => reader.once('exit', (code) => resolve(code)));
    try {
      // Blocked in the read, with its GET at the store.
      await waitFor(() => out.includes('reading') && s3.stalledReads().total > 0, { timeoutMs: 20_000, what: 'the reader to block on a stalled GET' });
      await new Promise((r) => setTimeout(r, 200));
      expect(out).toBe('reading\n');

      const signalled = Date.now();
      reader.kill('SIGUSR1');
      const code = await Promise.race([exited, new Promise<'blocked'>((r) => setTimeout(() => r('blocked'), 3000))]);
      const tookMs = Date.now() - signalled;
      expect(code, `the reader still blocked 3 s after its signal; it printed: ${out}`).toBe(1);
      expect(out).toBe('reading\nEINTR\n');
      expect(tookMs).toBeLessThan(1000);
    } finally {
      reader.kill('SIGKILL');
      s3.stallObjectReads(undefined);
    }

    // Nothing left: the GET given up (its connection closed), no request, read or open file in flight, no pin.
    await waitFor(async () => {
      const m = await mnt.metrics();
      return (
        s3.stalledReads().open === 0 &&
        m.value('cachefs_fuse_requests_in_flight') === 0 &&
        m.value('cachefs_vfs_reads_waiting') === 0 &&
        m.value('cachefs_vfs_open_files') === 0
      );
    }, { timeoutMs: 10_000, what: 'the interrupted read to let go of everything' }).catch(async () => {
      const m = await mnt.metrics();
      const left = { stalledConnectionsOpen: s3.stalledReads().open, requests: m.value('cachefs_fuse_requests_in_flight'), reads: m.value('cachefs_vfs_reads_waiting'), files: m.value('cachefs_vfs_open_files') };
      throw new Error(`left behind after the interrupted read: ${JSON.stringify(left)}`);
    });
    const after = await mnt.metrics();
    expect(after.value('cachefs_pinned_blocks')).toBe(before.value('cachefs_pinned_blocks'));
    expect(after.value('cachefs_fuse_errors_total', { op: 'read', errno: 'EINTR' })).toBe(1);

    // The mount still serves: another file, and the same one now that the store answers.
    expect(await sha256Of(path.join(mnt.mountpoint, 'other.bin'))).toBe(createHash('sha256').update(other).digest('hex'));
    expect(await sha256Of(path.join(mnt.mountpoint, 'slow.bin'))).toBe(createHash('sha256').update(slow).digest('hex'));
  }, 60_000);
});
