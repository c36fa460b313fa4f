/**
 * `ClusterSource`, a cluster mount's block source, through its public API against
 * real parts on 127.0.0.1: a master (in-process) whose registry the `Membership`
 * polls, workers that are a real `BlockService` (and, where co-located, a real
 * `DomainSocketService`) over a real read-through store in a temp dir, workers that
 * answer every block request with one error of the block protocol, and a folder as
 * the UFS. It proves the fallback order (owner, then the next workers in rendezvous
 * order, then the UFS), that a failed worker is suspected, that errors another
 * worker would repeat are not retried, and how co-location is decided.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { blockRef, type BlockRef, type ObjectRef } from '../src/block/block.js';
import { BufferPool } from '../src/block/buffer-pool.js';
import { CachedBlocks } from '../src/cache/cached-blocks.js';
import { READ_POLICY } from '../src/cache/read-policy.js';
import { ReadThrough } from '../src/cache/read-through.js';
import { UfsReader } from '../src/cache/ufs-reader.js';
import { TieredStore } from '../src/cache/tiered-store.js';
import type { BlockRead, ReadHandle } from '../src/client/block-source.js';
import { ClusterSource, type ShortCircuitMode } from '../src/client/cluster-source.js';
import { Membership } from '../src/client/membership.js';
import { WorkerRing } from '../src/client/worker-ring.js';
import { CachefsError, type ErrorCode } from '../src/errors.js';
import { silentLogger } from '../src/log.js';
import { MasterClient } from '../src/master/client.js';
import { MemoryMetaStore } from '../src/master/memory-store.js';
import { MasterServer } from '../src/master/server.js';
import { Metrics } from '../src/metrics/metrics.js';
import { statusForCode } from '../src/net/block-protocol.js';
import { LocalUfs } from '../src/ufs/local.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { BlockService } from '../src/worker/block-service.js';
import { DomainSocketService } from '../src/worker/domain-socket-service.js';
import { registryValue } from './support/metrics.js';
import { waitFor } from './support/processes.js';

const MiB = 1024 * 1024;
const body = randomBytes(4 * MiB + 123);
const HOSTNAME = 'node-a';

let work: string;
let ufs: LocalUfs;
let object: ObjectRef;
let master: MasterServer;
let client: MasterClient;
let group = 0;
/** Closed after each test, last opened first. */
const opened: { close(): Promise<void> }[] = [];

const ref = (index: number): BlockRef => blockRef(object, MiB, index);
const bytesOf = (r: BlockRef): Buffer => body.subarray(r.offset, r.offset + r.length);

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-cluster-source-'));
  await mkdir(path.join(work, 'ufs'));
  await writeFile(path.join(work, 'ufs', 'obj.bin'), body);
  ufs = new LocalUfs(parseUfsUri(`file://${path.join(work, 'ufs')}`));
  const st = (await ufs.stat('obj.bin'))!;
  object = { mount: 'm', key: 'obj.bin', etag: st.etag, size: st.size };
  master = await MasterServer.start({ store: new MemoryMetaStore(), host: '127.0.0.1', port: 0, workerTimeoutMs: 120_000, withProcessMetrics: false });
  client = new MasterClient(`127.0.0.1:${master.port}`, { retries: 0, timeoutMs: 2000 });
});

afterEach(async () => {
  for (const x of opened.splice(0).reverse()) await x.close();
});

