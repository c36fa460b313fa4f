/**
 * Reading from a worker on the same node. Short-circuit: the worker pins the block
 * and answers its file path, and we read the file ourselves with positioned reads
 * through a kept fd — no copy through the worker. The pin is held per open file
 * handle (session) and released when the handle is released. If the block files
 * are not visible in our mount namespace, the bytes come over the socket instead
 * (domain socket stream), decided once per worker.
 *
 * A handle pins at most `pinsPerHandle` blocks (the read policy's), its most recently opened
 * ones: a long sequential read of a file larger than the tier must not pin the
 * whole tier. An unpinned block stays readable through its open fd (an evicted
 * file's bytes are still the block's bytes), and is pinned again if reopened.
 */
import type { BlockRef } from '../block/block.js';
import type { HeldBlock } from '../cache/memory-blocks.js';
import { waitFor } from '../lib/shared-work.js';
import type { ClusterSecret } from '../net/auth.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { BlockChecksumError, BlockFileChangedError, BlockFileSizeError, type BlockFile, type BlockFiles, type HeldBlockFile } from '../cache/block-files.js';
import type { BlockRead } from './block-source.js';
import { WorkerSocket } from './worker-socket.js';

export class ColocatedWorker {
  private readonly socket: WorkerSocket;
  /** Blocks pinned on behalf of each session (file handle). */
  private readonly pinned = new Map<number, Map<string, BlockFile>>();
  /** Pins asked of the worker and not yet answered, per session. */
  private readonly pinning = new Map<number, Map<string, Promise<BlockFile | undefined>>>();
  private streamOnly = false;
  private readonly scBytes;
  private readonly dsBytes;
  private readonly corrupt;
  /** Block files found damaged, so that each is counted and logged once. */
  private readonly damaged = new Set<string>();

  constructor(
    readonly workerId: string,
    socketPath: string,
    private readonly files: BlockFiles,
    private readonly pinsPerHandle: number,
    private readonly log: Logger,
    metrics: Metrics,
    /** Answers the worker's challenge on its socket; none for a worker that runs --insecure. */
    secret?: ClusterSecret,
  ) {
    this.socket = new WorkerSocket(socketPath, secret);
    this.scBytes = metrics.clientReadBytes.labels('short_circuit');
    this.dsBytes = metrics.clientReadBytes.labels('domain_socket');
    this.corrupt = metrics.cacheCorrupt;
  }

  async read(req: BlockRead): Promise<number> {
    const { ref } = req;
    // A pin being taken serves the handle's later reads too: an interrupted read stops waiting, the pin goes on.
    const file = this.streamOnly ? undefined : await waitFor(this.openFor(req.handle?.id, ref), req.signal);
    if (file) {
      try {
        const n = await this.files.read(file, req.dest, req.destOffset, req.length, req.offset);
        this.scBytes.inc(n);
        return n;
      } catch (err) {
        this.streamFrom(err, ref, file.path);
      }
    }
    const data = await this.socket.read(ref, req.offset, req.length, req.signal);
    data.copy(req.dest, req.destOffset);
    this.dsBytes.inc(data.length);
    return data.length;
  }

  /** The bytes come over the worker's socket, not from its block files (they are not visible here). */
  get streamsOverSocket(): boolean {
    return this.streamOnly;
  }

  /** The whole block over the worker's socket, for a streaming reader: one request instead of one per FUSE read. */
  async readBlock(ref: BlockRef, signal?: AbortSignal): Promise<HeldBlock> {
    return { data: await this.socket.read(ref, 0, ref.length, signal), from: 'domain_socket' };
  }

  /**
   * Ahead of a stream's reads of the block: pins it for the session (the worker reads
   * it through first if it must), so that the reads find its file path at once
   * instead of each block's first read waiting on the worker.
   */
  async pinAhead(ref: BlockRef, session: number | undefined): Promise<void> {
    if (this.streamOnly) return;
    await this.openFor(session, ref);
  }

