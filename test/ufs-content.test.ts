/**
 * One table of content cases, run through a real FUSE mount against every kind of
 * source: file://, s3://, oss:// and cosn://, each with its own protocol server and
 * the real SDK.
 */
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountCachefs, sh, sha256Of, type TestMount } from './support/cachefs.js';
import { runCommand } from './support/processes.js';
import { startSource, type Source, type SourceKind } from './support/ufs-fixtures.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const files: Record<string, Buffer> = {
  'sizes/empty': Buffer.alloc(0),
  'sizes/one': randomBytes(1),
  'sizes/block-minus-1': randomBytes(MiB - 1),
  'sizes/block': randomBytes(MiB),
  'sizes/block-plus-1': randomBytes(MiB + 1),
  'big/twenty.bin': randomBytes(20 * MiB + 321),
  'd1/d2/d3/deep.txt': Buffer.from('deep\n'),
  'with space/ünïcødé 名前.txt': Buffer.from('unicode\n'),
};
const markers: Record<string, Buffer> = { 'marked/': Buffer.alloc(0), 'marked/inside.txt': Buffer.from('in\n'), 'emptymarker/': Buffer.alloc(0) };
const badNames: Record<string, Buffer> = {
  'odd/a//b.txt': Buffer.from('x'),
  'odd/./dot.txt': Buffer.from('x'),
  'odd/../up.txt': Buffer.from('x'),
  [`odd/${'n'.repeat(300)}`]: Buffer.from('x'),
  'odd/fine.txt': Buffer.from('fine\n'),
};

describe.each<SourceKind>(['file', 's3', 'oss', 'cos'])('content through a mount of %s://', (kind) => {
  let source: Source;
  let mnt: TestMount;

  beforeAll(async () => {
    const objects = { ...files, ...(kind === 'file' ? { 'emptymarker/': Buffer.alloc(0), 'marked/inside.txt': markers['marked/inside.txt']! } : markers) };
    source = await startSource(kind, kind === 'oss' || kind === 'cos' ? { ...objects, ...badNames } : objects);
    mnt = await mountCachefs({ ufs: source.uri, args: [...source.args, '--block-size', '1MiB'], env: source.env });
  }, 120_000);

  afterAll(async () => {
    await mnt?.stop();
    await source?.close();
  });

  it('reads files of size 0, 1, block-1, block, block+1 and 20 MiB byte-exactly', async () => {
    for (const name of Object.keys(files).filter((n) => n.startsWith('sizes/') || n.startsWith('big/'))) {
      expect(await sha256Of(path.join(mnt.mountpoint, name)), name).toBe(sha(files[name]!));
    }
  });

  it('reads at random offsets byte-exactly', async () => {
    const big = files['big/twenty.bin']!;
    const ranges = Array.from({ length: 100 }, (_, i) => ({ at: (i * 2654435761) % big.length, len: 1 + ((i * 40503) % (200 * 1024)) }));
    ranges.push({ at: big.length - 5, len: 50 }, { at: MiB - 3, len: 6 });
    const script = `const fs=require('fs'),c=require('crypto');const fd=fs.openSync(process.argv[1],'r');const h=c.createHash('sha256');
      for(const {at,len} of JSON.parse(process.argv[2])){const b=Buffer.alloc(len);const n=fs.readSync(fd,b,0,len,at);h.update(b.subarray(0,n));}console.log(h.digest('hex'));`;
    const want = createHash('sha256');
    for (const { at, len } of ranges) want.update(big.subarray(at, at + len));
    const r = await runCommand(process.execPath, ['-e', script, path.join(mnt.mountpoint, 'big/twenty.bin'), JSON.stringify(ranges)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(want.digest('hex'));
  });

  it('shows nested directories, directory markers and names with spaces and unicode', async () => {
    const r = await sh(`cd ${mnt.mountpoint} && ls -1 && ls -1 d1/d2/d3 'with space' marked && ls -1a emptymarker && cat 'with space/ünïcødé 名前.txt'`);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    for (const want of ['big', 'd1', 'emptymarker', 'marked', 'sizes', 'with space', 'deep.txt', 'ünïcødé 名前.txt', 'inside.txt', 'unicode']) expect(lines, want).toContain(want);
  });

  it('reports size and mode, refuses writes with EROFS and missing paths with ENOENT', async () => {
    const st = await sh(`stat -c '%s %a %F' ${mnt.mountpoint}/sizes/block-plus-1 ${mnt.mountpoint}/d1`);
    expect(st.stdout.trim().split('\n')).toEqual([`${MiB + 1} 444 regular file`, '4096 555 directory']);
    const write = await sh(`echo x > ${mnt.mountpoint}/new.txt`);
    expect(write.stderr).toMatch(/Read-only file system/);
    const missing = await sh(`cat ${mnt.mountpoint}/sizes/nope`);
    expect(missing.stderr).toMatch(/No such file or directory/);
  });

  it.runIf(kind === 'oss' || kind === 'cos')('leaves out names that cannot be POSIX names without failing the listing', async () => {
    const r = await sh(`ls -1a ${mnt.mountpoint}/odd; echo --; ls -1a ${mnt.mountpoint}/odd/a`);
    expect(r.code, r.stderr).toBe(0);
    // `odd/a//b.txt` makes a directory `a` whose only child has an empty name.
    expect(r.stdout.split('\n').filter(Boolean)).toEqual(['.', '..', 'a', 'fine.txt', '--', '.', '..']);
    expect((await mnt.metrics()).value('cachefs_skipped_names_total')).toBe(4);
    expect(await sha256Of(path.join(mnt.mountpoint, 'odd/fine.txt'))).toBe(sha(badNames['odd/fine.txt']!));
  });
});
