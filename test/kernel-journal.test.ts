/**
 * The journal of what the kernel holds (issue 28): what a serving process taking over a
 * connection reads back is what the dead one held — nodes made and not dropped, handles
 * opened and not released — also when the dead one was killed mid-line or the file was
 * written anew from the live state. Both ways of appending: through the file's mapping
 * (across its 1 MiB chunks, the zero bytes between and after lines skipped), and by write(2).
 */
import { appendFile, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadMappedFiles, type MappedFiles } from '../src/sys/mapped-file.js';
import { KernelJournal, type HandleKind } from '../src/vfs/kernel-journal.js';
import { runCommand } from './support/processes.js';

let dir: string;
let mappedFiles: MappedFiles | undefined;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-journal-'));
  mappedFiles = await loadMappedFiles();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A live state as the Vfs keeps it, journaled. */
function tables(file: string, mapped: boolean): { nodes: Map<number, string>; handles: Map<number, [HandleKind, string]>; backings: Set<number>; journal: KernelJournal } {
  const nodes = new Map<number, string>();
  const handles = new Map<number, [HandleKind, string]>();
  const backings = new Set<number>();
  const journal = KernelJournal.fresh(file, { nodes: () => nodes.entries(), handles: () => [...handles].map(([fh, [kind, p]]) => [fh, kind, p]), backings: () => backings }, mapped ? mappedFiles : undefined);
  return { nodes, handles, backings, journal };
}

describe.each([
  ['mapped', true],
  ['written', false],
])("the journal of the kernel's nodes and handles, %s", (way, mapped) => {
  it('has the way of appending asked for', () => {
    expect(mapped ? mappedFiles : 'written').toBeDefined();
  });

  it('reads back the nodes not dropped, the handles not released and the backing ids not closed, past a torn last line, with ids past the highest', async () => {
    const file = path.join(dir, `plain-${way}`);
    const { journal } = tables(file, mapped);
    journal.nodeMade(2, '/a');
    journal.nodeMade(3, '/a/b "quoted"\nnewline');
    journal.nodeMade(4, '/c');
    journal.nodeDropped(2);
    journal.opened(1, 'dir', '/');
    journal.opened(2, 'file', '/c');
    journal.opened(3, 'file', '/a/b "quoted"\nnewline');
    journal.released(1);
    journal.backingOpened(7);
    journal.backingOpened(8);
    journal.backingClosed(7);
    journal.close();
    await appendFile(file, 'n 9 "/torn'); // the process died writing this line
    const held = KernelJournal.read(file);
    expect([...held.nodes]).toEqual([
      [3, '/a/b "quoted"\nnewline'],
      [4, '/c'],
    ]);
    expect([...held.handles]).toEqual([
      [2, { kind: 'file', path: '/c' }],
      [3, { kind: 'file', path: '/a/b "quoted"\nnewline' }],
    ]);
    expect([...held.backings]).toEqual([8]);
    expect(held.nextNode).toBe(5);
    expect(held.nextHandle).toBe(4);
  });

  it('is written anew from the live state once dead lines outnumber live ones, and reads back the same', async () => {
    const file = path.join(dir, `churn-${way}`);
    const { nodes, backings, journal } = tables(file, mapped);
    nodes.set(2, '/kept');
    journal.nodeMade(2, '/kept');
    backings.add(3);
    journal.backingOpened(3);
    // A walk that makes and drops 100,000 nodes: 200,000 lines, nearly all dead.
    for (let id = 3; id < 100_003; id++) {
      nodes.set(id, `/tmp/${id}`);
      journal.nodeMade(id, `/tmp/${id}`);
      nodes.delete(id);
      journal.nodeDropped(id);
    }
    journal.close();
    // 200,000 lines would be ~3.4 MB; a mapped file grows a 1 MiB chunk at a time
    expect((await stat(file)).size).toBeLessThanOrEqual(2 * 1024 * 1024);
    const held = KernelJournal.read(file);
    expect([...held.nodes]).toEqual([[2, '/kept']]);
    expect([...held.backings]).toEqual([3]);
    expect((await readFile(file, 'utf8')).startsWith('n 2 "/kept"\nb 3\n')).toBe(true);
  });

  it('reads back every node of a journal of several megabytes, past its chunks\' ends', () => {
    const file = path.join(dir, `long-${way}`);
    const { journal } = tables(file, mapped);
    const long = 'x'.repeat(3000);
    for (let id = 2; id < 3002; id++) journal.nodeMade(id, `/${long}/${id}`);
    journal.close();
    const held = KernelJournal.read(file);
    expect(held.nodes.size).toBe(3000);
    expect(held.nodes.get(2)).toBe(`/${long}/2`);
    expect(held.nodes.get(3001)).toBe(`/${long}/3001`);
    expect(held.nextNode).toBe(3002);
  });

  it('fails with an error naming ENOSPC, and the process lives on, when its file system is full', async () => {
    // A store to a mapped page with no block behind it would kill the process (SIGBUS).
    const small = path.join(dir, `small-${way}`);
    await mkdir(small);
    const mounted = await runCommand('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', small]);
    expect(mounted.code, mounted.stderr).toBe(0);
    try {
      const { journal } = tables(path.join(small, 'journal'), mapped);
      const long = 'y'.repeat(4000);
      let error: unknown;
      try {
        for (let id = 2; id < 2000; id++) journal.nodeMade(id, `/${long}/${id}`); // ~8 MB
      } catch (err) {
        error = err;
      }
      expect(String(error)).toMatch(mapped ? /no space left on its file system \(ENOSPC\)/ : /ENOSPC/);
      journal.close();
    } finally {
      await runCommand('umount', [small]);
    }
  });

  it('refuses a file that is not a journal, naming the line', async () => {
    const file = path.join(dir, `bad-${way}`);
    await appendFile(file, 'n 2 "/a"\nzzz 3\n');
    expect(() => KernelJournal.read(file)).toThrow(/has a line 'zzz 3': expected n, x, f, d, r, b or c records/);
    expect(() => KernelJournal.read(path.join(dir, 'missing'))).toThrow(/no journal of the kernel's nodes/);
  });
});
