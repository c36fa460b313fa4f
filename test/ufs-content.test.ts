/**
 * One table of content cases, run through a real FUSE mount against every kind of
 * source: file://, s3://, oss:// and cosn://, each with its own protocol server and
 * the real SDK. Every access to a mount is a child process.
 */
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dropPageCache, mountCachefs, sh, waitForWholeFile, type TestMount } from './support/cachefs.js';
import { runCommand } from './support/processes.js';
import { SOURCE_KINDS, startSource, type Source } from './support/ufs-fixtures.js';
import { versionedMtime } from '../src/vfs/entry.js';
import { expectPassedThrough } from './support/metrics.js';

const MiB = 1024 * 1024;
const BLOCK = MiB;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const sizes: Record<string, Buffer> = {
  'sizes/empty': Buffer.alloc(0),
  'sizes/one': randomBytes(1),
  'sizes/block-minus-1': randomBytes(BLOCK - 1),
  'sizes/block': randomBytes(BLOCK),
  'sizes/block-plus-1': randomBytes(BLOCK + 1),
  'big/twenty.bin': randomBytes(20 * MiB + 321),
};
/** Read only by the test of prefetch runs, so that all its blocks are cold there. */
const RUNS_FILE = { key: 'big/runs.bin', body: randomBytes(24 * MiB + 5) };
/** Characters that URL encoding, signing and XML listings each treat specially. */
const ODD_CHARS = "plus+ pct%41 hash# q?x=1&y ~'(!)*;,$@[]{}^`.txt";
const named: Record<string, Buffer> = {
  'd1/d2/d3/deep.txt': Buffer.from('deep\n'),
  'with space/ünïcødé 名前.txt': Buffer.from('unicode\n'),
  'with space/emoji 🐙 ä.txt': Buffer.from('emoji\n'),
  [`chars/${ODD_CHARS}`]: Buffer.from('odd chars\n'),
};
/** More entries than one listing page (1000) holds, with a sub-directory as the 1000th entry so a page ends on a common prefix. */
const MANY = 1100;
const many: Record<string, Buffer> = {};
for (let i = 0; i < MANY; i++) {
  const name = `many/e${String(i).padStart(4, '0')}`;
  if (i % 250 === 249) {
    many[`${name}/a`] = Buffer.from(`${i}a\n`);
    many[`${name}/b`] = Buffer.from(`${i}b\n`);
  } else many[name] = Buffer.from(`${i}\n`);
}
/** Zero-byte `dir/` keys; a folder has plain directories instead. */
const markers: Record<string, Buffer> = { 'marked/': Buffer.alloc(0), 'marked/inside.txt': Buffer.from('in\n'), 'emptymarker/': Buffer.alloc(0) };
/** Keys that cannot be POSIX paths, which only the OSS and COS test servers can store. */
const badNames: Record<string, Buffer> = {
  'odd/a//b.txt': Buffer.from('x'),
  'odd/./dot.txt': Buffer.from('x'),
  'odd/../up.txt': Buffer.from('x'),
  [`odd/${'n'.repeat(300)}`]: Buffer.from('x'),
  'odd/fine.txt': Buffer.from('fine\n'),
};
/** What `odd/` shows: `a//b.txt` makes a directory `a` whose only child has an empty name. */
const badNamesTree = ['d odd', 'd odd/a', 'f odd/fine.txt'];
const BAD_NAME_COUNT = 4;

/** `find -printf '%y %P'` lines for a set of keys: every ancestor a directory, `x/` a directory, the rest files. */
function treeOf(keys: string[]): string[] {
  const out = new Set<string>();
  for (const key of keys) {
    const parts = key.split('/');
    for (let i = 1; i < parts.length; i++) out.add(`d ${parts.slice(0, i).join('/')}`);
    if (!key.endsWith('/')) out.add(`f ${key}`);
  }
  return [...out].sort();
}

/** sha256 of a file read by a child process, its name passed as an argument (no shell: names hold `$` and quotes). */
async function sha256Of(file: string): Promise<string> {
  const r = await runCommand('sha256sum', ['--', file]);
  if (r.code !== 0) throw new Error(`sha256sum ${file} failed: ${r.stderr}`);
  return r.stdout.split(' ')[0]!;
}