  /**
   * The block's file, checked and open until `release()`, pinned for the session (file
   * handle) until that is released: to hand to the kernel (FUSE passthrough). The worker
   * reads the block through first if it must. Undefined when it has no file for it, or
   * its files are not visible here.
   */
  async localFile(ref: BlockRef, session: number): Promise<HeldBlockFile | undefined> {
    if (this.streamOnly) return undefined;
    const file = await this.openFor(session, ref);
    if (!file) return undefined;
    try {
      return await this.files.hold(file);
    } catch (err) {
      this.streamFrom(err, ref, file.path);
      return undefined;
    }
  }

  /** Makes sure the block is cached on the worker (pinned only for as long as that takes). */
  async warm(ref: BlockRef): Promise<void> {
    const { path } = await this.socket.open(ref);
    if (path) await this.socket.close(ref.id);
  }

  /**
   * After a failed block file read: a damaged file is read over the socket this once (the
   * worker checks its own copy, drops it and fetches the block again); files that are not
   * visible here are streamed from now on; anything else is the read's failure.
   */
  private streamFrom(err: unknown, ref: BlockRef, path: string): void {
    this.files.invalidate(ref.id);
    if (err instanceof BlockChecksumError || err instanceof BlockFileSizeError || err instanceof BlockFileChangedError) {
      this.unpinEverywhere(ref.id);
      // Reads of the block under way together find the same file damaged: counted once.
      if (this.damaged.has(path)) return;
      if (this.damaged.size >= 1024) this.damaged.clear();
      this.damaged.add(path);
      this.corrupt.inc();
      this.log.warn({ worker: this.workerId, path, block: ref.id, err: err.message }, 'damaged block file of the co-located worker: reading it over its socket');
      return;
    }
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'EACCES' && code !== 'EPERM') throw err;
    this.streamOnly = true;
    this.log.info({ worker: this.workerId, path }, 'block files of the co-located worker are not visible here: streaming over its socket');
  }

  /** Lets go of every handle's pin of a block whose file is gone or damaged: the next read asks the worker afresh. */
  private unpinEverywhere(id: string): void {
    for (const blocks of this.pinned.values()) {
      if (blocks.delete(id)) this.socket.close(id).catch(() => undefined);
    }
  }

  /** Unpins everything the session (file handle) opened; pins still being taken for it are let go when they arrive. */
  release(session: number): void {
    this.pinning.delete(session);
    const blocks = this.pinned.get(session);
    if (!blocks) return;
    this.pinned.delete(session);
    for (const id of blocks.keys()) this.socket.close(id).catch(() => undefined);
  }

  /** The block file's path, pinned for the session; undefined when the worker could not store the block. Asks the worker once however many reads want it. */
  private openFor(session: number | undefined, ref: BlockRef): Promise<BlockFile | undefined> {
    const key = session ?? 0;
    const known = this.pinned.get(key)?.get(ref.id);
    if (known) return Promise.resolve(known);
    let inFlight = this.pinning.get(key);
    if (!inFlight) this.pinning.set(key, (inFlight = new Map()));
    let opening = inFlight.get(ref.id);
    if (!opening) {
      const pins = inFlight;
      opening = this.pin(key, ref, pins).finally(() => {
        pins.delete(ref.id);
        if (pins.size === 0 && this.pinning.get(key) === pins) this.pinning.delete(key);
      });
      pins.set(ref.id, opening);
    }
    return opening;
  }

  private async pin(key: number, ref: BlockRef, inFlight: Map<string, Promise<BlockFile | undefined>>): Promise<BlockFile | undefined> {
    const { path, sum } = await this.socket.open(ref);
    if (!path || !sum) return undefined;
    const file: BlockFile = { id: ref.id, path, length: ref.length, sum };
    if (this.pinning.get(key) !== inFlight) {
      // The session was released while the worker answered: nothing will release this pin.
      this.socket.close(ref.id).catch(() => undefined);
      return file;
    }
    let blocks = this.pinned.get(key);
    if (!blocks) this.pinned.set(key, (blocks = new Map()));
    blocks.set(ref.id, file);
    if (blocks.size > this.pinsPerHandle) {
      const [oldest] = blocks.keys();
      blocks.delete(oldest!);
      this.socket.close(oldest!).catch(() => undefined);
    }
    return file;
  }

  close(): void {
    this.pinned.clear();
    this.pinning.clear();
    this.socket.destroy();
  }
}
