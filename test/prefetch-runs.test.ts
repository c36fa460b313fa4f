/**
 * PrefetchRuns, the policy of the embedded cache's prefetches: blocks queued in one
 * turn go out as runs of consecutive blocks, at most `maxBlocks` in flight, a run that
 * does not fit waits rather than going out cut short, and a block a reader waits for
 * starts at once. `fetch` here records the runs and settles them when told.
 */
import { describe, expect, it } from 'vitest';
import { blockRef, type BlockRef, type ObjectRef } from '../src/block/block.js';
import { PrefetchRuns } from '../src/cache/prefetch-runs.js';

const BLOCK = 1024;
const a: ObjectRef = { mount: 'm', key: 'a', etag: 'e', size: 64 * BLOCK };
const b: ObjectRef = { mount: 'm', key: 'b', etag: 'e', size: 64 * BLOCK };
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

function setup(maxBlocks: number, maxRun: number, present = new Set<string>()) {
  const runs: string[] = [];
  const signals: (AbortSignal | undefined)[][] = [];
  const finish: (() => void)[] = [];
  const q = new PrefetchRuns<string>(
    (run: BlockRef[], wanted) => {
      runs.push(run.map((r) => `${r.object.key}${r.index}`).join(' '));
      signals.push([...wanted]);
      let done!: () => void;
      const settled = new Promise<void>((r) => (done = r));
      finish.push(done);
      return run.map((r) => settled.then(() => `${r.object.key}${r.index}`));
    },
    maxBlocks,
    maxRun,
    (r) => present.has(r.id),
  );
  const add = (o: ObjectRef, ...indexes: number[]) => indexes.forEach((i) => q.add(blockRef(o, BLOCK, i)));
  return { q, runs, signals, finish, add };
}

describe('PrefetchRuns', () => {
  it('sends the blocks queued in one turn as runs of consecutive blocks of one object', async () => {
    const { runs, add } = setup(16, 4);
    add(a, 1, 2, 3, 4, 5, 6, 9);
    add(b, 7, 8);
    add(a, 7);
    expect(runs).toEqual([]); // nothing goes out before the turn's adds are in
    await turn();
    expect(runs).toEqual(['a1 a2 a3 a4', 'a5 a6 a7', 'a9', 'b7 b8']);
  });

  it('keeps at most maxBlocks in flight and lets a run that does not fit wait for room', async () => {
    const { q, runs, finish, add } = setup(8, 4);
    add(a, 0, 1, 2);
    await turn();
    add(a, 3, 4, 5, 6, 7, 8, 9, 10);
    await turn();
    // 3 + 4 in flight: the run of 7..10 would make 11 of 8.
    expect(runs).toEqual(['a0 a1 a2', 'a3 a4 a5 a6']);
    expect(q.active).toBe(11);
    finish[0]!();
    await turn();
    expect(runs).toEqual(['a0 a1 a2', 'a3 a4 a5 a6', 'a7 a8 a9 a10']);
  });

  it('starts a queued block a reader waits for at once, with the queued blocks after it', async () => {
    const { q, runs, finish, add } = setup(2, 4);
    add(a, 0, 1);
    await turn();
    add(a, 2, 3, 4, 5, 6);
    await turn();
    expect(runs).toEqual(['a0 a1']);
    const flight = q.startNow(blockRef(a, BLOCK, 4));
    expect(runs).toEqual(['a0 a1', 'a4 a5 a6']);
    expect(q.startNow(blockRef(a, BLOCK, 9))).toBeUndefined();
    expect(q.active).toBe(2 + 3 + 2);
    finish[1]!();
    expect(await flight).toBe('a4');
  });

  it('skips blocks that need no fetch by their turn', async () => {
    const present = new Set<string>();
    const { runs, add } = setup(16, 8, present);
    add(a, 0, 1, 2, 3);
    present.add(blockRef(a, BLOCK, 2).id);
    present.add(blockRef(a, BLOCK, 0).id);
    await turn();
    expect(runs).toEqual(['a1', 'a3']);
  });

  it('drops queued blocks whose readers have all gone, and hands a run the signals of its readers', async () => {
    const { q, runs, signals } = setup(16, 8);
    const h1 = new AbortController();
    const h2 = new AbortController();
    q.add(blockRef(a, BLOCK, 0), h1.signal);
    q.add(blockRef(a, BLOCK, 1), h1.signal);
    q.add(blockRef(a, BLOCK, 1), h2.signal);
    q.add(blockRef(a, BLOCK, 5), h1.signal);
    h1.abort(); // the handle is released before the queue's turn
    await turn();
    expect(runs).toEqual(['a1']); // block 1 is still wanted by the other handle
    expect(signals[0]).toEqual([h1.signal, h2.signal]);
    expect(q.active).toBe(1);
  });
});
