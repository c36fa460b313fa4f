/**
 * `ColocatedWorker`, a client's reads from a worker on its node, against a real
 * worker `DomainSocketService` over a read-through store in a temp dir: blocks are
 * pinned per file handle (at most 16, the most recently opened) and read from their
 * files through the descriptors the worker passes; releasing a handle unpins its blocks
 * and closes their descriptors; a damaged block file is never served; when the block
 * files are not visible here (the worker's tier dir is in another mount namespace) the
 * passed descriptors read them all the same, and a worker that passes none streams the
 * bytes over the socket instead.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { blockRef, type BlockRef, type ObjectRef } from '../src/block/block.js';
import { BlockFiles } from '../src/cache/block-files.js';
import { CachedBlocks } from '../src/cache/cached-blocks.js';
import { READ_POLICY } from '../src/cache/read-policy.js';
import { ReadThrough } from '../src/cache/read-through.js';
import { UfsReader } from '../src/cache/ufs-reader.js';
import { TieredStore } from '../src/cache/tiered-store.js';
import type { BlockRead } from '../src/client/block-source.js';
import { ColocatedWorker } from '../src/client/colocated-worker.js';
import { Readahead } from '../src/client/readahead.js';
import { silentLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { ClusterSecret } from '../src/net/auth.js';
import { LocalUfs } from '../src/ufs/local.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { DomainSocketService } from '../src/worker/domain-socket-service.js';
import { registryValue } from './support/metrics.js';
import { waitFor } from './support/processes.js';

const MiB = 1024 * 1024;
/** The cluster secret the worker sockets of these tests want (the hidden worker gets it through its environment). */
const SECRET_TEXT = randomBytes(32).toString('hex');
const SECRET = ClusterSecret.of(SECRET_TEXT);
const BLOCKS = 20;
const body = randomBytes(BLOCKS * MiB - 77);
const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../dist');

let work: string;
let ufsRoot: string;
let object: ObjectRef;
const ref = (index: number): BlockRef => blockRef(object, MiB, index);
const opened: { close(): Promise<void> | void }[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-colocated-'));
  ufsRoot = path.join(work, 'ufs');
  await mkdir(ufsRoot);
  object = await putObject('obj.bin', body);
});

/** Writes `bytes` as the UFS object `key`; its reference. */
async function putObject(key: string, bytes: Buffer): Promise<ObjectRef> {
  await writeFile(path.join(ufsRoot, key), bytes);
  const st = (await new LocalUfs(parseUfsUri(`file://${ufsRoot}`)).stat(key))!;
  return { mount: 'm', key, etag: st.etag, size: st.size };
}

