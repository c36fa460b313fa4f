/**
 * The filesystem as the kernel addresses it (`Vfs`), driven without a kernel: a real
 * `Filesystem` over a folder and a real `BlockClient` over a block source that holds
 * some blocks in memory and makes the test release the others. Node ids, what the kernel
 * may keep cached across opens, listing snapshots, the per-file read queue, and
 * cancellation reaching the block reads.
 */
import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockRef } from '../src/block/block.js';
import { BlockClient } from '../src/client/block-client.js';
import type { BlockRead, BlockSource, ReadHandle } from '../src/client/block-source.js';
import { CachefsError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { LocalUfs } from '../src/ufs/local.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { FIRST_CHILD } from '../src/vfs/dir-pages.js';
import { Filesystem } from '../src/vfs/filesystem.js';
import { LISTING_START } from '../src/vfs/listing.js';
import { Vfs, type Cancellation, type ReadReply } from '../src/vfs/vfs.js';

const BLOCK = 64 * 1024;
const ROOT = 1;

/** Blocks whose index is in `inMemory` are answered at once; the others wait for `release()` of the test. */
class HeldSource implements BlockSource {
  readonly inMemory = new Set<number>();
  readonly waiting: { req: BlockRead; go(): void }[] = [];
  readonly released: number[] = [];

  readNow(req: BlockRead): number | undefined {
    if (!this.inMemory.has(req.ref.index)) return undefined;
    req.dest.fill(req.ref.index + 1, req.destOffset, req.destOffset + req.length);
    return req.length;
  }
  read(req: BlockRead): Promise<number> {
    return new Promise((resolve, reject) => {
      const go = (): void => {
        req.dest.fill(9, req.destOffset, req.destOffset + req.length);
        resolve(req.length);
      };
      // The source honours the request's signal as a real one does: it gives up at once.
      const signal = req.signal;
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
      this.waiting.push({ req, go });
    });
  }
  prefetch(_ref: BlockRef): void {}
  release(handle: ReadHandle): void {
    this.released.push(handle.id);
  }
  async close(): Promise<void> {}
}

/** The entries a readdir answered at once, as it does from a listing taken at opendir; a promise fails the test. */
function answeredAtOnce<T>(entries: Iterable<T> | Promise<Iterable<T>>): T[] {
  if (entries instanceof Promise) throw new Error('readdir answered with a promise, not at once from the listing taken at opendir');
  return [...entries];
}

/** A request's cancellation as the FUSE layer gives it; counts who asked for its signal. */
class TestCancel implements Cancellation {
  signalsMade = 0;
  private readonly controller = new AbortController();
  get aborted(): boolean {
    return this.controller.signal.aborted;
  }
  get signal(): AbortSignal {
    this.signalsMade += 1;
    return this.controller.signal;
  }
  abort(): void {
    this.controller.abort(new CachefsError('INTERRUPTED', 'interrupted by the test'));
  }
}

function collect(): { reply: ReadReply; answers: unknown[] } {
  const answers: unknown[] = [];
  return { answers, reply: { data: (b) => answers.push(Buffer.from(b)), error: (e) => answers.push(e) } };
}

let dir: string;
let source: HeldSource;
let vfs: Vfs;
let metrics: Metrics;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cachefs-vfs-'));
  await writeFile(path.join(dir, 'a.bin'), Buffer.alloc(4 * BLOCK, 1));
  await writeFile(path.join(dir, 'b.txt'), 'b');
  metrics = new Metrics(false);
  source = new HeldSource();
  const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 1, metaBudgetBytes: 64 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics, log: createLogger('silent') });
  vfs = new Vfs({ fs, client: new BlockClient(source, { blockSize: BLOCK, readaheadBytes: 0 }), metrics, metaBudgetBytes: 64 << 20 });
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const live = (): TestCancel => new TestCancel();
const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 5));

