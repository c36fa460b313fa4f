/**
 * Reading from a worker on the same node. Short-circuit: the worker pins the block and
 * passes us its file's open descriptor, checked (HDFS-347: pass the capability, not the
 * path), and we read it ourselves with positioned reads — no copy through the worker, and
 * no need to see or be allowed into the worker's tier dirs. The pin and the descriptor are
 * held per open file handle (session) and let go when the handle is released, when the
 * handle moves past the block, or when the connection drops (the worker unpins then).
 *
 * Fallbacks, in order: where the worker passes no descriptors (koffi cannot load, or it
 * runs with --pass-descriptors off) it answers the file's path, which we open through a
 * kept fd; if the block files are not visible in our mount namespace, the bytes come over
 * the socket instead (domain socket stream), decided once per worker.
 *
 * A handle pins at most `pinsPerHandle` blocks (the read policy's): a long sequential read
 * of a file larger than the tier must not pin the whole tier. The handle's reads are at the
 * lowest block with a read under way (the kernel's readahead has several in flight, 8 of
 * 1 MiB blocks), else at the block read last. A stream pins ahead at most the budget less
 * two blocks beyond that (room for it and the block before, whose last reads the kernel may
 * still send): blocks further ahead are pinned as the reads come near. Over the budget, the
 * pin let go is the lowest behind the reads, else the oldest no read is under way on. The
 * default readahead window (64 MiB of 4 MiB blocks) is the budget: pinning all of it let go
 * of the block being read, which was then pinned, and its descriptor passed, a second time
 * (124 descriptors for a 64-block file), each of its reads waiting 2-5 ms on the pin. An
 * unpinned block stays readable through its open fd (an evicted file's bytes are still the
 * block's bytes), and is pinned again if reopened.
 */
import { closeSync } from 'node:fs';
import { blockRef, type BlockRef, type ObjectRef } from '../block/block.js';
import { wholeRef } from '../cache/whole-objects.js';
import type { HeldBlock } from '../cache/memory-blocks.js';
import { waitFor } from '../lib/shared-work.js';
import type { ClusterSecret } from '../net/auth.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { BlockChecksumError, BlockFileChangedError, BlockFileDroppedError, BlockFileSizeError, type BlockFile, type BlockFiles, type HeldBlockFile } from '../cache/block-files.js';
import type { BlockRead } from './block-source.js';
import { WorkerSocket } from './worker-socket.js';

/** Blocks a session's stream may wait to pin (a readahead window of up to 256 blocks). */
const MAX_DEFERRED = 256;

/** A block pinned for a session, and its index in its object. */
interface PinnedBlock {
  file: BlockFile;
  index: number;
}

/** Where a session's reads are, and the blocks its stream asked to pin that are too far ahead yet. */
interface ReadPosition {
  /** The index of the block read last. */
  last: number;
  /** Reads under way, by block index. */
  inFlight: Map<number, number>;
  deferred: BlockRef[];
}

