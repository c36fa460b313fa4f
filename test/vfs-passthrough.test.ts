/**
 * Which opens pass through (`vfs/passthrough.ts`), driven without a kernel: a real
 * `Filesystem` over a folder, a real `BlockClient` over a source whose cached blocks are
 * real files, and a registry of backing files that records what the kernel would be told.
 * The kernel's own rules are what is proved kept: one backing per file, no mix of
 * passthrough and ordinary opens, a backing per version, ids given back at release.
 */
import { closeSync, openSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockRef, type BlockRef } from '../src/block/block.js';
import type { HeldBlockFile } from '../src/cache/block-files.js';
import { BlockClient } from '../src/client/block-client.js';
import type { BlockRead, BlockSource, LocalFile } from '../src/client/block-source.js';
import { isCachefsError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { LocalUfs } from '../src/ufs/local.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { Filesystem } from '../src/vfs/filesystem.js';
import type { BackingFiles } from '../src/vfs/passthrough.js';
import { Vfs, type Cancellation } from '../src/vfs/vfs.js';
import { registryValue } from './support/metrics.js';

const BLOCK = 64 * 1024;
const ROOT = 1;

/** Blocks of keys in `cached` have a local file (a copy in the test dir); reads are not the point here. */
class CachedFileSource implements BlockSource {
  readonly cached = new Set<string>();
  openFds = 0;
  looks = 0;
  constructor(private readonly dir: string) {}
  async localFile(ref: BlockRef): Promise<HeldBlockFile | undefined> {
    this.looks += 1;
    if (!this.cached.has(ref.object.key)) return undefined;
    const fd = openSync(path.join(this.dir, ref.object.key), 'r');
    this.openFds += 1;
    return { fd, release: () => (closeSync(fd), (this.openFds -= 1)) };
  }
  read(req: BlockRead): Promise<number> {
    return Promise.resolve(req.length);
  }
  prefetch(): void {}
  async close(): Promise<void> {}
}

/** The same, as the mount's own store: its files carry a store id, and it tells of their removal. */
class StoreFileSource extends CachedFileSource {
  private readonly removed: ((storeId: string) => void)[] = [];
  override async localFile(ref: BlockRef): Promise<LocalFile | undefined> {
    const held = await super.localFile(ref);
    return held && { ...held, storeId: ref.id };
  }
  onLocalFileRemoved(listener: (storeId: string) => void): void {
    this.removed.push(listener);
  }
  drop(storeId: string): void {
    for (const l of this.removed) l(storeId);
  }
}

/** What the kernel is told: ids handed out and given back; `refuse` makes it answer none. */
class RecordedBackings implements BackingFiles {
  private next = 1;
  /** The backing ids handed out and not yet given back. */
  readonly held = new Set<number>();
  refuse = false;
  open(): number | undefined {
    if (this.refuse) return undefined;
    const id = this.next++;
    this.held.add(id);
    return id;
  }
  close(id: number): boolean {
    if (!this.held.delete(id)) throw new Error(`backing id ${id} closed twice`);
    return true;
  }
}

const live: Cancellation = { aborted: false, signal: new AbortController().signal };

let dir: string;
let source: CachedFileSource;
let backings: RecordedBackings;
let vfs: Vfs;
let metrics: Metrics;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cachefs-vfs-pt-'));
  await writeFile(path.join(dir, 'small.bin'), Buffer.alloc(BLOCK - 1, 1));
  await writeFile(path.join(dir, 'large.bin'), Buffer.alloc(BLOCK + 1, 2));
  metrics = new Metrics(false);
  source = new CachedFileSource(dir);
  backings = new RecordedBackings();
  const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 1, metaBudgetBytes: 64 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics, log: createLogger('silent') });
  vfs = new Vfs({ fs, client: new BlockClient(source, { blockSize: BLOCK, readaheadBytes: 0 }), metrics, metaBudgetBytes: 64 << 20 });
  vfs.usePassthrough(backings);
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function openOf(name: string) {
  const { nodeId } = await vfs.lookup(ROOT, name, live);
  return vfs.open(nodeId, 0, live);
}