afterAll(async () => {
  await client?.close();
  await master?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

interface TestWorker {
  id: string;
  /** Block requests that reached it. */
  requests(): Promise<number>;
  /** Bytes it handed out by `path` (remote, short_circuit, domain_socket). */
  served(path: string): Promise<number>;
  /** Blocks pinned on it. */
  pinned(): number;
}

interface Registration {
  cacheGroup: string;
  hostname?: string;
  domainSocketPath?: string;
}

async function register(id: string, address: string, r: Registration): Promise<void> {
  await client.registerWorker({ id, cacheGroup: r.cacheGroup, address, hostname: r.hostname ?? HOSTNAME, domainSocketPath: r.domainSocketPath ?? '', startedAt: Date.now(), instance: `${id}-${group}`, capacityBytes: 64 * MiB, usedBytes: 0, blocks: 0, tiers: [] });
}

/** A real worker: block service (and socket service, with `socket`) over a read-through store of its own. */
async function cacheWorker(id: string, r: Registration & { socket?: boolean }): Promise<TestWorker> {
  const dir = await mkdtemp(path.join(work, `${id}-`));
  const metrics = new Metrics(false);
  const store = new TieredStore({ tiers: [{ medium: 'SSD', dir: path.join(dir, 'tier'), quotaBytes: 64 * MiB }], high: 0.9, low: 0.7 }, metrics, silentLogger);
  await store.open();
  opened.push(store);
  const blocks = new CachedBlocks(new ReadThrough(store, new UfsReader(async () => ufs, metrics), metrics, silentLogger));
  const service = await BlockService.start({ blocks, buffers: new BufferPool(MiB, 4), inFlightBytes: 64 * MiB, metrics, registry: metrics.registry, log: silentLogger, host: '127.0.0.1', port: 0 });
  opened.push(service);
  let domainSocketPath = r.domainSocketPath;
  if (r.socket) {
    const sockets = await DomainSocketService.start(path.join(dir, 'sock', 'worker.sock'), blocks, metrics, silentLogger);
    opened.push(sockets);
    domainSocketPath ??= sockets.path;
  }
  await register(id, `127.0.0.1:${service.port}`, { ...r, domainSocketPath });
  return {
    id,
    requests: () => registryValue(metrics.registry, 'cachefs_worker_requests_total'),
    served: (p) => registryValue(metrics.registry, 'cachefs_worker_served_bytes_total', { path: p }),
    pinned: () => store.pinnedCount,
  };
}

/** A worker that answers every block request with `code`, as the block protocol carries errors. */
async function failingWorker(id: string, code: ErrorCode, r: Registration): Promise<TestWorker> {
  let requests = 0;
  const server: Server = createServer((req, res) => {
    requests++;
    const text = JSON.stringify({ error: { code, message: `injected ${code}` } });
    res.writeHead(statusForCode(code), { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) }).end(text);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  opened.push({ close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }) });
  await register(id, `127.0.0.1:${(server.address() as AddressInfo).port}`, r);
  return { id, requests: async () => requests, served: async () => 0, pinned: () => 0 };
}

/** A registered worker nobody listens for: connections are refused. */
async function deadWorker(id: string, r: Registration): Promise<TestWorker> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await register(id, `127.0.0.1:${port}`, r);
  return { id, requests: async () => 0, served: async () => 0, pinned: () => 0 };
}

/** A fresh cache group of `size` worker ids (ids are unique across groups), ordered as the ring orders them for `block`: owner first. */
function newGroup(size: number, block: BlockRef): { cacheGroup: string; order: string[] } {
  const cacheGroup = `cs${++group}`;
  const members = Array.from({ length: size }, (_, i) => ({ id: `${cacheGroup}-w${i + 1}` }));
  return { cacheGroup, order: new WorkerRing(members).order(block.id).map((w) => w.id) };
}

/**
 * A fresh cache group of two workers, `near` owning block 0 and `far` owning `farBlock`
 * (block ids change with the object's etag, so the group is drawn until there is one).
 */
function twoOwnerGroup(): { cacheGroup: string; nearId: string; farId: string; farBlock: BlockRef } {
  for (;;) {
    const { cacheGroup, order } = newGroup(2, ref(0));
    const ring = new WorkerRing(order.map((id) => ({ id })));
    const farBlock = [1, 2, 3, 4].map(ref).find((r) => ring.owner(r.id)!.id === order[1]);
    if (farBlock) return { cacheGroup, nearId: order[0]!, farId: order[1]!, farBlock };
  }
}

