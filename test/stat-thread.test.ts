/**
 * The thread that reads a folder (sys/stat-thread.ts): the stats of a listing page's files
 * are the files' own (type, inode, size, times), null for a name not there; its directory
 * stream, read a buffer at a time by the thread (sys/folder.ts's DirStream), gives every
 * name once with its type. The same when no thread can start and asks are answered on the
 * calling thread (this module run from its TypeScript source); an ask made while another is
 * under way is answered too.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { closeSync, constants, openSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirStream, DT_DIR, DT_LNK, DT_REG } from '../src/sys/folder.js';
import { StatThread as SourceStatThread } from '../src/sys/stat-thread.js';

let dir: string;
const names = ['a.bin', 'sub', 'link', 'missing', 'b.bin'];
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-statthread-'));
  await writeFile(path.join(dir, 'a.bin'), Buffer.alloc(1234, 1));
  await writeFile(path.join(dir, 'b.bin'), '');
  await mkdir(path.join(dir, 'sub'));
  await symlink('a.bin', path.join(dir, 'link'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The built module: its thread runs the compiled file. */
async function builtStatThread(): Promise<typeof SourceStatThread> {
  const built = path.resolve(import.meta.dirname, '../dist/sys/stat-thread.js');
  return ((await import(built)) as { StatThread: typeof SourceStatThread }).StatThread;
}

describe.each([
  ['on its own thread', true],
  ['here, where no thread starts', false],
])('the stats of a page of files, %s', (_how, threaded) => {
  it("gives each file's own figures, and null for a name not there", async () => {
    const Stat = threaded ? await builtStatThread() : SourceStatThread;
    const stats = new Stat();
    const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      const [first, again] = await Promise.all([stats.stat(fd, names), stats.stat(fd, ['b.bin', 'a.bin'])]);
      expect(stats.threaded).toBe(threaded);
      for (const [i, name] of names.entries()) {
        const got = first[i];
        if (name === 'missing') {
          expect(got).toBeNull();
          continue;
        }
        const st = lstatSync(path.join(dir, name), { bigint: true });
        expect(got, name).toEqual({ type: Number(st.mode) & 0o170000, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs });
      }
      expect(again.map((s) => s?.size)).toEqual([0n, 1234n]);
    } finally {
      closeSync(fd);
      stats.close();
    }
  });

  it('reads a folder of 3,000 entries a buffer ahead: every name once, with its type, then the end', async () => {
    const Stat = threaded ? await builtStatThread() : SourceStatThread;
    const stats = new Stat();
    const many = path.join(dir, `many-${threaded}`);
    await mkdir(many);
    const want = Array.from({ length: 3_000 }, (_, i) => `file-with-a-longer-name-${i}`);
    for (const name of want) await writeFile(path.join(many, name), '');
    await mkdir(path.join(many, 'sub'));
    await symlink('file-with-a-longer-name-0', path.join(many, 'link'));
    const stream = await DirStream.open(many, stats);
    try {
      const seen = new Map<string, number>();
      let fills = 0;
      for (;;) {
        const name = stream.next();
        if (name === null) break;
        if (name === undefined) {
          fills += 1;
          await stream.fill();
          continue;
        }
        expect(seen.has(name), name).toBe(false);
        seen.set(name, stream.type);
      }
      // ~145 KB of entries: more than one of the reader's buffers (64 KiB).
      expect(fills).toBeGreaterThan(2);
      expect(seen.size).toBe(3_002);
      expect(want.filter((n) => seen.get(n) !== DT_REG)).toEqual([]);
      expect([seen.get('sub'), seen.get('link')]).toEqual([DT_DIR, DT_LNK]);
      expect(stream.next()).toBeNull();
      // Closed while its next buffer is being read: the folder's descriptor is closed once that read ends.
      const fds = readdirSync('/proc/self/fd').length;
      const early = await DirStream.open(many, stats);
      if (early.next() === undefined) await early.fill();
      early.close();
      await new Promise((r) => setTimeout(r, 100));
      expect(readdirSync('/proc/self/fd').length).toBe(fds);
    } finally {
      stream.close();
      stats.close();
    }
  });
});
