/**
 * A tier's index file (`<dir>/index`): a store reopened takes its blocks, their lengths
 * and their least-recently-used order from it, without a stat of each block file; block
 * files it does not list (stored after it was written, before a crash) are indexed from
 * disk, and names it lists that are gone from disk, or lines that are not an index's, are left out.
 */
import { mkdtemp, readFile, rm, unlink, writeFile, appendFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockSum } from '../src/block/checksum.js';
import { TieredStore } from '../src/cache/tiered-store.js';
import { silentLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';

const id = (n: number): string => n.toString(16).padStart(40, '0');
const block = (n: number): Buffer => Buffer.alloc(1000 + n, n);

let dir: string;
let open: TieredStore | undefined;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-tier-index-'));
});
afterEach(async () => {
  await open?.close();
  open = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function openStore(): Promise<TieredStore> {
  const store = new TieredStore({ tiers: [{ medium: 'SSD', dir, quotaBytes: 1 << 30 }], high: 0.9, low: 0.5 }, new Metrics(false), silentLogger);
  await store.open();
  return (open = store);
}

const lru = (store: TieredStore): [string, number][] => [...store.tiers[0]!.lru()];

describe('tier index', () => {
  it('reopens with the blocks, lengths and LRU order of its index, adds block files it does not list, and leaves out what is gone or malformed', async () => {
    const first = await openStore();
    for (const n of [1, 2, 3]) await first.put(id(n), block(n));
    first.lookup(id(1)); // now the most recently used: the files' times do not say so
    await first.close();
    open = undefined;
    expect((await readFile(path.join(dir, 'index'), 'latin1')).split('\n').filter(Boolean)).toHaveLength(3);

    // After the index was written: a block stored (as by a process that then crashed), one removed, a bad line.
    const late = block(4);
    await writeFile(path.join(dir, 'blocks', id(4).slice(0, 2), `${id(4)}.${blockSum(late)}`), late);
    const gone = (await readFile(path.join(dir, 'index'), 'latin1')).split('\n').find((l) => l.startsWith(id(3)))!.split(' ')[0]!;
    await unlink(path.join(dir, 'blocks', id(3).slice(0, 2), gone));
    await appendFile(path.join(dir, 'index'), `../../etc/passwd.0123456789abcdef 12\n${id(9)}.zz 5\nnot a line\n`);

    const second = await openStore();
    expect(lru(second)).toEqual([
      [id(2), 1002],
      [id(1), 1001],
      [id(4), 1004],
    ]);
    expect(second.blockCount).toBe(3);
    expect(second.usedBytes).toBe(1002 + 1001 + 1004);
    // The index was written again at open: it lists what the store holds now.
    expect((await readFile(path.join(dir, 'index'), 'latin1')).split('\n').filter(Boolean).map((l) => l.slice(0, 40))).toEqual([id(2), id(1), id(4)]);
  });
});