afterEach(async () => {
  for (const x of opened.splice(0).reverse()) await x.close();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** A worker's socket service in this process, over a store of its own. */
async function worker(passDescriptors = true): Promise<{ store: TieredStore; metrics: Metrics; socketPath: string; service: DomainSocketService }> {
  const dir = await mkdtemp(path.join(work, 'worker-'));
  const metrics = new Metrics(false);
  const store = new TieredStore({ tiers: [{ medium: 'SSD', dir: path.join(dir, 'tier'), quotaBytes: 256 * MiB }], high: 0.9, low: 0.7 }, metrics, silentLogger);
  await store.open();
  opened.push(store);
  const ufs = new LocalUfs(parseUfsUri(`file://${ufsRoot}`));
  const service = await DomainSocketService.start({ path: path.join(dir, 'sock', 'worker.sock'), auth: SECRET, passDescriptors }, new CachedBlocks(new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, silentLogger)), metrics, silentLogger);
  opened.push(service);
  return { store, metrics, socketPath: service.path, service };
}

function colocated(socketPath: string): { near: ColocatedWorker; metrics: Metrics; files: BlockFiles } {
  const metrics = new Metrics(false);
  const files = new BlockFiles();
  const near = new ColocatedWorker('w', socketPath, files, READ_POLICY.pinsPerHandle, silentLogger, metrics, SECRET);
  opened.push(near);
  return { near, metrics, files };
}

const readBy = (metrics: Metrics, path: string, via?: string): Promise<number> => registryValue(metrics.registry, 'cachefs_client_read_bytes_total', via ? { path, via } : { path });

/** Reads the whole block for `handle` and checks its bytes. */
async function readBlock(near: ColocatedWorker, index: number, handle: number): Promise<void> {
  const r = ref(index);
  const req: BlockRead = { ref: r, offset: 0, length: r.length, dest: Buffer.alloc(r.length), destOffset: 0, pattern: 'random', handle: { id: handle, signal: new AbortController().signal } };
  expect(await near.read(req)).toBe(r.length);
  expect(req.dest.equals(body.subarray(r.offset, r.offset + r.length))).toBe(true);
}

describe('ColocatedWorker', () => {
  it('reads a block through the descriptor the worker passed, pinned once for the handle however often it reads it', async () => {
    const w = await worker();
    const { near, metrics, files } = colocated(w.socketPath);
    await readBlock(near, 0, 1);
    await readBlock(near, 0, 1);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(2 * MiB);
    expect(await readBy(metrics, 'short_circuit', 'path')).toBe(0);
    expect(await readBy(metrics, 'domain_socket')).toBe(0);
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_requests_total', { path: 'short_circuit', status: 'open' })).toBe(1);
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_passed_descriptors_total')).toBe(1);
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_socket_pins')).toBe(1);
    expect(files.adoptedCount).toBe(1);
    expect(w.store.pinnedCount).toBe(1);
    expect(w.store.isPinned(ref(0).id)).toBe(true);
    expect(near.streamsOverSocket).toBe(false);
    // Released: the pin and the descriptor go.
    near.release(1);
    expect(files.adoptedCount).toBe(0);
    await waitFor(() => w.store.pinnedCount === 0, { timeoutMs: 3000, what: 'the pin to go' });
  });

  it('closes the descriptors it holds when the connection drops (the worker has unpinned them)', async () => {
    const w = await worker();
    const { near, files } = colocated(w.socketPath);
    await readBlock(near, 0, 1);
    await readBlock(near, 1, 1);
    expect(files.adoptedCount).toBe(2);
    const fdsOf = () => readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).includes(path.dirname(w.store.lookup(ref(0).id)!.path).split('/blocks/')[0]!);
      } catch {
        return false;
      }
    }).length;
    const held = fdsOf();
    // The worker's own kept descriptors of the same files are in this process too, and stay: only ours go.
    await w.service.close();
    await waitFor(() => files.adoptedCount === 0, { timeoutMs: 3000, what: 'the passed descriptors to be closed' });
    expect(fdsOf()).toBe(held - 2);
    expect(w.store.pinnedCount).toBe(0);
  });

  it('reads block files by path from a worker that passes no descriptors', async () => {
    const w = await worker(false);
    const { near, metrics, files } = colocated(w.socketPath);
    await readBlock(near, 0, 1);
    expect(await readBy(metrics, 'short_circuit', 'path')).toBe(MiB);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(0);
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_passed_descriptors_total')).toBe(0);
    expect(files.adoptedCount).toBe(0);
  });

  it('pins at most 16 blocks per handle, its most recently opened, and still reads the others', async () => {
    const w = await worker();
    const { near } = colocated(w.socketPath);
    for (let i = 0; i < BLOCKS; i++) await readBlock(near, i, 1);
    await waitFor(() => w.store.pinnedCount === 16, { timeoutMs: 3000, what: 'the oldest pins to go' });
    for (let i = 0; i < BLOCKS; i++) expect(w.store.isPinned(ref(i).id), `block ${i}`).toBe(i >= BLOCKS - 16);
    // A block let go of is opened (and pinned) again, and the oldest pin goes instead.
    await readBlock(near, 0, 1);
    await waitFor(() => !w.store.isPinned(ref(BLOCKS - 16).id), { timeoutMs: 3000, what: 'the next oldest pin to go' });
    expect(w.store.isPinned(ref(0).id)).toBe(true);
    expect(w.store.pinnedCount).toBe(16);
    // Another handle has a budget of its own.
    await readBlock(near, 1, 2);
    expect(w.store.pinnedCount).toBe(17);
  });

  it('a stream whose readahead window is the pin budget pins each block once, and keeps the block it reads pinned', async () => {
    const w = await worker();
    const { near, metrics } = colocated(w.socketPath);
    // The block client's readahead at the defaults: a 64 MiB window of 4 MiB blocks is the 16-pin budget.
    const readahead = new Readahead(READ_POLICY.pinsPerHandle, 0);
    // An object of 48 blocks: long enough for the window to be full for most of the stream.
    const count = 48;
    const long = randomBytes(count * MiB);
    const longObject = await putObject('long.bin', long);
    const block = (index: number): BlockRef => blockRef(longObject, MiB, index);
    const half = MiB / 2;
    for (let i = 0; i < count; i++) {
      const r = block(i);
      for (const offset of [0, half]) {
        const length = Math.min(half, r.length - offset);
        const req: BlockRead = { ref: r, offset, length, dest: Buffer.alloc(length), destOffset: 0, pattern: 'sequential', streaming: true, handle: { id: 1, signal: new AbortController().signal } };
        expect(await near.read(req)).toBe(length);
        expect(req.dest.equals(long.subarray(r.offset + offset, r.offset + offset + length)), `block ${i} at ${offset}`).toBe(true);
        expect(readahead.observe(r.offset + offset, length)).toBe('sequential');
        if (offset === 0) await Promise.all(readahead.blocksToPrefetch(i, count).map((k) => near.pinAhead(block(k), 1)));
        expect(w.store.isPinned(r.id), `block ${i} pinned while it is read`).toBe(true);
      }
    }
    // Every block asked for and passed once: none let go while it was read and pinned again.
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_requests_total', { path: 'short_circuit', status: 'open' })).toBe(count);
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_passed_descriptors_total')).toBe(count);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(long.length);
    await waitFor(() => w.store.pinnedCount <= READ_POLICY.pinsPerHandle, { timeoutMs: 3000, what: 'pins within the budget' });
    near.release(1);
    await waitFor(() => w.store.pinnedCount === 0, { timeoutMs: 3000, what: 'the stream to let go of its pins' });
  });

  it('with small blocks, never lets go of a block the kernel\'s readahead is still reading: 8 reads at once, each block passed once, no byte over the socket', async () => {
    const w = await worker();
    const { near, metrics } = colocated(w.socketPath);
    // 1 MiB blocks under the default 64 MiB readahead: a window of 64 blocks against the 16-pin budget,
    // and the kernel's 8 MiB readahead has 8 blocks' reads in flight at once.
    const count = 40;
    const long = randomBytes(count * MiB);
    const smallBlocks = await putObject('small-blocks.bin', long);
    const block = (index: number): BlockRef => blockRef(smallBlocks, MiB, index);
    const readahead = new Readahead(64, 0);
    const prefetches: Promise<void>[] = [];
    const readOne = async (i: number): Promise<void> => {
      const r = block(i);
      expect(readahead.observe(r.offset, r.length)).toBe('sequential');
      // The prefetch runs in the background, as the block client's does.
      for (const k of readahead.blocksToPrefetch(i, count)) prefetches.push(near.pinAhead(block(k), 1));
      const req: BlockRead = { ref: r, offset: 0, length: r.length, dest: Buffer.alloc(r.length), destOffset: 0, pattern: 'sequential', streaming: true, handle: { id: 1, signal: new AbortController().signal } };
      expect(await near.read(req)).toBe(r.length);
      expect(req.dest.equals(long.subarray(r.offset, r.offset + r.length)), `block ${i}`).toBe(true);
    };
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next < count) await readOne(next++);
    }));
    await Promise.all(prefetches);
    expect(await readBy(metrics, 'domain_socket')).toBe(0);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(long.length);
    expect(await registryValue(w.metrics.registry, 'cachefs_worker_passed_descriptors_total')).toBe(count);
    near.release(1);
    await waitFor(() => w.store.pinnedCount === 0, { timeoutMs: 3000, what: 'the stream to let go of its pins' });
  });

  it('unpins what a handle opened when it is released, and nothing another handle holds', async () => {
    const w = await worker();
    const { near } = colocated(w.socketPath);
    await readBlock(near, 0, 1);
    await readBlock(near, 1, 1);
    await readBlock(near, 1, 2);
    await readBlock(near, 2, 2);
    expect(w.store.pinnedCount).toBe(3);
    near.release(1);
    await waitFor(() => !w.store.isPinned(ref(0).id), { timeoutMs: 3000, what: 'handle 1 to let go of block 0' });
    expect(w.store.isPinned(ref(1).id)).toBe(true);
    expect(w.store.isPinned(ref(2).id)).toBe(true);
    near.release(2);
    await waitFor(() => w.store.pinnedCount === 0, { timeoutMs: 3000, what: 'handle 2 to let go of its blocks' });
  });

  it('never serves a damaged block file: a held descriptor reads that block over the socket, where the worker drops and refetches it', async () => {
    const w = await worker();
    const { near, metrics } = colocated(w.socketPath);
    await readBlock(near, 3, 1);
    await truncate(w.store.lookup(ref(3).id)!.path, 1000);
    const r = ref(3);
    const dest = Buffer.alloc(r.length);
    expect(await near.read({ ref: r, offset: 0, length: r.length, dest, destOffset: 0, pattern: 'random', handle: { id: 1, signal: new AbortController().signal } })).toBe(r.length);
    expect(dest.equals(body.subarray(r.offset, r.offset + r.length))).toBe(true);
    expect(await readBy(metrics, 'domain_socket')).toBe(r.length);
    expect(await registryValue(metrics.registry, 'cachefs_cache_corrupt_blocks_total')).toBe(1);
    // Only that read went over the socket: the block files are still read in place.
    expect(near.streamsOverSocket).toBe(false);
    await waitFor(() => w.store.lookup(ref(3).id)?.length === r.length, { timeoutMs: 3000, what: 'the worker to store the block again' });
    // The next open gets the new file's descriptor.
    await readBlock(near, 3, 2);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(2 * r.length);
  });

  it('the worker checks a block file before it passes its descriptor: a damaged one is dropped and fetched again', async () => {
    const w = await worker();
    const { near, metrics } = colocated(w.socketPath);
    await readBlock(near, 4, 1);
    near.release(1);
    await truncate(w.store.lookup(ref(4).id)!.path, 1000);
    await readBlock(near, 4, 2);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(2 * MiB);
    expect(await readBy(metrics, 'domain_socket')).toBe(0);
    expect(await registryValue(w.metrics.registry, 'cachefs_cache_corrupt_blocks_total')).toBe(1);
  });
});

