/**
 * The thread that stats a listing page's files (sys/stat-thread.ts): its figures are the
 * files' own (type, inode, size, times), null for a name not there; they are the same when
 * no thread can start and the batch is stat'ed on the calling thread (this module run from
 * its TypeScript source); a batch asked while another is under way is answered too.
 */
import { lstatSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { closeSync, constants, openSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
});
