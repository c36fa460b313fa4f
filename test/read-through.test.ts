/**
 * Read-through of runs of blocks against a real folder source and a real store: one
 * UFS read fills several block buffers, each block is stored and answered with its own
 * bytes, a run stops at a block that needs no fetch, and an object shorter than its
 * blocks say fails the blocks it cannot fill (STALE) while keeping those it filled;
 * a reader that only copies the bytes gets them before the block's file is written.
 * Also the `Scatter` those reads fill, and the embedded source closing the kept fd of a
 * block the store evicts.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, readlink, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { blockRef, type ObjectRef } from '../src/block/block.js';
import { BufferPool } from '../src/block/buffer-pool.js';
import { Scatter } from '../src/block/scatter.js';
import { EmbeddedSource } from '../src/client/embedded-source.js';
import { CachefsError } from '../src/errors.js';
import { silentLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { TieredStore } from '../src/cache/tiered-store.js';
import { LocalUfs } from '../src/ufs/local.js';
import type { Ufs } from '../src/ufs/ufs.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { CachedBlocks } from '../src/cache/cached-blocks.js';
import { READ_POLICY } from '../src/cache/read-policy.js';
import { ReadThrough } from '../src/cache/read-through.js';
import { UfsReader } from '../src/cache/ufs-reader.js';

const BLOCK = 64 * 1024;
let dir: string;
let store: TieredStore;
let metrics: Metrics;
let readThrough: ReadThrough;
const body = randomBytes(5 * BLOCK + 123);
let object: ObjectRef;
const ref = (i: number) => blockRef(object, BLOCK, i);

async function counter(name: string, labels?: Record<string, string>): Promise<number> {
  const m = await metrics.registry.getSingleMetric(name)!.get();
  return m.values.filter((v) => Object.entries(labels ?? {}).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-rt-'));
  await writeFile(path.join(dir, 'obj.bin'), body);
  const ufs = new LocalUfs(parseUfsUri(`file://${dir}`));
  const st = (await ufs.stat('obj.bin'))!;
  object = { mount: 'm', key: 'obj.bin', etag: st.etag, size: st.size };
  metrics = new Metrics(false);
  store = new TieredStore({ tiers: [{ medium: 'SSD', dir: path.join(dir, 'cache'), quotaBytes: 1 << 30 }], high: 0.9, low: 0.5 }, metrics, silentLogger);
  await store.open();
  readThrough = new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, silentLogger);
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe('ReadThrough.fetchRun', () => {
  it('fills a run of blocks with one UFS read; each block is stored and answered with its own bytes', async () => {
    const refs = [1, 2, 3, 4, 5].map(ref);
    const flights = readThrough.fetchRun(refs);
    expect(flights).toHaveLength(5);
    expect(refs.every((r) => readThrough.isFetching(r))).toBe(true);
    // A reader of a block of the run joins its flight instead of fetching again.
    const joined = readThrough.ensure(ref(3));
    const got = await Promise.all(flights);
    expect((await joined).data).toBe(got[2]!.data);
    for (const [i, r] of refs.entries()) {
      const want = body.subarray(r.offset, r.offset + r.length);
      expect(got[i]!.data!.equals(want), `block ${r.index}`).toBe(true);
      expect((await readFile(got[i]!.stored!.path)).equals(want), `stored block ${r.index}`).toBe(true);
    }
    expect(refs[4]!.length).toBe(123);
    expect(await counter('cachefs_ufs_requests_total', { op: 'read' })).toBe(1);
    expect(await counter('cachefs_cache_misses_total')).toBe(5);
    expect(await counter('cachefs_ufs_read_bytes_total')).toBe(4 * BLOCK + 123);
  });

  it('stops a run before a block that is cached or being fetched, and at a gap', async () => {
    await readThrough.ensure(ref(2));
    expect(readThrough.fetchRun([ref(0), ref(1), ref(2), ref(3)])).toHaveLength(2);
    const inFlight = readThrough.fetchRun([ref(4)]);
    expect(readThrough.fetchRun([ref(3), ref(4), ref(5)])).toHaveLength(1);
    expect(readThrough.fetchRun([ref(5)])).toHaveLength(1);
    await inFlight[0];
    expect(readThrough.fetchRun([ref(2)])).toHaveLength(0);
  });

  it('fails with STALE the blocks an object too short leaves unfilled, and keeps the ones it filled', async () => {
    // Same version (ETag), fewer bytes than the size the blocks were cut for.
    await truncate(path.join(dir, 'obj.bin'), 2 * BLOCK + 10);
    object = { ...object, etag: (await new LocalUfs(parseUfsUri(`file://${dir}`)).stat('obj.bin'))!.etag };
    const results = await Promise.allSettled(readThrough.fetchRun([0, 1, 2, 3].map(ref)));
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'rejected']);
    const err = (results[2] as PromiseRejectedResult).reason as CachefsError;
    expect(err.code).toBe('STALE');
    expect(err.message).toContain('block 2: 10 of 65536 bytes');
    expect(readThrough.cached(ref(1))).toBeDefined();
    expect(readThrough.cached(ref(2))).toBeUndefined();
    // A reader that wants the bytes early gets the same failure.
    await expect(readThrough.fetched(ref(3))).rejects.toMatchObject({ code: 'STALE' });
  });

  it('hands `fetched` readers the bytes before the block file is written, joins later readers to the fetch until it is, and drains the write', async () => {
    let writeNow!: () => void;
    const gate = new Promise<void>((resolve) => (writeNow = resolve));
    const put = store.put.bind(store);
    store.put = async (id, data) => {
      await gate;
      return put(id, data);
    };
    const want = body.subarray(ref(1).offset, ref(1).offset + BLOCK);
    const first = await readThrough.fetched(ref(1));
    expect(first.data!.equals(want)).toBe(true);
    expect(first.stored).toBeUndefined();
    expect(store.lookup(ref(1).id)).toBeUndefined(); // not written yet
    expect(readThrough.isFetching(ref(1))).toBe(true);
    const second = await readThrough.fetched(ref(1));
    expect(second.data).toBe(first.data);
    const stored = readThrough.ensure(ref(1)); // waits for the file
    let drained = false;
    const drain = readThrough.drain().then(() => (drained = true)); // what a closing mount waits for
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(drained).toBe(false);
    writeNow();
    await drain;
    expect(store.lookup(ref(1).id)).toBeDefined();
    expect((await readFile((await stored).stored!.path)).equals(want)).toBe(true);
    expect(readThrough.isFetching(ref(1))).toBe(false);
    const third = await readThrough.fetched(ref(1));
    expect(third.data).toBeUndefined();
    expect(third.stored!.path).toBe((await stored).stored!.path);
    expect(await counter('cachefs_ufs_requests_total', { op: 'read' })).toBe(1);
  });
});

describe('ReadThrough cancellation', () => {
  /** A store whose reads hang until cancelled, as a stalled object store's GET does; counts the reads it saw cancelled. */
  function hangingUfs() {
    const seen = { started: 0, cancelled: 0 };
    const ufs = {
      async readInto(_key: string, _offset: number, _dest: unknown, options?: { signal?: AbortSignal }): Promise<number> {
        seen.started++;
        return new Promise<number>((_resolve, reject) => {
          options?.signal?.addEventListener('abort', () => {
            seen.cancelled++;
            reject(new Error('aborted'));
          });
        });
      },
    } as unknown as Ufs;
    return { ufs, seen };
  }

  it('lets a reader whose signal aborts stop waiting, and cancels the fetch only when its last reader has gone', async () => {
    const { ufs, seen } = hangingUfs();
    const buffers = new BufferPool(BLOCK, 4);
    const rt = new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, silentLogger, buffers);
    const a = new AbortController();
    const b = new AbortController();
    const first = rt.fetched(ref(0), a.signal);
    const second = rt.fetched(ref(0), b.signal);
    await new Promise((r) => setTimeout(r, 10));
    expect(seen.started).toBe(1); // one fetch for both
    expect(buffers.inUse).toBe(1);
    a.abort();
    await expect(first).rejects.toMatchObject({ code: 'INTERRUPTED' });
    await new Promise((r) => setTimeout(r, 10));
    expect(seen.cancelled).toBe(0); // the other reader still waits
    expect(rt.isFetching(ref(0))).toBe(true);
    b.abort();
    await expect(second).rejects.toMatchObject({ code: 'INTERRUPTED' });
    await vi.waitFor(() => expect(rt.isFetching(ref(0))).toBe(false));
    expect(seen.cancelled).toBe(1);
    await vi.waitFor(() => expect(buffers.inUse).toBe(0)); // the fetch's buffer went back
    // A reader that comes after the cancel starts a fetch of its own rather than getting the cancel.
    const c = new AbortController();
    const third = rt.fetched(ref(0), c.signal);
    await vi.waitFor(() => expect(seen.started).toBe(2));
    c.abort();
    await expect(third).rejects.toMatchObject({ code: 'INTERRUPTED' });
  });

  it('keeps a prefetch run going while any of the handles that asked for it is open', async () => {
    const { ufs, seen } = hangingUfs();
    const rt = new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, silentLogger);
    const h1 = new AbortController();
    const h2 = new AbortController();
    const run = rt.fetchRun([ref(1), ref(2)], [h1.signal, h2.signal]);
    expect(run).toHaveLength(2);
    h1.abort();
    await new Promise((r) => setTimeout(r, 10));
    expect(seen.cancelled).toBe(0);
    h2.abort();
    await expect(run[1]).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(seen.cancelled).toBe(1);
    expect(await counter('cachefs_ufs_errors_total')).toBe(0); // a cancel is not the store's failure
  });
});

