/**
 * Finding 5 of issue 24, the `file://` half: a folder source served FIFOs (an
 * open that blocks a thread of libuv's pool until a writer comes; four of them
 * stall every other read of the process) and followed symlinks out of its root.
 * Each attack is tried on a `LocalUfs` and must fail: a FIFO is refused at once
 * (and does not hold the pool), a link that leads out is neither listed, found
 * nor read, while links that stay inside keep working.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalUfs } from '../../src/ufs/local.js';
import { parseUfsUri } from '../../src/ufs/uri.js';
import { runCommand } from '../support/processes.js';

let work: string;
let root: string;
let ufs: LocalUfs;
const DATA = randomBytes(64 * 1024 + 5);
const OUTSIDE = 'the secret next door\n';

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sec-local-'));
  root = path.join(work, 'root');
  await mkdir(path.join(root, 'sub'), { recursive: true });
  await mkdir(path.join(work, 'outside'));
  await writeFile(path.join(root, 'data.bin'), DATA);
  await writeFile(path.join(work, 'outside', 'secret.txt'), OUTSIDE);
  const mkfifo = await runCommand('mkfifo', [path.join(root, 'pipe')]);
  expect(mkfifo.code, mkfifo.stderr).toBe(0);
  await symlink(path.join(work, 'outside', 'secret.txt'), path.join(root, 'escape'));
  await symlink('../../outside', path.join(root, 'sub', 'out-dir'));
  await symlink('../data.bin', path.join(root, 'sub', 'inside-link'));
  ufs = new LocalUfs(parseUfsUri(`file://${root}`));
});

afterAll(async () => {
  // Code that opened the FIFO for reading blocks until a writer comes: be that writer (an
  // O_RDWR open of a FIFO never blocks), so nothing stays stuck after a failed run.
  const fifo = await open(path.join(root, 'pipe'), constants.O_RDWR).catch(() => undefined);
  await fifo?.close();
  await ufs?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Resolves to what `p` settled with, or 'pending' after `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'pending'>((resolve) => (timer = setTimeout(() => resolve('pending'), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe('file:// sources', () => {
  it('refuse a FIFO at once, without holding a thread of the pool, and go on reading files', async () => {
    // More than libuv's four pool threads: on a blocking open they would all be stuck.
    const reads = Array.from({ length: 6 }, () => ufs.readInto('pipe', 0, Buffer.alloc(4096), { etag: 'any' }).then(() => 'read', (err: unknown) => err));
    const settled = await within(Promise.all(reads), 2000);
    expect(settled).not.toBe('pending');
    for (const err of settled as unknown[]) expect(err).toMatchObject({ code: 'ACCESS_DENIED', message: expect.stringMatching(/pipe: not a regular file/) });
    const dest = Buffer.alloc(DATA.length);
    expect(await within(ufs.readInto('data.bin', 0, dest), 2000)).toBe(DATA.length);
    expect(dest.equals(DATA)).toBe(true);
    expect(await ufs.stat('pipe')).toBeNull();
    expect((await ufs.list('')).objects.map((o) => o.key)).not.toContain('pipe');
  });

  it('neither list, find nor read a symlink that leads out of the root', async () => {
    expect(await ufs.stat('escape')).toBeNull();
    await expect(ufs.readInto('escape', 0, Buffer.alloc(64))).rejects.toMatchObject({ code: 'ACCESS_DENIED', message: expect.stringMatching(/escape: a symlink leads out of the folder/) });
    const top = await ufs.list('');
    expect(top.objects.map((o) => o.key).sort()).toEqual(['data.bin']);
    expect(top.prefixes).toEqual(['sub/']);
    // A directory link out of the root: not listed, and listing through it shows nothing.
    const sub = await ufs.list('sub/');
    expect(sub.prefixes).toEqual([]);
    expect(sub.objects.map((o) => o.key)).toEqual(['sub/inside-link']);
    expect(await ufs.list('sub/out-dir/')).toEqual({ objects: [], prefixes: [], nextToken: undefined });
    expect(await ufs.stat('sub/out-dir/secret.txt')).toBeNull();
    await expect(ufs.readInto('sub/out-dir/secret.txt', 0, Buffer.alloc(64))).rejects.toMatchObject({ code: 'ACCESS_DENIED' });
  });

  it('still follow a symlink that stays inside the root', async () => {
    const st = await ufs.stat('sub/inside-link');
    expect(st).toMatchObject({ size: DATA.length });
    const dest = Buffer.alloc(DATA.length);
    expect(await ufs.readInto('sub/inside-link', 0, dest, { etag: st!.etag })).toBe(DATA.length);
    expect(dest.equals(DATA)).toBe(true);
  });

  it('stat the files of a listing page together as stat does each: a FIFO, a link out and a gone file are none, a link inside is its target', async () => {
    const keys = ['data.bin', 'escape', 'gone', 'pipe', 'sub/inside-link', 'sub/out-dir/secret.txt'];
    const together = await ufs.statFiles(keys);
    const alone = await Promise.all(keys.map((k) => ufs.stat(k)));
    expect(together).toEqual(alone);
    expect(together.map((o) => o?.size ?? null)).toEqual([DATA.length, null, null, null, DATA.length, null]);
  });
});
