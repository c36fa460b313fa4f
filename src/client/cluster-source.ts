/**
 * The block source of a mount in a cache group. For each block it tries the
 * workers in rendezvous order — the embedded worker in-process when this mount
 * shares its cache, others over the network — and, when none answers, reads the
 * UFS directly: the application sees a slower read, never an error, while the UFS
 * answers. Remote and UFS bytes of sequential streams are fetched as whole
 * blocks into a bounded memory buffer; random reads fetch just their range (the read
 * policy's `wholeBlock`, cache/read-policy.ts).
 */
import { existsSync } from 'node:fs';
import { blockRef, type BlockRef, type ObjectRef } from '../block/block.js';
import { BufferPool } from '../block/buffer-pool.js';
import { BlockFiles, type HeldBlockFile } from '../cache/block-files.js';
import { MemoryBlocks, type HeldBlock } from '../cache/memory-blocks.js';
import { isBusy, isFinal, wholeBlock, type ReadPolicy } from '../cache/read-policy.js';
import type { UfsReader } from '../cache/ufs-reader.js';
import { asCachefsError, type CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { WorkerRecord } from '../master/api.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ClusterSecret } from '../net/auth.js';
import type { PoolOptions } from '../net/body-connection.js';
import { BackgroundQueue } from './background.js';
import type { BlockRead, BlockSource, FillOutcome, LocalFile, ReadHandle } from './block-source.js';
import { ColocatedWorker } from './colocated-worker.js';
import type { Membership } from './membership.js';
import { RemoteWorker } from './remote-worker.js';

/** How a client decides it runs on a worker's node (DESIGN.md, "Locality"). */
export type ShortCircuitMode = 'uuid' | 'hostname' | 'off';

export interface ClusterSourceConfig {
  membership: Membership;
  shortCircuit: ShortCircuitMode;
  /** This node's hostname, for hostname mode. */
  hostname: string;
  /** The embedded worker of a sharing mount: its id and a source that reads its store in-process. */
  local?: { workerId: string; source: BlockSource };
  ufs: UfsReader;
  /** The mount's block size: whole blocks fetched from workers reuse buffers of this size. */
  blockSize: number;
  policy: ReadPolicy;
  /** What requests to remote workers carry (the cluster secret) and verify them with (TLS). */
  workerLink?: Pick<PoolOptions, 'headers' | 'tls'>;
  /** Answers co-located workers' socket challenges; none in a cluster that runs --insecure. */
  secret?: ClusterSecret;
  metrics: Metrics;
  log: Logger;
}

export class ClusterSource implements BlockSource {
  private readonly remotes = new Map<string, RemoteWorker>();
  private readonly colocated = new Map<string, ColocatedWorker | null>();
  private readonly files = new BlockFiles();
  private readonly memory: MemoryBlocks;
  private readonly buffers: BufferPool;
  private readonly background: BackgroundQueue;
  private readonly bytes;

  constructor(private readonly config: ClusterSourceConfig) {
    const { clusterMemoryBytes, clusterPrefetches } = config.policy;
    // The pool's buffers: the blocks the memory budget holds, and the prefetches in flight.
    this.buffers = new BufferPool(config.blockSize, Math.max(1, Math.floor(clusterMemoryBytes / config.blockSize)) + clusterPrefetches);
    this.memory = new MemoryBlocks(clusterMemoryBytes, this.buffers);
    this.background = new BackgroundQueue(clusterPrefetches);
    const c = config.metrics.clientReadBytes;
    this.bytes = { remote: c.labels({ path: 'remote' }), ufs: c.labels({ path: 'ufs' }), domain_socket: c.labels({ path: 'domain_socket' }) };
    // Co-location is decided (and explained in the log) at start and whenever the worker set changes, not at a first read.
    const decide = (workers: readonly WorkerRecord[]): void => {
      for (const w of workers) if (!this.isLocal(w)) this.near(w);
    };
    config.membership.onChange(decide);
    decide(config.membership.ring.all);
  }

  readNow(req: BlockRead): number | undefined {
    return this.viewNow(req)?.copy(req.dest, req.destOffset);
  }

  viewNow(req: BlockRead): Buffer | undefined {
    const inMemory = this.memory.get(req.ref.id);
    return inMemory && this.view(inMemory, req);
  }

  async read(req: BlockRead): Promise<number> {
    const { ref, signal } = req;
    const now = this.readNow(req);
    if (now !== undefined) return now;
    for (const worker of this.config.membership.candidates(ref.id)) {
      try {
        if (this.isLocal(worker)) return await this.config.local!.source.read(req);
        const near = this.near(worker);
        if (near) {
          // Block files are read in place, as the kernel asks (bench/short-circuit.sh: ~15% faster
          // than taking whole blocks into memory first). Over the socket, a stream entering a block
          // takes all of it in one request, and waits for a fetch of the block already under way.
          if (near.streamsOverSocket && req.streaming && (req.offset === 0 || this.memory.isFetching(ref.id))) return this.copy(await this.memory.load(ref.id, (s) => near.readBlock(ref, s), signal), req);
          return await near.read(req);
        }
        const remote = this.remote(worker);
        if (wholeBlock(req)) return this.copy(await this.memory.load(ref.id, async (s) => ({ data: await remote.read(ref, 0, ref.length, s), from: 'remote' }), signal), req);
        const data = await remote.read(ref, req.offset, req.length, signal);
        data.copy(req.dest, req.destOffset);
        this.buffers.giveLater(data);
        this.bytes.remote.inc(data.length);
        return data.length;
      } catch (err) {
        this.failed(worker, asCachefsError(err));
      }
    }
    return this.readUfs(req);
  }

  prefetch(ref: BlockRef, streaming: boolean, handle?: ReadHandle): void {
    if (this.memory.get(ref.id) || this.memory.isFetching(ref.id)) return;
    const owner = this.config.membership.candidates(ref.id)[0];
    if (owner && this.isLocal(owner)) return this.config.local!.source.prefetch(ref, streaming, handle);
    const signal = handle?.signal;
    const near = owner && this.near(owner);
    if (near) {
      // A stream has the block pinned for its handle ahead of its reads (over the socket: in
      // memory); otherwise the block is only made sure to be cached on the worker.
      let work: () => Promise<unknown>;
      if (!streaming) work = () => near.warm(ref);
      else if (near.streamsOverSocket) work = () => this.memory.load(ref.id, (s) => near.readBlock(ref, s), signal);
      else work = () => near.pinAhead(ref, handle?.id);
      this.background.add(ref.id, () => work().catch((err: unknown) => this.failed(owner, asCachefsError(err))));
      return;
    }
    this.background.add(ref.id, () =>
      this.memory.load(
        ref.id,
        async (s) => {
          if (owner) {
            try {
              return { data: await this.remote(owner).read(ref, 0, ref.length, s), from: 'remote' };
            } catch (err) {
              this.failed(owner, asCachefsError(err));
            }
          }
          return { data: await this.fetchUfs(ref, s), from: 'ufs' };
        },
        signal,
      ),
    );
  }

  /**
   * A background fill goes where a read of the block would: to its owner, which fills its
   * tier (in-process for the mount's own worker, `warm` on a co-located one, a whole-block
   * read of a remote one, whose bytes are let go). With no worker there is no tier to fill.
   */
  async fill(ref: BlockRef, signal: AbortSignal): Promise<FillOutcome> {
    if (this.memory.get(ref.id) || this.memory.isFetching(ref.id)) return 'cached';
    const owner = this.config.membership.candidates(ref.id)[0];
    if (!owner) return 'skipped';
    if (this.isLocal(owner)) return this.config.local!.source.fill?.(ref, signal) ?? 'skipped';
    try {
      const near = this.near(owner);
      if (near) await near.warm(ref);
      else this.buffers.giveLater(await this.remote(owner).read(ref, 0, ref.length, signal));
      return 'fetched';
    } catch (err) {
      const e = asCachefsError(err);
      if (!isFinal(e) && !isBusy(e) && !signal.aborted) this.failed(owner, e);
      throw e;
    }
  }

  private async readUfs(req: BlockRead): Promise<number> {
    const { ref, signal } = req;
    if (wholeBlock(req)) return this.copy(await this.memory.load(ref.id, async (s) => ({ data: await this.fetchUfs(ref, s), from: 'ufs' }), signal), req);
    const n = await this.config.ufs.readInto(ref, req.offset, req.dest.subarray(req.destOffset, req.destOffset + req.length), { signal });
    this.bytes.ufs.inc(n);
    return n;
  }

  /** The whole block from the UFS, in a pooled buffer. */
  private async fetchUfs(ref: BlockRef, signal?: AbortSignal): Promise<Buffer> {
    const dest = this.buffers.take(ref.length);
    try {
      const n = await this.config.ufs.readInto(ref, 0, dest, { signal });
      return n === ref.length ? dest : dest.subarray(0, n);
    } catch (err) {
      this.buffers.giveLater(dest);
      throw err;
    }
  }

  private copy(block: HeldBlock, req: BlockRead): number {
    return this.view(block, req).copy(req.dest, req.destOffset);
  }

  /** The request's bytes of a block in memory, counted as read (a block read to the end may go back to its pool after this turn). */
  private view(block: HeldBlock, req: BlockRead): Buffer {
    const view = block.data.subarray(req.offset, req.offset + req.length);
    this.bytes[block.from].inc(view.length);
    if (wholeBlock(req)) this.memory.consumed(req.ref.id, view.length);
    return view;
  }

  /** The block's file when its owner is this mount's own worker or a co-located one whose files are visible here (pinned for `handle`). */
  async localFile(ref: BlockRef, handle: ReadHandle): Promise<HeldBlockFile | undefined> {
    const owner = this.config.membership.candidates(ref.id)[0];
    if (!owner) return undefined;
    if (this.isLocal(owner)) return this.config.local!.source.localFile?.(ref, handle);
    try {
      return await this.near(owner)?.localFile(ref, handle.id);
    } catch (err) {
      this.failed(owner, asCachefsError(err));
      return undefined;
    }
  }

  /**
   * The object's whole-object file, when this mount's own worker (sharing) has one, or else the
   * owner of its first block when that is a co-located worker whose files are visible here
   * (pinned for `handle`): a worker has one only when it holds every block of the object.
   */
  async wholeFile(object: ObjectRef, handle: ReadHandle): Promise<LocalFile | undefined> {
    const own = await this.config.local?.source.wholeFile?.(object, handle);
    if (own) return own;
    const owner = this.config.membership.candidates(blockRef(object, this.config.blockSize, 0).id)[0];
    if (!owner || this.isLocal(owner)) return undefined;
    try {
      return await this.near(owner)?.wholeFile(object, this.config.blockSize, handle.id);
    } catch (err) {
      this.failed(owner, asCachefsError(err));
      return undefined;
    }
  }

  /** Removals from this mount's own worker's store; a co-located worker's files carry no `storeId`. */
  onLocalFileRemoved(listener: (storeId: string) => void): void {
    this.config.local?.source.onLocalFileRemoved?.(listener);
  }

  release(handle: ReadHandle): void {
    for (const near of this.colocated.values()) near?.release(handle.id);
    this.config.local?.source.release?.(handle);
  }

  /** The worker as a co-located one (short-circuit), if it is one; decided once per worker process. */
  private near(worker: WorkerRecord): ColocatedWorker | undefined {
    const key = `${worker.id}/${worker.instance ?? worker.startedAt}`;
    let near = this.colocated.get(key);
    if (near === undefined) {
      const why = colocation(worker, this.config.shortCircuit, this.config.hostname);
      near = why === undefined ? new ColocatedWorker(worker.id, worker.domainSocketPath, this.files, this.config.policy.pinsPerHandle, this.config.log, this.config.metrics, this.config.secret) : null;
      this.colocated.set(key, near);
      const fields = { worker: worker.id, hostname: worker.hostname, socket: worker.domainSocketPath, mode: this.config.shortCircuit };
      if (near) this.config.log.info(fields, 'worker is co-located: reading its blocks by short-circuit');
      // Explained for the workers on this host (ours by name, or by a socket we can see); the others are plainly remote.
      else if (why !== 'off' && why !== 'no socket' && (worker.hostname === this.config.hostname || existsSync(worker.domainSocketPath))) {
        this.config.log.info({ ...fields, why }, 'worker on this host is not co-located: reading its blocks over the network');
      }
    }
    return near ?? undefined;
  }

  private isLocal(worker: WorkerRecord): boolean {
    return this.config.local !== undefined && worker.id === this.config.local.workerId;
  }

  private remote(worker: WorkerRecord): RemoteWorker {
    let r = this.remotes.get(worker.id);
    if (!r || r.address !== worker.address) {
      void r?.close();
      r = new RemoteWorker(worker.address, this.buffers, this.config.workerLink);
      this.remotes.set(worker.id, r);
    }
    return r;
  }

  private failed(worker: WorkerRecord, err: CachefsError): void {
    if (isFinal(err)) throw err;
    if (isBusy(err)) {
      this.config.log.debug({ worker: worker.id, address: worker.address }, 'worker busy; trying the next');
      return;
    }
    this.config.log.warn({ worker: worker.id, address: worker.address, code: err.code, err: err.message }, 'worker read failed; trying the next');
    this.config.membership.suspect(worker.id);
  }

  async close(): Promise<void> {
    this.memory.clear();
    for (const r of this.remotes.values()) await r.close();
    this.remotes.clear();
    for (const near of this.colocated.values()) near?.close();
    this.colocated.clear();
    this.files.closeAll();
    await this.config.local?.source.close();
  }
}

/**
 * Why `worker` is not co-located with us (undefined: it is). uuid mode: co-located exactly
 * when the worker's socket file (a fresh uuid per worker start) exists in our filesystem,
 * i.e. its socket dir is shared with us. hostname mode: when the worker advertises our
 * hostname and its socket is visible here too; one on our host whose socket we cannot see
 * is read over the network, not skipped for the UFS.
 */
function colocation(worker: WorkerRecord, mode: ShortCircuitMode, hostname: string): string | undefined {
  if (mode === 'off') return 'off';
  if (!worker.domainSocketPath) return 'no socket';
  if (mode === 'hostname' && worker.hostname !== hostname) return `host names differ (${worker.hostname} is not ${hostname})`;
  return existsSync(worker.domainSocketPath) ? undefined : `socket path ${worker.domainSocketPath} not visible here`;
}