export class ColocatedWorker {
  private readonly socket: WorkerSocket;
  /** Blocks pinned on behalf of each session (file handle), in the order they were opened. */
  private readonly pinned = new Map<number, Map<string, PinnedBlock>>();
  private readonly positions = new Map<number, ReadPosition>();
  /** Pins asked of the worker and not yet answered, per session. */
  private readonly pinning = new Map<number, Map<string, Promise<BlockFile | undefined>>>();
  private streamOnly = false;
  /** Whether reading by path because the worker passes no descriptors was logged. */
  private toldNoDescriptors = false;
  /** Sessions holding each block whose descriptor was passed to us: it is closed when the last lets go. */
  private readonly holders = new Map<string, number>();
  private readonly fdBytes;
  private readonly pathBytes;
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
    // The worker unpinned everything with the connection: the descriptors it passed go too.
    this.socket.onLost(() => this.forgetPins());
    this.fdBytes = metrics.clientReadBytes.labels({ path: 'short_circuit', via: 'descriptor' });
    this.pathBytes = metrics.clientReadBytes.labels({ path: 'short_circuit', via: 'path' });
    this.dsBytes = metrics.clientReadBytes.labels({ path: 'domain_socket' });
    this.corrupt = metrics.cacheCorrupt;
    metrics.clientPassedDescriptors.sampledBy(() => files.adoptedCount);
  }

  async read(req: BlockRead): Promise<number> {
    const session = req.handle?.id ?? 0;
    const position = this.readStarts(session, req.ref.index);
    try {
      return await this.readPinned(req);
    } finally {
      this.readEnds(session, position, req.ref.index);
    }
  }

  private async readPinned(req: BlockRead): Promise<number> {
    const { ref } = req;
    // A pin being taken serves the handle's later reads too: an interrupted read stops waiting, the pin goes on.
    const file = this.streamOnly ? undefined : await waitFor(this.openFor(req.handle?.id, ref), req.signal);
    if (file) {
      try {
        const n = await this.files.read(file, req.dest, req.destOffset, req.length, req.offset);
        (file.path === '' ? this.fdBytes : this.pathBytes).inc(n);
        return n;
      } catch (err) {
        // Its passed descriptor was let go while this read waited: this read takes the bytes over the socket.
        if (!(err instanceof BlockFileDroppedError)) this.streamFrom(err, ref, file.path);
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
    const position = this.positions.get(session ?? 0);
    if (position && ref.index > this.reach(this.low(position))) {
      // A window offered again after the stream broke off and resumed is deferred once.
      if (position.deferred.length < MAX_DEFERRED && !position.deferred.some((r) => r.id === ref.id)) position.deferred.push(ref);
      return;
    }
    await this.openFor(session, ref);
  }

  /**
   * The lowest block a session's reads are at: the lowest with a read under way (the
   * kernel's readahead has several blocks' reads in flight at once when blocks are small),
   * else the block read last.
   */
  private low(position: ReadPosition): number {
    if (position.inFlight.size === 0) return position.last;
    let low = Infinity;
    for (const index of position.inFlight.keys()) if (index < low) low = index;
    return low;
  }

  /** The furthest block a stream whose reads are at block `low` may have pinned. */
  private reach(low: number): number {
    return low + this.pinsPerHandle - 2;
  }

  private readStarts(session: number, index: number): ReadPosition {
    let position = this.positions.get(session);
    if (!position) this.positions.set(session, (position = { last: index, inFlight: new Map(), deferred: [] }));
    position.last = index;
    position.inFlight.set(index, (position.inFlight.get(index) ?? 0) + 1);
    this.pinDeferred(session, position);
    return position;
  }

  private readEnds(session: number, position: ReadPosition, index: number): void {
    const n = (position.inFlight.get(index) ?? 1) - 1;
    if (n > 0) return void position.inFlight.set(index, n);
    position.inFlight.delete(index);
    // The stream's lowest block may have moved on: blocks deferred may be near enough now.
    if (this.positions.get(session) === position) this.pinDeferred(session, position);
  }

  /** Pins the blocks deferred that are now near enough to the session's reads. */
  private pinDeferred(session: number, position: ReadPosition): void {
    if (position.deferred.length === 0) return;
    const low = this.low(position);
    const reach = this.reach(low);
    const later: BlockRef[] = [];
    for (const ref of position.deferred) {
      // One the reads have passed is pinned by them if they come back.
      if (ref.index > reach) later.push(ref);
      else if (ref.index >= low) this.openFor(session, ref).catch(() => undefined);
    }
    position.deferred = later;
  }

  /**
   * The block's file, checked and open until `release()`, pinned for the session (file
   * handle) until that is released: to hand to the kernel (FUSE passthrough). The worker
   * reads the block through first if it must. Undefined when it has no file for it, or
   * its files are not visible here.
   */
  async localFile(ref: BlockRef, session: number): Promise<HeldBlockFile | undefined> {
    return this.heldFile(ref, session);
  }

  /**
   * The same for an object larger than a block: its whole-object file, when the worker holds
   * one (it assembles it once it holds every block of `blockSize`; never fetched for this).
   */
  async wholeFile(object: ObjectRef, blockSize: number, session: number): Promise<HeldBlockFile | undefined> {
    return this.heldFile(wholeRef(object), session, blockRef(object, blockSize, 0));
  }

  /** `ref`'s file, checked, held open and pinned for the session; `first`: `ref` is a whole-object file, asked for by its block 0. */
  private async heldFile(ref: BlockRef, session: number, first?: BlockRef): Promise<HeldBlockFile | undefined> {
    if (this.streamOnly) return undefined;
    const file = await this.openFor(session, ref, first);
    if (!file) return undefined;
    try {
      return await this.files.hold(file);
    } catch (err) {
      // A passed descriptor let go meanwhile: this open reads the ordinary way.
      if (!(err instanceof BlockFileDroppedError)) this.streamFrom(err, ref, file.path);
      return undefined;
    }
  }

  /** Makes sure the block is cached on the worker (pinned only for as long as that takes). */
  async warm(ref: BlockRef): Promise<void> {
    const { path } = await this.socket.open(ref, { descriptor: false });
    if (path) await this.socket.close(ref.id);
  }

  /**
   * After a failed block file read: a damaged file is read over the socket this once (the
   * worker checks its own copy, drops it and fetches the block again); files that are not
   * visible here are streamed from now on; anything else is the read's failure.
   */
  private streamFrom(err: unknown, ref: BlockRef, path: string): void {
    // A passed descriptor stays with its holders until they let go (it is the only way to the file).
    if (path !== '') this.files.invalidate(ref.id);
    if (err instanceof BlockChecksumError || err instanceof BlockFileSizeError || err instanceof BlockFileChangedError) {
      this.unpinEverywhere(ref.id);
      // Reads of the block under way together find the same file damaged: counted once.
      const name = path || `descriptor of ${ref.id}`;
      if (this.damaged.has(name)) return;
      if (this.damaged.size >= 1024) this.damaged.clear();
      this.damaged.add(name);
      this.corrupt.inc();
      this.log.warn({ worker: this.workerId, path: name, block: ref.id, err: err.message }, 'damaged block file of the co-located worker: reading it over its socket');
      return;
    }
    const code = (err as NodeJS.ErrnoException).code;
    if (path === '' || (code !== 'ENOENT' && code !== 'EACCES' && code !== 'EPERM')) throw err;
    this.streamOnly = true;
    this.log.info({ worker: this.workerId, path }, 'block files of the co-located worker are not visible here: streaming over its socket');
  }

  /** Lets go of every handle's pin of a block whose file is gone or damaged: the next read asks the worker afresh. */
  private unpinEverywhere(id: string): void {
    for (const blocks of this.pinned.values()) {
      const pin = blocks.get(id);
      if (pin && blocks.delete(id)) this.letGo(pin.file);
    }
  }

  /** Unpins everything the session (file handle) opened; pins still being taken for it are let go when they arrive. */
  release(session: number): void {
    this.pinning.delete(session);
    this.positions.delete(session);
    const blocks = this.pinned.get(session);
    if (!blocks) return;
    this.pinned.delete(session);
    for (const pin of blocks.values()) this.letGo(pin.file);
  }

  /** One session's pin of a block let go: at the worker, and its passed descriptor once no session holds it. */
  private letGo(file: BlockFile): void {
    this.socket.close(file.id).catch(() => undefined);
    if (file.path === '') this.unhold(file.id);
  }

  private unhold(id: string): void {
    const n = (this.holders.get(id) ?? 0) - 1;
    if (n > 0) return void this.holders.set(id, n);
    this.holders.delete(id);
    this.files.drop(id);
  }

  /** The connection dropped: the worker holds no pins of ours now, and the descriptors it passed are closed. */
  private forgetPins(): void {
    this.pinned.clear();
    this.pinning.clear();
    for (const position of this.positions.values()) position.deferred = [];
    for (const id of this.holders.keys()) this.files.drop(id);
    this.holders.clear();
  }

  /** The block file's path, pinned for the session; undefined when the worker could not store the block. Asks the worker once however many reads want it. */
  private openFor(session: number | undefined, ref: BlockRef, first?: BlockRef): Promise<BlockFile | undefined> {
    const key = session ?? 0;
    const known = this.pinned.get(key)?.get(ref.id);
    if (known) return Promise.resolve(known.file);
    let inFlight = this.pinning.get(key);
    if (!inFlight) this.pinning.set(key, (inFlight = new Map()));
    let opening = inFlight.get(ref.id);
    if (!opening) {
      const pins = inFlight;
      opening = this.pin(key, ref, pins, first).finally(() => {
        pins.delete(ref.id);
        if (pins.size === 0 && this.pinning.get(key) === pins) this.pinning.delete(key);
      });
      pins.set(ref.id, opening);
    }
    return opening;
  }

  private async pin(key: number, ref: BlockRef, inFlight: Map<string, Promise<BlockFile | undefined>>, first?: BlockRef): Promise<BlockFile | undefined> {
    const { fd, path, sum } = await (first ? this.socket.open(first, { whole: true }) : this.socket.open(ref));
    if (!sum || (fd === undefined && !path)) return undefined;
    if (path && !this.toldNoDescriptors) {
      this.toldNoDescriptors = true;
      this.log.info({ worker: this.workerId, why: this.socket.noDescriptorsBecause }, 'the co-located worker passes no block file descriptors: reading its block files by path');
    }
    if (this.pinning.get(key) !== inFlight) {
      // The session was released while the worker answered: nothing will release this pin.
      this.socket.close(ref.id).catch(() => undefined);
      if (fd === undefined) return { id: ref.id, path: path!, length: ref.length, sum };
      // Nor hold this descriptor: the read that waited for it takes the bytes over the socket.
      closeSync(fd);
      return undefined;
    }
    // A passed descriptor is the file's only way in: its BlockFile has no path.
    const file: BlockFile = { id: ref.id, path: fd === undefined ? path! : '', length: ref.length, sum };
    if (fd !== undefined) {
      this.files.adopt(file, fd);
      this.holders.set(ref.id, (this.holders.get(ref.id) ?? 0) + 1);
    }
    let blocks = this.pinned.get(key);
    if (!blocks) this.pinned.set(key, (blocks = new Map()));
    const before = blocks.get(ref.id);
    blocks.delete(ref.id);
    blocks.set(ref.id, { file, index: ref.index });
    // The session re-opened a block it held (its answer raced another): one pin, one hold of it is enough.
    if (before) this.letGo(before.file);
    if (blocks.size > this.pinsPerHandle) {
      const id = this.victim(blocks, ref.id, this.positions.get(key));
      const pin = blocks.get(id)!;
      blocks.delete(id);
      this.letGo(pin.file);
    }
    return file;
  }

  /**
   * The pin to let go of, other than the one just taken (`taken`): the lowest block behind
   * the session's reads (and the block before their lowest), else the one opened longest
   * ago that no read is under way on, else the one opened longest ago.
   */
  private victim(blocks: Map<string, PinnedBlock>, taken: string, position: ReadPosition | undefined): string {
    let lowest: string | undefined;
    let lowestIndex = position ? this.low(position) - 1 : -1;
    let idle: string | undefined;
    for (const [id, pin] of blocks) {
      if (id === taken) continue;
      if (pin.index < lowestIndex) {
        lowest = id;
        lowestIndex = pin.index;
      }
      if (idle === undefined && !position?.inFlight.has(pin.index)) idle = id;
    }
    return lowest ?? idle ?? blocks.keys().next().value!;
  }

  close(): void {
    this.forgetPins();
    this.socket.destroy();
  }
}