/** Runs a node script in a child process with its arguments; answers its stdout parsed as JSON. */
async function nodeChild<T>(script: string, ...args: string[]): Promise<T> {
  const r = await runCommand(process.execPath, ['-e', script, ...args]);
  if (r.code !== 0) throw new Error(`node child failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

const SCHEMES = { file: 'file', s3: 's3', oss: 'oss', cos: 'cosn' } as const;

describe.each(SOURCE_KINDS.map((kind) => ({ kind, scheme: SCHEMES[kind] })))('content through a mount of $scheme://', ({ kind }) => {
  const hasMarkers = kind !== 'file';
  const hasBadNames = kind === 'oss' || kind === 'cos';
  const objects: Record<string, Buffer> = {
    ...sizes,
    [RUNS_FILE.key]: RUNS_FILE.body,
    ...named,
    ...many,
    ...(hasMarkers ? markers : { 'marked/inside.txt': markers['marked/inside.txt']!, 'emptymarker/': Buffer.alloc(0) }),
    ...(hasBadNames ? badNames : {}),
    'mutable/v.bin': randomBytes(2 * BLOCK + 7),
    // Beside the prefix `mutable/` but outside it: a prefix mount must not show them.
    'mutable-not/x': Buffer.from('x'),
    'mutablex': Buffer.from('x'),
  };
  let source: Source;
  let mnt: TestMount;
  let seededAt = 0;
  const extra: TestMount[] = [];
  const at = (p: string): string => path.join(mnt.mountpoint, p);

  beforeAll(async () => {
    source = await startSource(kind, objects);
    seededAt = Date.now();
    mnt = await mountCachefs({ ufs: source.uri, args: [...source.args, '--block-size', '1MiB'], env: source.env });
  }, 120_000);

  afterEach(async () => {
    for (const m of extra.splice(0)) await m.stop();
  });

  afterAll(async () => {
    await mnt?.stop();
    await source?.close();
  });

  it('reads files of size 0, 1, block-1, block, block+1 and 20 MiB byte-exactly', async () => {
    for (const [name, body] of Object.entries(sizes)) expect(await sha256Of(at(name)), name).toBe(sha(body));
    // Reads of a size that never lines up with a block.
    const dd = await sh(`dd if=${JSON.stringify(at('sizes/block-plus-1'))} bs=7777 status=none | sha256sum`);
    expect(dd.stdout.split(' ')[0]).toBe(sha(sizes['sizes/block-plus-1']!));
  });

  it('reads at random offsets byte-exactly, across block boundaries and past the end', async () => {
    const big = sizes['big/twenty.bin']!;
    const ranges = Array.from({ length: 100 }, (_, i) => ({ at: (i * 2654435761) % big.length, len: 1 + ((i * 40503) % (200 * 1024)) }));
    ranges.push({ at: big.length - 5, len: 50 }, { at: BLOCK - 3, len: 6 }, { at: 3 * BLOCK - 1, len: 2 * BLOCK + 2 }, { at: big.length + 10, len: 10 });
    const script = `const fs=require('fs'),c=require('crypto');const fd=fs.openSync(process.argv[1],'r');const h=c.createHash('sha256');let total=0;
      for(const {at,len} of JSON.parse(process.argv[2])){const b=Buffer.alloc(len);const n=fs.readSync(fd,b,0,len,at);total+=n;h.update(b.subarray(0,n));}
      console.log(JSON.stringify({sha:h.digest('hex'),total}));`;
    const want = createHash('sha256');
    let total = 0;
    for (const { at: from, len } of ranges) {
      const part = big.subarray(from, from + len);
      want.update(part);
      total += part.length;
    }
    expect(await nodeChild(script, at('big/twenty.bin'), JSON.stringify(ranges))).toEqual({ sha: want.digest('hex'), total });
  });

  it('fetches a cold sequential stream in runs of blocks, one request each, every block once and byte-exact', async () => {
    const before = await mnt.metrics();
    expect(await sha256Of(at(RUNS_FILE.key))).toBe(sha(RUNS_FILE.body));
    const after = await mnt.metrics();
    const delta = (name: string, labels?: Record<string, string>): number => after.value(name, labels) - before.value(name, labels);
    const blocks = Math.ceil(RUNS_FILE.body.length / BLOCK);
    expect(delta('cachefs_cache_misses_total')).toBe(blocks);
    expect(delta('cachefs_ufs_read_bytes_total')).toBe(RUNS_FILE.body.length);
    // A GET per block would be 25; the readahead's runs (up to 8 blocks of 1 MiB) need far fewer.
    expect(delta('cachefs_ufs_requests_total', { op: 'read' })).toBeLessThanOrEqual(blocks / 2);
  });

  it('shows the whole tree: nested directories, directory markers, names with spaces, unicode and odd characters', async () => {
    // `many/` has a test of its own; without it the output stays one pipe write, so no
    // multi-byte character is split between the chunks a reader gets.
    const r = await sh(`cd ${JSON.stringify(mnt.mountpoint)} && find . -mindepth 1 -path ./many/\\* -prune -o -printf '%y %P\\n'`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.length).toBeLessThan(4096);
    const good = Object.keys(objects).filter((k) => !(k in badNames) && !(k in many));
    good.push('many/');
    const want = [...treeOf(good), ...(hasBadNames ? badNamesTree : [])].sort();
    expect(r.stdout.split('\n').filter(Boolean).sort()).toEqual(want);
    const marked = await sh(`ls -1a ${JSON.stringify(at('emptymarker'))}; echo --; ls -1a ${JSON.stringify(at('marked'))}`);
    expect(marked.stdout.split('\n').filter(Boolean)).toEqual(['.', '..', '--', '.', '..', 'inside.txt']);
    for (const name of Object.keys(named)) expect(await sha256Of(at(name)), name).toBe(sha(named[name]!));
  });

  it(`lists a directory of ${MANY} entries completely, across listing pages`, async () => {
    const r = await sh(`ls -1 ${JSON.stringify(at('many'))} | LC_ALL=C sort | uniq -c | awk '$1 != 1' | wc -l; ls -1 ${JSON.stringify(at('many'))} | wc -l; cat ${JSON.stringify(at('many/e0999/b'))} ${JSON.stringify(at('many/e1099'))}`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter(Boolean)).toEqual(['0', String(MANY), '999b', '1099']);
  });

  it('reports size, mode, link count and mtime', async () => {
    const r = await sh(`cd ${JSON.stringify(mnt.mountpoint)} && stat -c '%s %a %h %F' sizes/empty sizes/block-plus-1 big/twenty.bin d1 emptymarker`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(['0 444 1 regular empty file', `${BLOCK + 1} 444 1 regular file`, `${20 * MiB + 321} 444 1 regular file`, '4096 555 2 directory', '4096 555 2 directory']);
    const mtime = Number((await sh(`stat -c %Y ${JSON.stringify(at('sizes/one'))}`)).stdout);
    expect(Math.abs(mtime * 1000 - Date.now())).toBeLessThan(10 * 60_000);
  });

  it('refuses every kind of write with EROFS and missing paths with ENOENT', async () => {
    const script = `const fs=require('fs'),p=require('path');const m=process.argv[1];const out={};
      const tries={
        create:()=>fs.writeFileSync(p.join(m,'new.txt'),'x'),
        append:()=>fs.appendFileSync(p.join(m,'sizes/one'),'x'),
        openForWrite:()=>fs.openSync(p.join(m,'sizes/one'),'r+'),
        truncate:()=>fs.truncateSync(p.join(m,'sizes/one'),0),
        mkdir:()=>fs.mkdirSync(p.join(m,'newdir')),
        unlink:()=>fs.unlinkSync(p.join(m,'sizes/one')),
        rmdir:()=>fs.rmdirSync(p.join(m,'emptymarker')),
        rename:()=>fs.renameSync(p.join(m,'sizes/one'),p.join(m,'sizes/two')),
        symlink:()=>fs.symlinkSync('sizes/one',p.join(m,'link')),
        chmod:()=>fs.chmodSync(p.join(m,'sizes/one'),0o644),
        utimes:()=>fs.utimesSync(p.join(m,'sizes/one'),1,1),
        readMissing:()=>fs.readFileSync(p.join(m,'sizes/nope')),
        statMissing:()=>fs.statSync(p.join(m,'no/such/file')),
        listMissing:()=>fs.readdirSync(p.join(m,'nodir')),
      };
      for(const [k,f] of Object.entries(tries)){try{f();out[k]='ok'}catch(e){out[k]=e.code}}
      console.log(JSON.stringify(out));`;
    const codes = await nodeChild<Record<string, string>>(script, mnt.mountpoint);
    const rofs = ['create', 'append', 'openForWrite', 'truncate', 'mkdir', 'unlink', 'rmdir', 'rename', 'symlink', 'chmod', 'utimes'];
    expect(codes).toEqual({ ...Object.fromEntries(rofs.map((k) => [k, 'EROFS'])), readMissing: 'ENOENT', statMissing: 'ENOENT', listMissing: 'ENOENT' });
    expect(await sha256Of(at('sizes/one'))).toBe(sha(sizes['sizes/one']!));
  });

  it('serves a second read from the block cache, byte-exactly: a file of two blocks, from its whole-object file passed through', async () => {
    const file = at('sizes/block-plus-1');
    await sha256Of(file);
    await waitForWholeFile(mnt, BLOCK + 1);
    const before = await mnt.metrics();
    await dropPageCache(file);
    expect(await sha256Of(file)).toBe(sha(sizes['sizes/block-plus-1']!));
    // dd's open and sha256sum's, both read by the kernel from the cached file.
    expectPassedThrough(await mnt.metrics(), 2, before);
  });

  it('mounts a prefix, shows only what is under it, and reads the new bytes once an object changes', async () => {
    const ttl = ['--meta-ttl', '100ms', '--attr-timeout', '100ms', '--entry-timeout', '100ms'];
    const m = await mountCachefs({ ufs: source.uriOf('mutable'), args: [...source.args, '--block-size', '1MiB', ...ttl], env: source.env });
    extra.push(m);
    const file = path.join(m.mountpoint, 'v.bin');
    const names = async (): Promise<string[]> => (await sh(`ls -1a ${JSON.stringify(m.mountpoint)}`)).stdout.split('\n').filter(Boolean);
    // The kernel lists with readdirplus (negotiated at INIT), or readdir.
    const readdirs = async (): Promise<number> => {
      const now = await m.metrics();
      return now.value('cachefs_fuse_ops_total', { op: 'readdir' }) + now.value('cachefs_fuse_ops_total', { op: 'readdirplus' });
    };
    expect(await names()).toEqual(['.', '..', 'v.bin']);
    const listed = await readdirs();
    expect(listed).toBeGreaterThan(0);
    // Past --meta-ttl cachefs lists the store again and finds the same listing: the kernel
    // answers the second ls from the listing it kept, with no readdir.
    await sleep(200);
    expect(await names()).toEqual(['.', '..', 'v.bin']);
    expect(await readdirs()).toBe(listed);
    expect(await sha256Of(file)).toBe(sha(objects['mutable/v.bin']!));
    // Same size, new bytes, in a later second than the first version: Last-Modified has
    // whole seconds, and the kernel keeps its page cache while size and mtime stay the same.
    await sleep(Math.max(0, seededAt + 1100 - Date.now()));
    const changed = randomBytes(objects['mutable/v.bin']!.length);
    await source.put('mutable/v.bin', changed);
    await sleep(400);
    expect(await sha256Of(file)).toBe(sha(changed));
    // Same size again, at once (most likely within the same second): the mtime's
    // milliseconds come from the ETag (the MD5 of a single PUT), so the page cache goes.
    const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');
    let again = randomBytes(changed.length);
    while (versionedMtime(0, md5(again)) === versionedMtime(0, md5(changed))) again = randomBytes(changed.length);
    await source.put('mutable/v.bin', again);
    await sleep(400);
    expect(await sha256Of(file)).toBe(sha(again));
    const metrics = await m.metrics();
    expect(metrics.value('cachefs_ufs_read_bytes_total')).toBe(3 * changed.length);
    // The changed object's size and mtime change an object store's listing: the kernel lets
    // its copy go. A folder's listing gives names alone (its files are stat'ed when looked
    // up), and the kernel's copy, names and kinds, is still right: it may keep it.
    const kept = await readdirs();
    expect(await names()).toEqual(['.', '..', 'v.bin']);
    if (kind !== 'file') expect(await readdirs()).toBeGreaterThan(kept);
    // A new object: the next listing shows it.
    await source.put('mutable/w.bin', Buffer.from('w\n'));
    await sleep(400);
    expect(await names()).toEqual(['.', '..', 'v.bin', 'w.bin']);
  });

  it.runIf(hasBadNames)('leaves out names that cannot be POSIX names without failing the listing, and counts them', async () => {
    const r = await sh(`ls -1a ${JSON.stringify(at('odd'))}; echo --; ls -1a ${JSON.stringify(at('odd/a'))}`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter(Boolean)).toEqual(['.', '..', 'a', 'fine.txt', '--', '.', '..']);
    expect((await mnt.metrics()).value('cachefs_skipped_names_total')).toBe(BAD_NAME_COUNT);
    expect(await sha256Of(at('odd/fine.txt'))).toBe(sha(badNames['odd/fine.txt']!));
  });

  it.runIf(!hasBadNames)('skips no names where every key is a POSIX path', async () => {
    expect((await mnt.metrics()).value('cachefs_skipped_names_total')).toBe(0);
  });
});