async function source(cacheGroup: string, shortCircuit: ShortCircuitMode = 'off'): Promise<{ source: ClusterSource; membership: Membership; metrics: Metrics }> {
  const membership = new Membership(client, cacheGroup, silentLogger, 60_000);
  opened.push(membership);
  await membership.start();
  const metrics = new Metrics(false);
  const s = new ClusterSource({ membership, shortCircuit, hostname: HOSTNAME, ufs: new UfsReader(async () => ufs, metrics), blockSize: MiB, policy: { ...READ_POLICY, clusterMemoryBytes: 8 * MiB, clusterPrefetches: 2 }, metrics, log: silentLogger });
  opened.push(s);
  return { source: s, membership, metrics };
}

const handle = (id: number): ReadHandle => ({ id, signal: new AbortController().signal });

function whole(r: BlockRef, extra: Partial<BlockRead> = {}): BlockRead {
  return { ref: r, offset: 0, length: r.length, dest: Buffer.alloc(r.length), destOffset: 0, pattern: 'random', ...extra };
}

/** Reads the whole block and checks its bytes. */
async function readBlock(s: ClusterSource, r: BlockRef, extra: Partial<BlockRead> = {}): Promise<void> {
  const req = whole(r, extra);
  expect(await s.read(req)).toBe(r.length);
  expect(req.dest.equals(bytesOf(r))).toBe(true);
}

const readBytes = (metrics: Metrics, p: string): Promise<number> => registryValue(metrics.registry, 'cachefs_client_read_bytes_total', { path: p });
const ids = (ws: readonly { id: string }[]): string[] => ws.map((w) => w.id);