describe('EmbeddedSource', () => {
  /** Targets of this process's fds that are block files of the cache dir (not its lock file, held open while the store is). */
  async function cacheFds(): Promise<string[]> {
    const links = await Promise.all((await readdir('/proc/self/fd')).map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')));
    return links.filter((l) => l.startsWith(path.join(dir, 'cache', 'blocks')));
  }

  it('closes its kept fd of a block the store evicts, so the disk gets the bytes back', async () => {
    const small = new TieredStore({ tiers: [{ medium: 'SSD', dir: path.join(dir, 'cache'), quotaBytes: 3 * BLOCK }], high: 0.9, low: 0.5 }, metrics, silentLogger);
    await store.close();
    await small.open();
    store = small;
    const ufs = new LocalUfs(parseUfsUri(`file://${dir}`));
    const rt = new ReadThrough(small, new UfsReader(async () => ufs, metrics), metrics, silentLogger);
    const source = new EmbeddedSource(new CachedBlocks(rt), READ_POLICY, metrics, silentLogger, 2, BLOCK);
    const dest = Buffer.alloc(BLOCK);
    // A first read is answered before its block is stored: `ensure` waits for that.
    const read = async (i: number) => {
      const n = await source.read({ ref: ref(i), offset: 0, length: ref(i).length, dest, destOffset: 0, pattern: 'sequential' });
      await rt.ensure(ref(i));
      return n;
    };
    try {
      await read(0); // fetched from the UFS and stored
      expect(await read(0)).toBe(BLOCK); // read back from its file, through a kept fd
      expect(dest.equals(body.subarray(0, BLOCK))).toBe(true);
      const file = small.lookup(ref(0).id)!.path;
      expect(await cacheFds()).toEqual([file]);
      for (const i of [1, 2, 3]) await read(i); // the quota holds 3 blocks: block 0, the oldest, goes
      expect(small.lookup(ref(0).id)).toBeUndefined();
      expect(await counter('cachefs_cache_evictions_total')).toBeGreaterThan(0);
      expect((await cacheFds()).filter((l) => l.startsWith(file))).toEqual([]);
    } finally {
      await source.close();
    }
  });
});

describe('Scatter', () => {
  it('places positions in the buffer that holds them and copies across buffer ends', () => {
    const parts = [Buffer.alloc(3), Buffer.alloc(0), Buffer.alloc(5), Buffer.alloc(2)];
    const s = new Scatter(parts);
    expect(s.length).toBe(10);
    expect(s.region(0).length).toBe(3);
    expect(s.region(3).length).toBe(5);
    expect(s.region(7).length).toBe(1);
    expect(s.region(9).length).toBe(1);
    expect(s.region(10).length).toBe(0);
    expect(s.copyIn(Buffer.from('abcdefgh'), 1)).toBe(8);
    expect(Buffer.concat(parts).toString('latin1')).toBe('\0abcdefgh\0');
    expect(s.copyIn(Buffer.from('xyz'), 8)).toBe(2);
    expect(new Scatter(Buffer.alloc(4)).region(1).length).toBe(3);
  });
});