describe('Vfs', () => {
  it('gives a name looked up twice one node id, a new one once the kernel forgot it, and counts no lookup whose request was cancelled', async () => {
    const a = await vfs.lookup(ROOT, 'a.bin', live());
    expect(a.attr.ino).toBe(a.nodeId);
    expect(a.attr.size).toBe(4 * BLOCK);
    expect((await vfs.lookup(ROOT, 'a.bin', live())).nodeId).toBe(a.nodeId);
    vfs.forget(a.nodeId, 2);
    const again = await vfs.lookup(ROOT, 'a.bin', live());
    expect(again.nodeId).not.toBe(a.nodeId);
    // A name not known yet waits for the store: cancelled meanwhile, its lookup counts nothing.
    await writeFile(path.join(dir, 'late.bin'), 'late');
    const cancelled = new TestCancel();
    const lost = vfs.lookup(ROOT, 'late.bin', cancelled);
    expect(lost).toBeInstanceOf(Promise);
    cancelled.abort();
    await expect(lost).rejects.toMatchObject({ code: 'INTERRUPTED' });
    const late = await vfs.lookup(ROOT, 'late.bin', live());
    vfs.forget(late.nodeId, 1); // the cancelled lookup counted nothing: this forgets the node
    expect((await vfs.lookup(ROOT, 'late.bin', live())).nodeId).not.toBe(late.nodeId);
    await expect(vfs.lookup(ROOT, 'missing', live())).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(vfs.getattr(999)).rejects.toMatchObject({ code: 'STALE' });
  });

  it('lets the kernel keep a file\'s pages across opens while its mtime and size stay, and not once they change', async () => {
    const { nodeId } = await vfs.lookup(ROOT, 'a.bin', live());
    expect((await vfs.open(nodeId, 0, live())).keepCache).toBe(false);
    expect((await vfs.open(nodeId, 0, live())).keepCache).toBe(true);
    await utimes(path.join(dir, 'a.bin'), new Date(), new Date(Date.now() + 5000));
    await tick(); // past the metadata TTL
    await vfs.getattr(nodeId); // the kernel learns the new mtime
    expect((await vfs.open(nodeId, 0, live())).keepCache).toBe(false);
    await expect(vfs.open(nodeId, 1 /* O_WRONLY */, live())).rejects.toMatchObject({ code: 'READ_ONLY' });
  });

  it('pages readdir out of the listing taken at opendir, with the node ids the kernel holds, and keeps the listing cached while it is unchanged', async () => {
    const b = await vfs.lookup(ROOT, 'b.txt', live());
    const first = await vfs.opendir(ROOT, live());
    expect(first).toMatchObject({ keepCache: false, cacheDir: true });
    await writeFile(path.join(dir, 'c.txt'), 'c'); // after opendir: not in this listing
    const all = answeredAtOnce(vfs.readdir(first.fh, 0));
    expect(all.map((e) => e.name)).toEqual(['.', '..', 'a.bin', 'b.txt']);
    expect(all.find((e) => e.name === 'b.txt')!.ino).toBe(b.nodeId);
    expect(all.find((e) => e.name === 'a.bin')!.ino).toBeUndefined();
    expect(answeredAtOnce(vfs.readdir(first.fh, 3)).map((e) => [e.name, e.next])).toEqual([['b.txt', 4]]);
    vfs.releasedir(first.fh);
    expect(() => vfs.readdir(first.fh, 0)).toThrow(CachefsError);
    await tick();
    const changed = await vfs.opendir(ROOT, live());
    expect(changed.keepCache).toBe(false); // c.txt appeared
    expect((await vfs.opendir(ROOT, live())).keepCache).toBe(true);
  });

  it('lets the kernel keep a listing of several pages it read to its end through one open, at the next open while it is unchanged', async () => {
    const big = path.join(dir, 'big');
    await mkdir(big);
    for (let i = 0; i < 1500; i++) await writeFile(path.join(big, `f${i}`), '');
    const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 300, metaBudgetBytes: 64 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics, log: createLogger('silent') });
    const v = new Vfs({ fs, client: new BlockClient(source, { blockSize: BLOCK, readaheadBytes: 0 }), metrics, metaBudgetBytes: 64 << 20 });
    const { nodeId } = await v.lookup(ROOT, 'big', live());
    /** Opens the directory and reads it as the kernel does, to the end (an empty answer); the open's answer and the names read. */
    const readWhole = async (): Promise<{ keepCache: boolean; names: number }> => {
      const opened = await v.opendir(nodeId, live());
      let offset = 0;
      let names = 0;
      for (;;) {
        const page = [...(await v.readdir(opened.fh, offset))];
        if (page.length === 0) break;
        names += page.length;
        offset = page.at(-1)!.next;
      }
      v.releasedir(opened.fh);
      return { keepCache: opened.keepCache, names };
    };
    expect(await readWhole()).toEqual({ keepCache: false, names: 1502 }); // streamed: more than one page of the store
    expect(await readWhole()).toEqual({ keepCache: true, names: 1502 });
    await writeFile(path.join(big, 'new'), '');
    await new Promise((r) => setTimeout(r, 350)); // past the metadata TTL
    expect(await readWhole()).toEqual({ keepCache: false, names: 1503 });
    expect(await readWhole()).toEqual({ keepCache: true, names: 1503 });
  });

  it('answers readdirplus with every file stat\'ed in a directory whose files are being looked up one by one, a listing page at a time; by name alone before', async () => {
    const many = path.join(dir, 'many');
    await mkdir(many);
    const name = (i: number): string => `f${String(i).padStart(4, '0')}`;
    for (let i = 0; i < 2_500; i++) await writeFile(path.join(many, name(i)), 'x'.repeat(i % 7));
    // Entries kept a minute, as a mount keeps them by default for five.
    const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 60_000, metaBudgetBytes: 64 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics, log: createLogger('silent') });
    const vfs = new Vfs({ fs, client: new BlockClient(source, { blockSize: BLOCK, readaheadBytes: 0 }), metrics, metaBudgetBytes: 64 << 20 });
    const { nodeId } = await vfs.lookup(ROOT, 'many', live());
    const { fh } = await vfs.opendir(nodeId, live());
    const files = (entries: Iterable<{ name: string; take(): { attr: { size: number } } | undefined }>): [string, number | null][] =>
      [...entries].filter((e) => e.name.startsWith('f')).map((e) => [e.name, e.take()?.attr.size ?? null]);
    // A first listing (ls -f) waits for no stat: its files go by name alone.
    const cold = files(await vfs.readdirplus(fh, 0));
    expect(cold.length).toBeGreaterThan(0);
    expect(cold.filter(([, size]) => size !== null)).toEqual([]);
    // A walk that stats what it listed (find reads up to 100,000 entries, then stats them).
    for (const [n] of cold.slice(0, 64)) expect((await vfs.lookup(nodeId, n, live())).attr.size).toBe(Number(n.slice(1)) % 7);
    // The listing's third page (its last 500 names, in the folder's order) was not stat'ed by
    // those lookups (of names of the first pages): it is now, before it is answered.
    const walked = files(await vfs.readdirplus(fh, FIRST_CHILD + 2_000));
    expect(walked.length).toBe(500);
    expect(walked.filter(([n, size]) => size !== Number(n.slice(1)) % 7)).toEqual([]);
    vfs.releasedir(fh);
  });

  it('reads a listing too large to keep whole without keeping its files listed by name alone, nor the names of pages past its window', async () => {
    const many = path.join(dir, 'many');
    await mkdir(many);
    for (let i = 0; i < 2_500; i++) await writeFile(path.join(many, `f${String(i).padStart(4, '0')}`), '');
    // A quarter of 1 MiB keeps a listing of ~950 files whole: these 2,500 are kept one by one.
    const m = new Metrics(false);
    const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 60_000, metaBudgetBytes: 1 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics: m, log: createLogger('silent') });
    const stream = fs.streamListing('many');
    let page = await stream.page(LISTING_START);
    const batches = [page.batch];
    let listed = page.children.length;
    while (page.next) {
      // The cursor that reads the next page again (kept for as long as the directory is open)
      // carries the page's held files, but not its batch: that holds every name of the page.
      const cursor = page.next;
      expect(cursor.held.length).toBeGreaterThan(0);
      for (const { entry } of cursor.held) expect(entry.kind === 'listed' && batches.includes(entry.batch)).toBe(false);
      page = await stream.page(cursor);
      batches.push(page.batch);
      listed += page.children.length;
    }
    expect(listed).toBe(2_500);
    // Files by name alone tell nothing a lookup would not ask again: none is kept (~230 bytes each, 575 KB).
    expect(m.metaCacheBytes.sample()).toBeLessThan(16 * 1024);
    // Looked up, a file is stat'ed and kept.
    expect((await fs.lookup('/many/f0007')).kind).toBe('file');
    expect(m.metaCacheBytes.sample()).toBeGreaterThan(0);
  });

  it('gives readdirplus entries the attributes known without a stat, and nodes while they fit a quarter of the metadata budget and half of it again; names only past that or before a stat', async () => {
    for (const n of ['c', 'd', 'e']) await writeFile(path.join(dir, n), n.repeat(3));
    // The metadata cache holds every entry here; the nodes' quarter of the Vfs's budget, three: readdirplus makes them while fewer than 4.5.
    const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 60_000, metaBudgetBytes: 1 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics, log: createLogger('silent') });
    const small = new Vfs({ fs, client: new BlockClient(source, { blockSize: BLOCK, readaheadBytes: 0 }), metrics, metaBudgetBytes: 4 * 300 * 3 });
    const held = await small.lookup(ROOT, 'd', live()); // root and d: room for three more nodes
    // A folder lists its files by name alone: a readdirplus does not wait for their stats, and gives the looked-up one.
    const cold = await small.opendir(ROOT, live());
    // A folder's names come in its own order.
    const byName = (a: [string, number | null], b: [string, number | null]): number => (a[0] < b[0] ? -1 : 1);
    expect([...(await small.readdirplus(cold.fh, 0))].map((e): [string, number | null] => [e.name, e.take()?.attr.size ?? null]).sort(byName)).toEqual([
      ['.', null],
      ['..', null],
      ['a.bin', null],
      ['b.txt', null],
      ['c', null],
      ['d', 3],
      ['e', null],
    ]);
    small.releasedir(cold.fh);
    await fs.getattr('/e'); // a lookup of one file stats the files of its page: their attributes are known from then on
    const { fh } = await small.opendir(ROOT, live());
    const entries = [...(await small.readdirplus(fh, 0))];
    const taken = entries.map((e): [string, number | null] => [e.name, e.take()?.attr.size ?? null]).sort(byName);
    expect(taken).toEqual([
      ['.', null],
      ['..', null],
      ['a.bin', 4 * BLOCK],
      ['b.txt', 1],
      ['c', 3],
      ['d', 3],
      ['e', null],
    ]);
    expect(entries.find((e) => e.name === 'd')!.ino).toBe(held.nodeId);
  });

  it('answers reads from memory at once without making a signal, queues a file\'s reads past eight waiting, and passes the request\'s signal to the block reads that wait', async () => {
    const { nodeId } = await vfs.lookup(ROOT, 'a.bin', live());
    const { fh } = await vfs.open(nodeId, 0, live());
    source.inMemory.add(0);
    const memory = collect();
    const cancelMemory = live();
    vfs.read(fh, 0, 4096, cancelMemory, memory.reply);
    expect(memory.answers).toEqual([Buffer.alloc(4096, 1)]);
    expect(cancelMemory.signalsMade).toBe(0);

    const cancels = Array.from({ length: 10 }, () => live());
    const replies = cancels.map(() => collect());
    cancels.forEach((c, i) => vfs.read(fh, BLOCK + i * 4096, 4096, c, replies[i]!.reply));
    expect(source.waiting).toHaveLength(8); // two wait their turn
    expect(source.waiting[0]!.req.signal).toBe(cancels[0]!.signal);
    const gauge = await metrics.registry.getSingleMetricAsString('cachefs_vfs_reads_waiting');
    expect(gauge).toContain('cachefs_vfs_reads_waiting 8');

    cancels[9]!.abort(); // interrupted while queued: never reaches the source
    cancels[0]!.abort(); // interrupted while waiting: the source gives up
    await tick();
    expect(replies[0]!.answers).toMatchObject([{ code: 'INTERRUPTED' }]);
    expect(source.waiting).toHaveLength(9); // the ninth took the freed place
    expect(replies[9]!.answers).toEqual([]); // still queued
    for (const w of source.waiting.slice(1)) w.go();
    await tick();
    expect(replies[9]!.answers).toMatchObject([{ code: 'INTERRUPTED' }]);
    expect(source.waiting).toHaveLength(9); // its turn came, and it was not made
    expect(replies.slice(1, 9).every((r) => r.answers.length === 1 && Buffer.isBuffer(r.answers[0]))).toBe(true);
    expect(await metrics.registry.getSingleMetricAsString('cachefs_vfs_reads_waiting')).toContain('cachefs_vfs_reads_waiting 0');
  });

  it('ends an open file at release: its signal aborts and the source lets go of what it held for it', async () => {
    const { nodeId } = await vfs.lookup(ROOT, 'a.bin', live());
    const { fh } = await vfs.open(nodeId, 0, live());
    const r = collect();
    vfs.read(fh, 0, 4096, live(), r.reply);
    const handle = source.waiting[0]!.req.handle!;
    expect(handle.signal.aborted).toBe(false);
    vfs.release(fh);
    expect(handle.signal.aborted).toBe(true);
    expect(source.released).toEqual([handle.id]);
    expect(() => vfs.read(fh, 0, 4096, live(), collect().reply)).toThrow(CachefsError);
  });
});