describe('ClusterSource: where a block comes from', () => {
  it('reads a block from its owner, and from no other worker', async () => {
    const { cacheGroup, order } = newGroup(3, ref(0));
    const workers = new Map<string, TestWorker>();
    for (const id of order) workers.set(id, await cacheWorker(id, { cacheGroup }));
    const { source: s, metrics } = await source(cacheGroup);
    await readBlock(s, ref(0));
    expect(await workers.get(order[0]!)!.served('remote')).toBe(MiB);
    for (const id of order.slice(1)) expect(await workers.get(id)!.requests()).toBe(0);
    expect(await readBytes(metrics, 'remote')).toBe(MiB);
    expect(await readBytes(metrics, 'ufs')).toBe(0);
    expect(await registryValue(metrics.registry, 'cachefs_ufs_requests_total')).toBe(0);
  });

  for (const failure of ['IO', 'UNREACHABLE'] as const) {
    it(`takes the next worker in rendezvous order when the owner fails (${failure}), and suspects the owner`, async () => {
      const { cacheGroup, order } = newGroup(3, ref(1));
      const owner = failure === 'UNREACHABLE' ? await deadWorker(order[0]!, { cacheGroup }) : await failingWorker(order[0]!, failure, { cacheGroup });
      const second = await cacheWorker(order[1]!, { cacheGroup });
      const third = await cacheWorker(order[2]!, { cacheGroup });
      const { source: s, membership, metrics } = await source(cacheGroup);
      await readBlock(s, ref(1));
      if (failure !== 'UNREACHABLE') expect(await owner.requests()).toBe(1);
      expect(await second.served('remote')).toBe(MiB);
      expect(await third.requests()).toBe(0);
      expect(await readBytes(metrics, 'remote')).toBe(MiB);
      expect(await readBytes(metrics, 'ufs')).toBe(0);
      // Suspected: the next read of the block does not try it again.
      expect(ids(membership.candidates(ref(1).id))).toEqual(order.slice(1));
      await readBlock(s, ref(1));
      if (failure !== 'UNREACHABLE') expect(await owner.requests()).toBe(1);
      expect(await second.served('remote')).toBe(2 * MiB);
    });
  }

  it('takes the next worker in rendezvous order when the owner is busy (THROTTLED), without suspecting it', async () => {
    const { cacheGroup, order } = newGroup(3, ref(1));
    const owner = await failingWorker(order[0]!, 'THROTTLED', { cacheGroup });
    const second = await cacheWorker(order[1]!, { cacheGroup });
    await cacheWorker(order[2]!, { cacheGroup });
    const { source: s, membership, metrics } = await source(cacheGroup);
    await readBlock(s, ref(1));
    expect(await owner.requests()).toBe(1);
    expect(await second.served('remote')).toBe(MiB);
    expect(await readBytes(metrics, 'remote')).toBe(MiB);
    // Busy is not broken: the owner is asked first again next time.
    expect(ids(membership.candidates(ref(1).id))).toEqual(order);
    await readBlock(s, ref(1));
    expect(await owner.requests()).toBe(2);
  });

  it('reads from the UFS when every worker fails, having asked each once in rendezvous order', async () => {
    const { cacheGroup, order } = newGroup(3, ref(2));
    const workers = [];
    for (const id of order) workers.push(await failingWorker(id, 'IO', { cacheGroup }));
    const { source: s, membership, metrics } = await source(cacheGroup);
    await readBlock(s, ref(2));
    for (const w of workers) expect(await w.requests()).toBe(1);
    expect(await readBytes(metrics, 'ufs')).toBe(MiB);
    expect(await readBytes(metrics, 'remote')).toBe(0);
    expect(await registryValue(metrics.registry, 'cachefs_ufs_read_bytes_total')).toBe(MiB);
    expect(membership.candidates(ref(2).id)).toEqual([]);
  });

  it('reads from the UFS when the cache group has no workers', async () => {
    const { cacheGroup } = newGroup(0, ref(0));
    const { source: s, metrics } = await source(cacheGroup);
    await readBlock(s, ref(4));
    expect(await readBytes(metrics, 'ufs')).toBe(ref(4).length);
  });

  for (const code of ['STALE', 'NOT_FOUND', 'INVALID_ARGUMENT'] as const) {
    it(`fails the read with ${code} from the owner: no other worker, no UFS, nobody suspected`, async () => {
      const { cacheGroup, order } = newGroup(2, ref(3));
      const owner = await failingWorker(order[0]!, code, { cacheGroup });
      const next = await cacheWorker(order[1]!, { cacheGroup });
      const { source: s, membership, metrics } = await source(cacheGroup);
      const err = await s.read(whole(ref(3))).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(CachefsError);
      expect((err as CachefsError).code).toBe(code);
      expect(await owner.requests()).toBe(1);
      expect(await next.requests()).toBe(0);
      expect(await registryValue(metrics.registry, 'cachefs_ufs_requests_total')).toBe(0);
      expect(ids(membership.candidates(ref(3).id))).toEqual(order);
    });
  }

  it('prefetches a block from its owner into memory: the read that follows asks nobody', async () => {
    const { cacheGroup, order } = newGroup(2, ref(0));
    const owner = await cacheWorker(order[0]!, { cacheGroup });
    const other = await cacheWorker(order[1]!, { cacheGroup });
    const { source: s, metrics } = await source(cacheGroup);
    s.prefetch(ref(0), true);
    await waitFor(async () => (await owner.served('remote')) === MiB, { timeoutMs: 5000, what: 'the prefetch' });
    const req = whole(ref(0), { pattern: 'sequential' });
    expect(s.readNow(req)).toBe(MiB);
    expect(req.dest.equals(bytesOf(ref(0)))).toBe(true);
    expect(await owner.requests()).toBe(1);
    expect(await other.requests()).toBe(0);
    expect(await readBytes(metrics, 'remote')).toBe(MiB);
  });

  it('prefetches from the UFS when the owner fails, and suspects the owner', async () => {
    const { cacheGroup, order } = newGroup(2, ref(1));
    const owner = await failingWorker(order[0]!, 'IO', { cacheGroup });
    await cacheWorker(order[1]!, { cacheGroup });
    const { source: s, membership, metrics } = await source(cacheGroup);
    s.prefetch(ref(1), true);
    await waitFor(async () => (await registryValue(metrics.registry, 'cachefs_ufs_read_bytes_total')) === MiB, { timeoutMs: 5000, what: 'the prefetch' });
    expect(await owner.requests()).toBe(1);
    expect(ids(membership.candidates(ref(1).id))).toEqual([order[1]]);
    const req = whole(ref(1), { pattern: 'sequential' });
    expect(s.readNow(req)).toBe(MiB);
    expect(req.dest.equals(bytesOf(ref(1)))).toBe(true);
    expect(await readBytes(metrics, 'ufs')).toBe(MiB);
  });
});

