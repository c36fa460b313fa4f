/**
 * The journal of what the kernel holds (issue 28): what a serving process taking over a
 * connection reads back is what the dead one held — nodes made and not dropped, handles
 * opened and not released — also when the dead one was killed mid-line or the file was
 * written anew from the live state.
 */
import { appendFile, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelJournal, type HandleKind } from '../src/vfs/kernel-journal.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-journal-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A live state as the Vfs keeps it, journaled. */
function tables(file: string): { nodes: Map<number, string>; handles: Map<number, [HandleKind, string]>; journal: KernelJournal } {
  const nodes = new Map<number, string>();
  const handles = new Map<number, [HandleKind, string]>();
  const journal = KernelJournal.fresh(file, { nodes: () => nodes.entries(), handles: () => [...handles].map(([fh, [kind, p]]) => [fh, kind, p]) });
  return { nodes, handles, journal };
}

describe('the journal of the kernel\'s nodes and handles', () => {
  it('reads back the nodes not dropped and the handles not released, past a torn last line, with ids past the highest', async () => {
    const file = path.join(dir, 'plain');
    const { journal } = tables(file);
    journal.nodeMade(2, '/a');
    journal.nodeMade(3, '/a/b "quoted"\nnewline');
    journal.nodeMade(4, '/c');
    journal.nodeDropped(2);
    journal.opened(1, 'dir', '/');
    journal.opened(2, 'file', '/c');
    journal.opened(3, 'file', '/a/b "quoted"\nnewline');
    journal.released(1);
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
    expect(held.nextNode).toBe(5);
    expect(held.nextHandle).toBe(4);
  });

  it('is written anew from the live state once dead lines outnumber live ones, and reads back the same', async () => {
    const file = path.join(dir, 'churn');
    const { nodes, journal } = tables(file);
    nodes.set(2, '/kept');
    journal.nodeMade(2, '/kept');
    // A walk that makes and drops 100,000 nodes: 200,000 lines, nearly all dead.
    for (let id = 3; id < 100_003; id++) {
      nodes.set(id, `/tmp/${id}`);
      journal.nodeMade(id, `/tmp/${id}`);
      nodes.delete(id);
      journal.nodeDropped(id);
    }
    journal.close();
    expect((await stat(file)).size).toBeLessThan(2_000_000); // 200,000 lines would be ~3.4 MB
    const held = KernelJournal.read(file);
    expect([...held.nodes]).toEqual([[2, '/kept']]);
    expect((await readFile(file, 'utf8')).startsWith('n 2 "/kept"\n')).toBe(true);
  });

  it('refuses a file that is not a journal, naming the line', async () => {
    const file = path.join(dir, 'bad');
    await appendFile(file, 'n 2 "/a"\nzzz 3\n');
    expect(() => KernelJournal.read(file)).toThrow(/has a line 'zzz 3': expected n, x, f, d or r records/);
    expect(() => KernelJournal.read(path.join(dir, 'missing'))).toThrow(/no journal of the kernel's nodes/);
  });
});