describe('ColocatedWorker with block files it cannot see', () => {
  let child: ChildProcess | undefined;

  afterEach(async () => {
    const c = child;
    child = undefined;
    if (c && c.exitCode === null && c.signalCode === null) {
      const exited = new Promise((resolve) => c.once('exit', resolve));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  });

  /**
   * A worker process in a mount namespace of its own, its tier dir on a tmpfs there: the
   * paths it answers do not exist in ours (ENOENT); its socket dir is shared with us.
   */
  async function hiddenWorker(passDescriptors = true): Promise<string> {
    const dir = await mkdtemp(path.join(work, 'hidden-'));
    const tier = path.join(dir, 'tier');
    const socketPath = path.join(dir, 'sock', 'worker.sock');
    await mkdir(tier);
    const mod = (p: string): string => JSON.stringify(pathToFileURL(path.join(DIST, p)).href);
    const script = `
      import { TieredStore } from ${mod('cache/tiered-store.js')};
      import { CachedBlocks } from ${mod('cache/cached-blocks.js')};
      import { ReadThrough } from ${mod('cache/read-through.js')};
      import { UfsReader } from ${mod('cache/ufs-reader.js')};
      import { DomainSocketService } from ${mod('worker/domain-socket-service.js')};
      import { LocalUfs } from ${mod('ufs/local.js')};
      import { parseUfsUri } from ${mod('ufs/uri.js')};
      import { Metrics } from ${mod('metrics/metrics.js')};
      import { silentLogger } from ${mod('log.js')};
      import { ClusterSecret } from ${mod('net/auth.js')};
      const [tier, socketPath, ufsRoot] = process.argv.slice(1);
      const metrics = new Metrics(false);
      const store = new TieredStore({ tiers: [{ medium: 'SSD', dir: tier, quotaBytes: 256 * 1024 * 1024 }], high: 0.9, low: 0.7 }, metrics, silentLogger);
      await store.open();
      const ufs = new LocalUfs(parseUfsUri('file://' + ufsRoot));
      const service = await DomainSocketService.start({ path: socketPath, auth: ClusterSecret.of(process.env.CACHEFS_TEST_SOCKET_SECRET), passDescriptors: process.argv[4] === 'on' }, new CachedBlocks(new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, silentLogger)), metrics, silentLogger);
      process.once('SIGTERM', () => void service.close().then(() => store.close()).then(() => process.exit(0)));
      process.stdout.write('ready\\n');`;
    const c = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs tmpfs "$0" && exec "$@"', tier, process.execPath, '--input-type=module', '-e', script, tier, socketPath, ufsRoot, passDescriptors ? 'on' : 'off'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CACHEFS_TEST_SOCKET_SECRET: SECRET_TEXT } });
    child = c;
    let out = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(
      () => {
        if (c.exitCode !== null) throw new Error(`the hidden worker exited with ${c.exitCode}: ${out}`);
        return out.includes('ready');
      },
      { timeoutMs: 15_000, intervalMs: 50, what: 'the hidden worker' },
    );
    return socketPath;
  }

  it('reads them through the descriptors the worker passes', async () => {
    const { near, metrics } = colocated(await hiddenWorker());
    await readBlock(near, 0, 1);
    await readBlock(near, 1, 1);
    expect(near.streamsOverSocket).toBe(false);
    expect(await readBy(metrics, 'short_circuit', 'descriptor')).toBe(2 * MiB);
    expect(await readBy(metrics, 'domain_socket')).toBe(0);
  });

  it('from a worker that passes no descriptors: streams the bytes over the socket from then on (ENOENT)', async () => {
    const { near, metrics } = colocated(await hiddenWorker(false));
    await readBlock(near, 0, 1);
    expect(near.streamsOverSocket).toBe(true);
    await readBlock(near, 1, 1);
    expect(await registryValue(metrics.registry, 'cachefs_client_read_bytes_total', { path: 'domain_socket' })).toBe(2 * MiB);
    expect(await registryValue(metrics.registry, 'cachefs_client_read_bytes_total', { path: 'short_circuit' })).toBe(0);
    // A stream entering a block takes all of it in one request.
    const held = await near.readBlock(ref(BLOCKS - 1));
    expect(held.from).toBe('domain_socket');
    expect(held.data.equals(body.subarray(ref(BLOCKS - 1).offset))).toBe(true);
  });
});