describe('passthrough opens', () => {
  it("shares one backing id among the opens of a cached one-block file, closes its descriptor at once, keeps the id past the last release (a co-located worker's file), and gives it back once the worker removed the file", async () => {
    source.cached.add('small.bin');
    const [a, b] = await Promise.all([openOf('small.bin'), openOf('small.bin')]);
    expect(a.backingId).toBeDefined();
    expect(b.backingId).toBe(a.backingId);
    expect(source.openFds).toBe(0);
    expect(await registryValue(metrics.registry, 'cachefs_fuse_passthrough_open')).toBe(1);
    expect(await registryValue(metrics.registry, 'cachefs_fuse_passthrough_opens_total')).toBe(2);
    vfs.release(a.fh);
    expect(backings.held.size).toBe(1);
    vfs.release(b.fh);
    expect(await registryValue(metrics.registry, 'cachefs_fuse_passthrough_open')).toBe(0);
    // Kept: the next open takes it without asking the source for the file again.
    expect(backings.held.size).toBe(1);
    const looks = source.looks;
    const again = await openOf('small.bin');
    expect(again.backingId).toBe(a.backingId);
    expect(source.looks).toBe(looks);
    vfs.release(again.fh);
    // The worker evicts the file (unlinks it): the sweep gives the id back within seconds.
    unlinkSync(path.join(dir, 'small.bin'));
    for (let i = 0; i < 60 && backings.held.size > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(backings.held.size).toBe(0);
  });

  it('passes nothing through while the file is open the ordinary way, nor an object of more than one block', async () => {
    const ordinary = await openOf('small.bin'); // not cached yet
    expect(ordinary.backingId).toBeUndefined();
    source.cached.add('small.bin');
    source.cached.add('large.bin');
    expect((await openOf('small.bin')).backingId).toBeUndefined();
    expect((await openOf('large.bin')).backingId).toBeUndefined();
    vfs.release(ordinary.fh);
    // The second ordinary open of small.bin is still held: still no passthrough.
    expect((await openOf('small.bin')).backingId).toBeUndefined();
    expect(backings.held.size).toBe(0);
  });

  it('fails STALE an open of a new version while the old one passes through, and passes the new one through once those are released', async () => {
    source.cached.add('small.bin');
    const old = await openOf('small.bin');
    expect(old.backingId).toBeDefined();
    writeFileSync(path.join(dir, 'small.bin'), Buffer.alloc(100, 3));
    await new Promise((r) => setTimeout(r, 5)); // past the 1 ms metadata TTL
    const refused = await openOf('small.bin').catch((err: unknown) => err);
    expect(isCachefsError(refused, 'STALE')).toBe(true);
    vfs.release(old.fh);
    expect([...backings.held]).toEqual([old.backingId]); // kept, for an open of its version
    const next = await openOf('small.bin');
    expect(next.backingId).toBeDefined();
    expect(next.backingId).not.toBe(old.backingId);
    expect([...backings.held]).toEqual([next.backingId]); // the old version's given back
    vfs.release(next.fh);
  });

  it("keeps a released file's backing registered for the next open of its version, and gives it back when the store drops the file or another version is opened", async () => {
    const store = new StoreFileSource(dir);
    const client = new BlockClient(store, { blockSize: BLOCK, readaheadBytes: 0 });
    const fs = new Filesystem({ ufs: new LocalUfs(parseUfsUri(`file://${dir}`)), mountId: 'test', metaTtlMs: 1, metaBudgetBytes: 64 << 20, owner: { uid: 0, gid: 0 }, capacityBytes: 1 << 30, metrics, log: createLogger('silent') });
    vfs = new Vfs({ fs, client, metrics: new Metrics(false), metaBudgetBytes: 64 << 20 });
    vfs.usePassthrough(backings);
    store.cached.add('small.bin');
    const first = await openOf('small.bin');
    vfs.release(first.fh);
    expect(backings.held.size).toBe(1); // kept
    const again = await openOf('small.bin');
    expect(again.backingId).toBe(first.backingId);
    expect(store.looks).toBe(1); // no look for the file, no registration
    vfs.release(again.fh);
    // The store drops the file: the kept backing goes with it.
    const object = await fs.open('/small.bin', 0);
    store.drop(blockRef(object, BLOCK, 0).id);
    expect(backings.held.size).toBe(0);
    const third = await openOf('small.bin');
    expect(third.backingId).not.toBe(first.backingId);
    // Dropped while open: given back at the release, not kept.
    store.drop(blockRef(object, BLOCK, 0).id);
    vfs.release(third.fh);
    expect(backings.held.size).toBe(0);
    // Kept, then the object changes: the open of the new version gives the old one back.
    vfs.release((await openOf('small.bin')).fh);
    expect(backings.held.size).toBe(1);
    writeFileSync(path.join(dir, 'small.bin'), Buffer.alloc(100, 3));
    await new Promise((r) => setTimeout(r, 5)); // past the 1 ms metadata TTL
    const next = await openOf('small.bin');
    expect(backings.held.size).toBe(1);
    expect([...backings.held]).toEqual([next.backingId]);
    vfs.release(next.fh);
  });

  it('reads the ordinary way when the kernel refuses the backing file', async () => {
    source.cached.add('small.bin');
    backings.refuse = true;
    const refused = await openOf('small.bin');
    expect(refused.backingId).toBeUndefined();
    expect(source.openFds).toBe(0);
    vfs.release(refused.fh);
    backings.refuse = false;
    expect((await openOf('small.bin')).backingId).toBeDefined();
  });
});
