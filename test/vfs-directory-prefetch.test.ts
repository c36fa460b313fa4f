/**
 * The directory prefetch's policy without FUSE or a store: its fills are promises the
 * test settles, its clock the test's. Proves that it stops when the pattern stops (no
 * open of the directory for the window, or a file of it read in part: fetches under way
 * are cancelled and no more are asked for), and that at most `files` fills run at once.
 */
import { describe, expect, it } from 'vitest';
import type { ObjectRef } from '../src/block/block.js';
import type { FillOutcome } from '../src/client/block-source.js';
import { silentLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { DIRECTORY_PREFETCH, DirectoryPrefetch } from '../src/vfs/directory-prefetch.js';

const KiB = 1024;
const file = (dir: string, i: number): ObjectRef => ({ mount: 'm', key: `${dir}/f${i}`, etag: `e${i}`, size: 64 * KiB });

interface Fill {
  object: ObjectRef;
  signal: AbortSignal;
  settle(outcome: FillOutcome): void;
}

function setup(files = 4, count = 20): { prefetch: DirectoryPrefetch; fills: Fill[]; clock: { now: number }; listing: ObjectRef[]; listed: { yes: boolean } } {
  const listing = Array.from({ length: count }, (_, i) => file('d', i));
  const listed = { yes: true };
  const fills: Fill[] = [];
  const clock = { now: 0 };
  const prefetch = new DirectoryPrefetch({
    files,
    blockSize: 1024 * KiB,
    capacityBytes: 1024 * 1024 * KiB,
    listedFiles: (dir) => (dir === 'd' && listed.yes ? listing : undefined),
    fill: (object, signal) => new Promise<FillOutcome>((resolve, reject) => {
      fills.push({ object, signal, settle: resolve });
      signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    }),
    changed: () => undefined,
    metrics: new Metrics(false),
    log: silentLogger,
    now: () => clock.now,
  });
  return { prefetch, fills, clock, listing, listed };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('DirectoryPrefetch', () => {
  it('starts at the third file read whole, keeps `files` fills running, and stops once the directory is idle for the window', async () => {
    const { prefetch, fills, clock, listing } = setup(4);
    prefetch.released(listing[0]!, 'whole');
    prefetch.released(listing[1]!, 'whole');
    await turn();
    expect(fills.length).toBe(0);
    prefetch.released(listing[2]!, 'whole');
    await turn();
    expect(fills.map((f) => f.object.key)).toEqual(['d/f3', 'd/f4', 'd/f5', 'd/f6']);
    fills[0]!.settle('fetched');
    await turn();
    expect(fills.length).toBe(5); // one ended, one more
    clock.now += DIRECTORY_PREFETCH.windowMs + 1;
    fills[1]!.settle('fetched');
    await turn();
    expect(fills.length).toBe(5); // idle: nothing more asked for
    expect(fills.slice(2).every((f) => f.signal.aborted)).toBe(true);
  });

  it('stops a directory one of whose small files is read in part', async () => {
    const { prefetch, fills, listing } = setup(2);
    for (let i = 0; i < 3; i++) prefetch.released(listing[i]!, 'whole');
    await turn();
    expect(fills.length).toBe(2);
    prefetch.released(listing[10]!, 'part');
    expect(fills.every((f) => f.signal.aborted)).toBe(true);
    await turn();
    expect(fills.length).toBe(2);
  });

  it('remembers the reads of a directory not listed yet within the window and a bound, and fetches the others once it is listed', async () => {
    const bound = DIRECTORY_PREFETCH.trackedReads;
    const { prefetch, fills, clock, listing, listed } = setup(4, bound + 20);
    listed.yes = false; // a loader opening files by name: nobody listed the directory
    for (let i = 0; i < 5; i++) prefetch.released(listing[i]!, 'whole');
    clock.now = DIRECTORY_PREFETCH.windowMs + 1; // the first five go out of the window
    for (let i = 5; i < bound + 10; i++) prefetch.released(listing[i]!, 'whole');
    await turn();
    expect(fills.length).toBe(0);
    listed.yes = true;
    prefetch.released(listing[bound + 10]!, 'whole');
    await turn();
    // Remembered: the last `bound` reads (files 11 to bound + 10); fetched first: those forgotten.
    expect(fills.map((f) => f.object.key)).toEqual(['d/f0', 'd/f1', 'd/f2', 'd/f3']);
    for (let i = 0; i < 4; i++) fills[i]!.settle('fetched');
    await turn();
    expect(fills.slice(4, 8).map((f) => f.object.key)).toEqual(['d/f4', 'd/f5', 'd/f6', 'd/f7']);
  });
});