describe('ClusterSource: co-location', () => {
  it('uuid mode: short-circuit with a worker whose socket file is there, the network with one whose socket is not', async () => {
    const { cacheGroup, nearId, farId, farBlock } = twoOwnerGroup();
    const near = await cacheWorker(nearId, { cacheGroup, socket: true });
    // Its socket dir is not shared with us: the path it registers does not exist here.
    const far = await cacheWorker(farId, { cacheGroup, socket: true, domainSocketPath: path.join(work, 'elsewhere', 'worker.sock') });
    const { source: s, metrics } = await source(cacheGroup, 'uuid');
    await readBlock(s, ref(0), { handle: handle(1) });
    expect(await readBytes(metrics, 'short_circuit')).toBe(MiB);
    expect(await near.served('short_circuit')).toBe(MiB);
    expect(await near.served('remote')).toBe(0);
    await readBlock(s, farBlock, { handle: handle(1) });
    expect(await far.served('remote')).toBe(farBlock.length);
    expect(await far.served('short_circuit')).toBe(0);
    expect(await readBytes(metrics, 'remote')).toBe(farBlock.length);
  });

  it('hostname mode: short-circuit with a worker on our hostname, the network with one elsewhere, socket or not', async () => {
    const { cacheGroup, nearId, farId, farBlock } = twoOwnerGroup();
    const near = await cacheWorker(nearId, { cacheGroup, socket: true });
    // Its socket file is right here, but it says it runs on another node.
    const far = await cacheWorker(farId, { cacheGroup, socket: true, hostname: 'node-b' });
    const { source: s, metrics } = await source(cacheGroup, 'hostname');
    await readBlock(s, ref(0), { handle: handle(1) });
    expect(await near.served('short_circuit')).toBe(MiB);
    await readBlock(s, farBlock, { handle: handle(1) });
    expect(await far.served('remote')).toBe(farBlock.length);
    expect(await far.served('short_circuit')).toBe(0);
    expect(await readBytes(metrics, 'short_circuit')).toBe(MiB);
    expect(await readBytes(metrics, 'remote')).toBe(farBlock.length);
  });

  it('off: the network, even with a worker whose socket is here and whose hostname is ours', async () => {
    const { cacheGroup, order } = newGroup(1, ref(0));
    const w = await cacheWorker(order[0]!, { cacheGroup, socket: true });
    const { source: s, metrics } = await source(cacheGroup, 'off');
    await readBlock(s, ref(0), { handle: handle(1) });
    expect(await w.served('remote')).toBe(MiB);
    expect(await w.served('short_circuit')).toBe(0);
    expect(await readBytes(metrics, 'short_circuit')).toBe(0);
  });

  it('releases the pins a handle took on a co-located worker when the handle is released, and all of them on close', async () => {
    const { cacheGroup, order } = newGroup(1, ref(0));
    const w = await cacheWorker(order[0]!, { cacheGroup, socket: true });
    const { source: s } = await source(cacheGroup, 'uuid');
    await readBlock(s, ref(0), { handle: handle(1) });
    await readBlock(s, ref(1), { handle: handle(2) });
    expect(w.pinned()).toBe(2);
    s.release(handle(1));
    await waitFor(() => w.pinned() === 1, { timeoutMs: 3000, what: 'handle 1 to let go of its pin' });
    await s.close();
    await waitFor(() => w.pinned() === 0, { timeoutMs: 3000, what: 'the pins of a closed source to go' });
  });
});
