/**
 * One version per open: a GET answered with another version of the object than the one
 * the file was opened with fails with STALE before a byte of it is used — also against
 * a server that ignores If-Match (s3rver does), where the version asked for could only
 * be checked in the answer's ETag.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { LocalUfs } from '../../src/ufs/local.js';
import { mountCachefs, sh, sha256Of, stopAllMounts } from '../support/cachefs.js';
import { createHash } from 'node:crypto';
import { openUfs } from '../../src/ufs/open-ufs.js';
import type { Ufs } from '../../src/ufs/ufs.js';
import { parseUfsUri } from '../../src/ufs/uri.js';
import { startS3Server, type S3TestServer } from '../support/s3-server.js';

const MiB = 1024 * 1024;
let server: S3TestServer;
let ufs: Ufs;

beforeAll(async () => {
  server = await startS3Server({ buckets: ['data'] });
  ufs = await openUfs(parseUfsUri('s3://data'), {
    's3.endpoint': server.endpoint,
    's3.region': 'us-east-1',
    's3.accessKeyId': 'S3RVER',
    's3.secretAccessKey': 'S3RVER',
  });
}, 60_000);

afterAll(async () => {
  await ufs?.close();
  await server?.close();
});

describe('a GET of an object rewritten since it was opened', () => {
  it('fails with STALE against a server that ignores If-Match, and hands over none of the new bytes', async () => {
    const v1 = randomBytes(2 * MiB);
    const v2 = randomBytes(2 * MiB);
    await server.putObject('data', 'f.bin', v1);
    const opened = (await ufs.stat('f.bin'))!;
    await server.putObject('data', 'f.bin', v2);
    expect((await ufs.stat('f.bin'))!.etag).not.toBe(opened.etag);
    const dest = Buffer.alloc(MiB);
    let progressed = 0;
    const read = ufs.readInto('f.bin', 0, dest, { etag: opened.etag, onProgress: (n) => (progressed = n) });
    await expect(read).rejects.toMatchObject({ code: 'STALE' });
    expect(progressed).toBe(0);
    expect(dest.equals(Buffer.alloc(MiB))).toBe(true);
    // The version it now has reads as before.
    const now = (await ufs.stat('f.bin'))!;
    expect(await ufs.readInto('f.bin', 0, dest, { etag: now.etag })).toBe(MiB);
    expect(dest.equals(v2.subarray(0, MiB))).toBe(true);
  });
});

describe('a file:// file rewritten in place since it was opened', () => {
  it('is another version even with its size and mtime put back, and a read of the old one fails with STALE', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-version-'));
    try {
      const file = path.join(dir, 'f.bin');
      const v1 = randomBytes(64 * 1024);
      await writeFile(file, v1);
      const local = new LocalUfs(parseUfsUri(`file://${dir}`));
      const opened = (await local.stat('f.bin'))!;
      const { mtimeNs } = await stat(file, { bigint: true });
      // Rewrite a byte in place, then put the mtime back to the nanosecond (as touch -d or rsync -t would).
      const fh = await open(file, 'r+');
      await fh.write(Buffer.from([v1[100]! ^ 0xff]), 0, 1, 100);
      await fh.close();
      const touched = await sh(`touch -m -d @${mtimeNs / 1_000_000_000n}.${String(mtimeNs % 1_000_000_000n).padStart(9, '0')} ${file}`);
      expect(touched.code).toBe(0);
      expect((await stat(file, { bigint: true })).mtimeNs).toBe(mtimeNs);
      expect((await local.stat('f.bin'))!.etag).not.toBe(opened.etag);
      const dest = Buffer.alloc(v1.length);
      await expect(local.readInto('f.bin', 0, dest, { etag: opened.etag })).rejects.toMatchObject({ code: 'STALE' });
      expect(dest.equals(Buffer.alloc(v1.length))).toBe(true);
      await local.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a file of a mount whose object is rewritten while it is open', () => {
  it('never mixes versions: the open file gets ESTALE, and a new open reads the new object whole', async () => {
    const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    const v1 = randomBytes(2 * MiB);
    const v2 = randomBytes(2 * MiB);
    await server.putObject('data', 'm.bin', v1);
    const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '', AWS_CA_BUNDLE: '' };
    // No readahead: the second block is fetched only when asked for, after the rewrite
    // (with readahead it is fetched with the first, and the file reads as the old version, whole).
    const m = await mountCachefs({ ufs: 's3://data', args: ['--s3-endpoint', server.endpoint, '--block-size', '1MiB', '--readahead', '0'], env });
    let goDir: string | undefined;
    try {
      const file = path.join(m.mountpoint, 'm.bin');
      goDir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-one-version-'));
      const go = path.join(goDir, 'go');
      // A reader that reads the first MiB past the page cache, waits for the word (a file:
      // a file keeps stdin out of it), then reads the second.
      const script = [
        'import mmap, os, sys, hashlib, time',
        `fd = os.open(${JSON.stringify(file)}, os.O_RDONLY | os.O_DIRECT)`,
        'buf = mmap.mmap(-1, 1 << 20)',
        'os.preadv(fd, [buf], 0)',
        'print(hashlib.sha256(buf).hexdigest(), flush=True)',
        `while not os.path.exists(${JSON.stringify(go)}): time.sleep(0.02)`,
        'try:',
        '    os.preadv(fd, [buf], 1 << 20)',
        '    print("read", hashlib.sha256(buf).hexdigest(), flush=True)',
        'except OSError as e:',
        '    print("error", os.strerror(e.errno), flush=True)',
      ].join('\n');
      const { spawn } = await import('node:child_process');
      const reader = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      const lines: string[] = [];
      // Whole lines only: a line may come in more than one chunk (print writes its parts apart).
      let text = '';
      reader.stdout.on('data', (d: Buffer) => {
        text += d.toString();
        const end = text.lastIndexOf('\n');
        if (end < 0) return;
        lines.push(...text.slice(0, end).split('\n'));
        text = text.slice(end + 1);
      });
      const exited = new Promise<void>((r) => reader.once('exit', () => r()));
      await vi.waitFor(() => expect(lines.length).toBeGreaterThan(0), { timeout: 30_000 });
      expect(lines).toEqual([sha(v1.subarray(0, MiB))]);
      await server.putObject('data', 'm.bin', v2);
      await writeFile(go, '');
      await exited;
      // Not the second MiB of v2 after the first of v1: the open file is stale.
      expect(lines[1]).toBe(`error ${'Stale file handle'}`);
      // A new open sees the new object, whole (no page of v1 kept).
      expect(await sha256Of(file)).toBe(sha(v2));
    } finally {
      if (goDir) await rm(goDir, { recursive: true, force: true });
      await stopAllMounts();
    }
  });
});
