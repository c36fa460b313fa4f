/**
 * The filesystem as the kernel addresses it, by node ids and handles, without
 * FUSE's wire format: the node table (`nodes.ts`), open files and directories,
 * what the kernel may keep cached across opens, listing snapshots that readdir
 * pages through, and the per-file queue of reads waiting for their bytes. The tree
 * itself (paths, entries, listings) is `Filesystem`'s; the bytes are
 * `BlockClient`'s.
 *
 * Kernel caching decided here: a file's pages are kept across opens while its
 * mtime and size are what they were at the last open (auto_cache; the kernel drops
 * them itself when a getattr shows them changed, AUTO_INVAL_DATA). A directory's
 * listing is kept by the kernel across opens while it is what it was at the last
 * open (its names, modes, sizes and mtimes): a walk of a tree already listed asks
 * for no readdir.
 *
 * With a journal (`kernel-journal.ts`), every node and handle the kernel is given is
 * written down, so that a serving process taking over the connection after a crash
 * starts from them: its node ids stand, and a handle the kernel still holds is opened
 * again, by its path, at its first use.
 *
 * Every call that can wait takes the request's `Cancellation`. Reads pass it down
 * to the block reads; an op that was cancelled while it waited leaves nothing
 * behind (no node counted, no handle made), since its answer no longer reaches the
 * kernel.
 */
import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { BlockClient, Cancellable, OpenObject } from '../client/block-client.js';
import type { Readahead } from '../client/readahead.js';
import type { ObjectRef } from '../block/block.js';
import { CachefsError, isCachefsError } from '../errors.js';
import type { Metrics } from '../metrics/metrics.js';
import { modeOf, type Attr } from './entry.js';
import { DirPages, FIRST_CHILD, type PlacedChild } from './dir-pages.js';
import type { Child, Filesystem, StatFs } from './filesystem.js';
import type { MappedFiles } from '../sys/mapped-file.js';
import { KernelJournal, type HandleKind, type HeldState } from './kernel-journal.js';
import { childPath, dirState, Nodes, type Node, type NodeToLetGo } from './nodes.js';
import { PassthroughOpens, type BackingFiles } from './passthrough.js';
import { READ_HEAD, READ_TAIL, readShape, type DirectoryPrefetch } from './directory-prefetch.js';

/** The largest read served in one call (the kernel is told so at INIT): 256 pages. */
export const MAX_READ = 1024 * 1024;
/**
 * Reads of one open file waiting for their bytes at once, each holding a read buffer; the
 * kernel's readahead may send up to max_background (64) of them. Later ones wait their turn
 * in order, still in flight for the kernel. Per file, so that reads stuck on a slow store
 * never hold up another file's.
 */
const MAX_READS_WAITING = 8;
/**
 * Read buffers kept for replies; a read's buffer is free again once its reply is written.
 * Enough for the reads in flight of two streams (MAX_READS_WAITING each): with fewer, a
 * stream allocated 1 MiB buffers outside V8's heap that stayed until a GC found them,
 * lifting the mount's peak RSS during a 1 GiB read by 3-15 MiB.
 */
const FREE_READ_BUFFERS = 2 * MAX_READS_WAITING;
/** Heap bytes a node takes (measured: 257 for a 24-character path, its ETag shared with the cached entry), rounded up. */
const NODE_BYTES = 300;
/** Listings longer than this are not cached by the kernel (FOPEN_CACHE_DIR): a million entries would sit in its page cache. */
const DEFAULT_MAX_CACHED_LISTING = 100_000;
/** Lookups of a directory's children after which its readdirplus answers wait for its files' stats (`plusEntries`). */
const WALK_LOOKUPS = 64;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

/** A request's cancellation: `aborted` costs nothing to ask; `signal` is made when first asked for. */
export interface Cancellation extends Cancellable {
  readonly aborted: boolean;
}

/** The attributes of a node as the kernel gets them. */
export interface NodeAttr extends Omit<Attr, 'version' | 'file'> {
  ino: number;
}

export interface NodeEntry {
  nodeId: number;
  attr: NodeAttr;
}

export interface OpenedFile {
  fh: number;
  /** The kernel may keep the file's pages from before this open. */
  keepCache: boolean;
  /** The kernel reads this open from a backing file registered with it (passthrough.ts), not through cachefs. */
  backingId?: number;
}

export interface OpenedDir {
  fh: number;
  /** The kernel may keep its cached listing from before this open. */
  keepCache: boolean;
  /** The kernel may cache this listing. */
  cacheDir: boolean;
}

export interface DirEntryOut {
  name: string;
  /** The node id the kernel holds for the entry; undefined when it holds none. */
  ino: number | undefined;
  mode: number;
  /** The offset that continues after this entry. */
  next: number;
}

export interface DirPlusEntryOut extends DirEntryOut {
  /** The entry's node, counted as looked up (the kernel holds it from this answer on); undefined for `.` and `..`, which the kernel does not take. */
  take(): NodeEntry | undefined;
}

/** Where a read's answer goes. Called once, synchronously when the bytes were in memory. */
export interface ReadReply {
  /** The bytes read, good only during this call: write them out before returning. */
  data(bytes: Buffer): void;
  error(err: unknown): void;
}

export interface VfsConfig {
  fs: Filesystem;
  client: BlockClient;
  metrics: Metrics;
  /** The largest listing (entries) the kernel is let cache whole; default 100,000. */
  maxCachedListing?: number;
  /** The budget of metadata (--meta-cache-size), bytes: a quarter of it bounds the nodes readdirplus makes. */
  metaBudgetBytes: number;
  /** Prefetches the small files of directories being read whole (--prefetch-files); none when off. */
  dirPrefetch?: DirectoryPrefetch;
  /** Where the nodes and handles the kernel holds are written down; `held`: what a serving process before this one left there, to start from. */
  journal?: { file: string; held?: HeldState; mapped?: MappedFiles };
}

/** What a released file's work is aborted with: one object for all (an AbortController's default reason, a DOMException, cost ~50 us to make per release here). */
const RELEASED = new CachefsError('INTERRUPTED', 'the file was released');
/** Listeners an open file's signal may have at once (its fetches and pins under way) before Node warns of a leak. */
const HANDLE_SIGNAL_LISTENERS = 1024;

/** An open file: what a read needs, and the reads of it waiting for their bytes or their turn. */
class FileHandle implements OpenObject {
  /** Block reads not yet settled. */
  waiting = 0;
  readonly queue: (() => void)[] = [];
  released = false;
  /** How it was read (READ_HEAD, READ_TAIL) and opened, for the directory prefetch. */
  readSpan = 0;
  passedThrough = false;
  pagesKept = false;
  /** Aborted when the file is released: its prefetches stop, its pins go. Made when first asked for (most small files never need one). */
  private closed?: AbortController;

  constructor(
    readonly id: number,
    readonly path: string,
    readonly object: ObjectRef,
    readonly readahead: Readahead,
  ) {}

  get signal(): AbortSignal {
    if (!this.closed) {
      this.closed = new AbortController();
      // Every fetch and pin of the file's stream listens to it while under way (a readahead
      // window of blocks, the reads waiting), and lets go when done: no leak to warn about.
      setMaxListeners(HANDLE_SIGNAL_LISTENERS, this.closed.signal);
      if (this.released) this.closed.abort(RELEASED);
    }
    return this.closed.signal;
  }

  close(): void {
    this.released = true;
    this.closed?.abort(RELEASED);
  }
}

/** An open directory: its listing, which readdir pages through. */
interface DirHandle {
  path: string;
  /** Its own attributes, for `.` and `..`. */
  self: Attr;
  pages: DirPages;
  /** The kernel was answered the end of the listing through it (it has cached the listing whole, as `FOPEN_CACHE_DIR` asked). */
  readToEnd: boolean;
  /** Opened by this process (not restored from one before it, which answered the kernel's first reads of it). */
  ownAnswers: boolean;
}

export class Vfs {
  private readonly nodes = new Nodes();
  private readonly files = new Map<number, FileHandle>();
  private readonly dirs = new Map<number, DirHandle>();
  private nextHandle = 1;
  private readonly readBuffers: Buffer[] = [];
  private readsWaiting = 0;
  private readonly fs: Filesystem;
  private readonly client: BlockClient;
  private readonly maxCachedListing: number;
  /**
   * Nodes held within the budget (a quarter of it): past it the kernel is asked to let go of
   * the files looked up longest ago (`nodesToLetGo`), and half past it readdirplus gives
   * names only (the kernel looks them up when it needs them).
   */
  private readonly maxNodes: number;
  /** Which opens the kernel reads itself, from a backing file. */
  private readonly passthrough: PassthroughOpens;
  private readonly journal?: KernelJournal;
  /** Handles the kernel holds from a serving process before this one, not used since. */
  private readonly restored = new Map<number, { kind: HandleKind; path: string }>();
  /** Passthrough backing ids registered with the kernel, by this process or left by one before it and not closed yet. */
  private readonly backingIds = new Set<number>();
  /** Of those, the ones a serving process before this one left: closed once passthrough is on. */
  private readonly leftBackings: number[] = [];
  private readonly metrics: Metrics;
  /** Restored handles being opened again. */
  private readonly reopening = new Map<number, Promise<void>>();
  private readonly dirPrefetch?: DirectoryPrefetch;

  constructor(config: VfsConfig) {
    this.dirPrefetch = config.dirPrefetch;
    this.metrics = config.metrics;
    this.fs = config.fs;
    this.client = config.client;
    this.maxCachedListing = config.maxCachedListing ?? DEFAULT_MAX_CACHED_LISTING;
    this.maxNodes = Math.floor(config.metaBudgetBytes / 4 / NODE_BYTES);
    this.passthrough = new PassthroughOpens(config.client, config.metrics);
    if (config.journal) {
      const { file, held, mapped } = config.journal;
      if (held) {
        for (const [id, path] of held.nodes) this.nodes.restore(id, path, held.nextNode);
        for (const [fh, handle] of held.handles) {
          this.restored.set(fh, handle);
          const nodeId = handle.kind === 'file' ? this.nodes.idOf(handle.path) : undefined;
          if (nodeId !== undefined) this.passthrough.restored(fh, nodeId);
        }
        this.nextHandle = held.nextHandle;
        for (const id of held.backings) {
          this.backingIds.add(id);
          this.leftBackings.push(id);
        }
      }
      const live = { nodes: () => this.nodes.entries(), handles: () => this.liveHandles(), backings: () => this.backingIds };
      this.journal = held ? KernelJournal.resume(file, live, mapped) : KernelJournal.fresh(file, live, mapped);
      const journal = this.journal;
      this.nodes.observer = { made: (id, path) => journal.nodeMade(id, path), dropped: (id) => journal.nodeDropped(id) };
    }
    config.metrics.vfsNodes.sampledBy(() => this.nodes.size);
    config.metrics.vfsReadsWaiting.sampledBy(() => this.readsWaiting);
    config.metrics.vfsOpenFiles.sampledBy(() => this.files.size);
  }

  /** The path of a node, for messages; `#id` when the kernel named one not held. */
  pathOf(nodeId: number): string {
    return this.nodes.get(nodeId)?.path ?? `#${nodeId}`;
  }

  /**
   * Files whose entries the kernel is to be asked to drop, so that the nodes it holds stay
   * within the budget: none while they do. `quiet`: no request making nodes is under way,
   * and they go past it by a sixteenth; else only past it by a quarter.
   */
  nodesToLetGo(quiet: boolean): NodeToLetGo[] {
    return this.nodes.toLetGo(this.maxNodes, quiet ? this.maxNodes / 16 : this.maxNodes / 4);
  }

  /** The kernel refused to drop the entry of node `id`: it is held on. */
  nodeKept(id: number): void {
    this.nodes.kept(id);
  }

  /** Up to `max` node ids of regular files the kernel holds (it can be asked to send a request about them). */
  heldFiles(max: number): number[] {
    return this.nodes.heldFiles(max);
  }

  /** The path of an open file or directory, for messages. */
  handlePath(fh: number): string {
    return this.files.get(fh)?.path ?? this.dirs.get(fh)?.path ?? `#${fh}`;
  }

  /** A name looked up: at once when its entry is known (a walk's lookups of a page stat'ed together), else a promise. */
  lookup(parentId: number, name: string, cancel: Cancellation): NodeEntry | Promise<NodeEntry> {
    const parent = this.node(parentId);
    dirState(parent).childLookups += 1;
    const path = childPath(parent.path, name);
    const attr = this.fs.getattr(path);
    return attr instanceof Promise ? attr.then((a) => this.lookedUp(parent, path, a, cancel)) : this.lookedUp(parent, path, attr, cancel);
  }

  private lookedUp(parent: Node, path: string, attr: Attr, cancel: Cancellation): NodeEntry {
    throwIfCancelled(cancel);
    const node = this.nodes.remember(path, parent);
    return { nodeId: node.id, attr: this.told(node, attr) };
  }

  forget(nodeId: number, count: number): void {
    this.nodes.forget(nodeId, count);
  }

  async getattr(nodeId: number): Promise<NodeAttr> {
    const node = this.node(nodeId);
    return this.told(node, await this.fs.getattr(node.path));
  }

  async open(nodeId: number, flags: number, cancel: Cancellation): Promise<OpenedFile> {
    const node = this.node(nodeId);
    const object = await this.fs.open(node.path, flags);
    throwIfCancelled(cancel);
    const fh = this.nextHandle++;
    const file = new FileHandle(fh, node.path, object, this.client.newReadahead());
    let backingId: number | undefined;
    try {
      const passing = this.passthrough.open(file, nodeId);
      backingId = passing instanceof Promise ? await passing : passing;
      throwIfCancelled(cancel);
    } catch (err) {
      this.passthrough.release(fh);
      file.close();
      this.client.release(file);
      throw err;
    }
    this.files.set(fh, file);
    this.journal?.opened(fh, 'file', node.path);
    // auto_cache: the pages are still right while the file is as it was when last opened.
    const keepCache = node.version !== undefined && node.version === node.openedVersion;
    node.openedVersion = node.version;
    file.passedThrough = backingId !== undefined;
    file.pagesKept = keepCache;
    this.dirPrefetch?.opened(object);
    return { fh, keepCache, backingId };
  }

  /**
   * FUSE passthrough was negotiated with the kernel: opens of files held whole in one local
   * file may pass through. The backing ids registered are written down as they come and go,
   * so that the serving process taking over after this one dies closes them: the kernel
   * holds each id's file (and its disk space) until it is closed or the connection ends, and
   * only a process that knows the id can close it. Closing those left by a process before
   * this one is safe while opens of them last: the kernel's open files hold their own
   * reference to the backing, the id only names it for new opens.
   */
  usePassthrough(backings: BackingFiles): void {
    const journal = this.journal;
    if (!journal) return this.passthrough.enable(backings);
    const ids = this.backingIds;
    this.passthrough.enable({
      open: (fd) => {
        const id = backings.open(fd);
        if (id !== undefined) {
          ids.add(id);
          journal.backingOpened(id);
        }
        return id;
      },
      close: (id) => {
        ids.delete(id);
        journal.backingClosed(id);
        return backings.close(id);
      },
    });
    for (const id of this.leftBackings.splice(0)) {
      ids.delete(id);
      journal.backingClosed(id);
      if (backings.close(id)) this.metrics.passthroughReclaimed.inc();
    }
  }

  /**
   * Reads up to `size` bytes at `offset` of an open file and answers `reply`: at once when
   * the bytes are in memory; otherwise when they come, the read waiting its turn behind
   * MAX_READS_WAITING others of the same file. A read cancelled before its turn, or whose
   * file was released meanwhile, is not made.
   */
  read(fh: number, offset: number, size: number, cancel: Cancellation, reply: ReadReply): void {
    const file = this.files.get(fh);
    if (!file) {
      const reopened = this.reopen(fh, 'file');
      if (!reopened) throw new CachefsError('BAD_HANDLE', `no open file handle ${fh}`);
      reopened.then(
        () => {
          try {
            this.read(fh, offset, size, cancel, reply);
          } catch (err) {
            reply.error(err);
          }
        },
        (err: unknown) => reply.error(err),
      );
      return;
    }
    if (file.waiting >= MAX_READS_WAITING) file.queue.push(() => this.startRead(file, offset, size, cancel, reply));
    else this.startRead(file, offset, size, cancel, reply);
  }

  private startRead(file: FileHandle, offset: number, size: number, cancel: Cancellation, reply: ReadReply): void {
    if (cancel.aborted) return reply.error(cancelled());
    // Queued behind reads answered early (interrupted), the file may have been released since.
    if (file.released) return reply.error(new CachefsError('BAD_HANDLE', `file handle ${file.id} was released`));
    if (offset === 0) file.readSpan |= READ_HEAD;
    if (offset + size >= file.object.size) file.readSpan |= READ_TAIL;
    const buffer = this.readBuffers.pop() ?? Buffer.allocUnsafeSlow(MAX_READ);
    let n: number | Buffer | Promise<number>;
    try {
      n = this.client.read(file, { position: offset, length: Math.min(size, MAX_READ), dest: buffer, view: true, cancel });
    } catch (err) {
      this.giveBack(buffer);
      return reply.error(err);
    }
    if (typeof n === 'number') {
      reply.data(buffer.subarray(0, n));
      return this.giveBack(buffer);
    }
    if (Buffer.isBuffer(n)) {
      reply.data(n);
      return this.giveBack(buffer);
    }
    file.waiting += 1;
    this.readsWaiting += 1;
    n.then(
      (count) => {
        reply.data(buffer.subarray(0, count));
        this.settled(file, buffer);
      },
      (err: unknown) => {
        if (isCachefsError(err, 'STALE')) this.fs.objectChanged(file.object.key);
        reply.error(err);
        this.settled(file, buffer);
      },
    );
  }

  /** A read's block reads have ended: its buffer is free, and reads queued behind it may start. */
  private settled(file: FileHandle, buffer: Buffer): void {
    this.giveBack(buffer);
    this.readsWaiting -= 1;
    file.waiting -= 1;
    // Reads answered from memory do not wait: take queued ones until one waits again.
    while (file.waiting < MAX_READS_WAITING && file.queue.length > 0) file.queue.shift()!();
  }

  private giveBack(buffer: Buffer): void {
    if (this.readBuffers.length < FREE_READ_BUFFERS) this.readBuffers.push(buffer);
  }

  release(fh: number): void {
    const file = this.files.get(fh);
    if (!file) return this.releaseRestored(fh);
    this.files.delete(fh);
    this.passthrough.release(fh);
    this.journal?.released(fh);
    file.close();
    this.client.release(file);
    this.dirPrefetch?.released(file.object, readShape(file.readSpan, file.passedThrough, file.pagesKept));
  }

  /**
   * Opens a directory: its listing's first page is read now (or it is cached whole), and
   * readdir pages through the listing from there. A listing that ended within its first
   * page is compared with the one the kernel may have cached; a longer one is cached by
   * the kernel only while it is within the size kept whole.
   */
  async opendir(nodeId: number, cancel: Cancellation): Promise<OpenedDir> {
    const node = this.node(nodeId);
    const { dir, listing } = await this.fs.openDir(node.path);
    const pages = listing ? DirPages.whole(listing.children) : await DirPages.open(this.fs.streamListing(dir.key), cancel.signal);
    throwIfCancelled(cancel);
    const fh = this.nextHandle++;
    this.dirs.set(fh, { path: node.path, self: this.fs.attrOf(dir), pages, readToEnd: false, ownAnswers: true });
    this.journal?.opened(fh, 'dir', node.path);
    const complete = pages.complete;
    const state = dirState(node);
    if (!complete) {
      state.openedListing = undefined;
      return { fh, keepCache: false, cacheDir: state.listedCount === undefined || state.listedCount <= this.maxCachedListing };
    }
    state.listedCount = complete.length;
    const fingerprint = this.fingerprint(complete);
    const keepCache = fingerprint === state.openedListing;
    state.openedListing = fingerprint;
    return { fh, keepCache, cacheDir: true };
  }

  /** The entries of an open directory from `offset` on (an offset is the index of the next entry); a promise when they must be listed first. */
  readdir(fh: number, offset: number): Iterable<DirEntryOut> | Promise<Iterable<DirEntryOut>> {
    const reopened = this.dirs.has(fh) ? undefined : this.reopen(fh, 'dir');
    if (reopened) return reopened.then(() => this.readdir(fh, offset));
    const dir = this.dir(fh);
    const children = this.childrenFrom(dir, offset);
    return children instanceof Promise ? children.then((c) => this.entriesFrom(dir, offset, c)) : this.entriesFrom(dir, offset, children);
  }

  /** The children from `offset` on; noting when the kernel is answered the listing's end. */
  private childrenFrom(dir: DirHandle, offset: number): Iterable<PlacedChild> | Promise<Iterable<PlacedChild>> {
    const children = dir.pages.from(offset);
    if (dir.pages.ended && offset >= FIRST_CHILD + dir.pages.known) dir.readToEnd = true;
    return children;
  }

  /**
   * readdirplus: the entries with their attributes as far as they are known (from the
   * listing, or a file listed by name alone stat'ed since); the others by name alone. The
   * node of an entry is counted as looked up only when `take()` is called (once its entry
   * fits the answer): the kernel holds each node it is given so.
   */
  readdirplus(fh: number, offset: number): Iterable<DirPlusEntryOut> | Promise<Iterable<DirPlusEntryOut>> {
    const reopened = this.dirs.has(fh) ? undefined : this.reopen(fh, 'dir');
    if (reopened) return reopened.then(() => this.readdirplus(fh, offset));
    const dir = this.dir(fh);
    const children = this.childrenFrom(dir, offset);
    if (children instanceof Promise) return children.then((c) => this.plusEntries(dir, offset, c));
    return this.plusEntries(dir, offset, children);
  }

  /**
   * The entries of a readdirplus answer. In a directory whose files are being looked up
   * one by one (a walk that stats them: find, ls -l, du), a file listed by name alone is
   * stat'ed before it is answered, with its page (and the next page, ahead), and the
   * answer ends before the first file whose stats have not come: the kernel then has
   * every entry's attributes and sends no lookup for them. Elsewhere (`ls -f`, a first
   * listing) such a file goes by name alone, and nothing waits for a stat.
   */
  private plusEntries(dir: DirHandle, offset: number, children: Iterable<PlacedChild>): Iterable<DirPlusEntryOut> | Promise<Iterable<DirPlusEntryOut>> {
    const walked = (this.nodes.ofPath(dir.path)?.dir?.childLookups ?? 0) >= WALK_LOOKUPS;
    if (!walked) return this.plusEntriesFrom(dir, offset, children, false);
    const rest = children[Symbol.iterator]();
    const first = rest.next();
    const all = first.done ? [] : prepend(first.value, rest);
    const stat = first.done ? undefined : this.fs.settle(first.value.child);
    const answer = (): Iterable<DirPlusEntryOut> => this.plusEntriesFrom(dir, offset, all, true);
    // Stats that failed leave their files by name alone (the kernel's lookup then says what is wrong).
    return stat ? stat.then(answer, answer) : answer();
  }

  private *entriesFrom(dir: DirHandle, offset: number, children: Iterable<PlacedChild>): Generator<DirEntryOut> {
    if (offset === 0) yield { name: '.', ino: this.nodes.idOf(dir.path), mode: dir.self.mode, next: 1 };
    if (offset <= 1) yield { name: '..', ino: undefined, mode: dir.self.mode, next: FIRST_CHILD };
    const self = this.nodes.ofPath(dir.path);
    for (const { child, offset: at } of children) {
      yield { name: child.name, ino: this.nodes.childId(self, dir.path, child.name), mode: modeOf(child.entry), next: at + 1 };
    }
  }

  /** `statted`: the answer ends before a file whose stats are under way (its first child's have come). */
  private *plusEntriesFrom(dir: DirHandle, offset: number, children: Iterable<PlacedChild>, statted: boolean): Generator<DirPlusEntryOut> {
    const none = (): undefined => undefined;
    if (offset === 0) yield { name: '.', ino: this.nodes.idOf(dir.path), mode: dir.self.mode, next: 1, take: none };
    if (offset <= 1) yield { name: '..', ino: undefined, mode: dir.self.mode, next: FIRST_CHILD, take: none };
    const self = this.nodes.ofPath(dir.path);
    let first = true;
    for (const { child, offset: at } of children) {
      if (statted && !first && this.fs.settle(child)) return;
      first = false;
      const entry = this.fs.settled(child);
      // Not stat'ed yet (or gone since it was listed): its name only, and the kernel looks it up when it needs it.
      if (!entry) {
        yield { name: child.name, ino: this.nodes.childId(self, dir.path, child.name), mode: modeOf(child.entry), next: at + 1, take: none };
        continue;
      }
      const path = childPath(dir.path, child.name);
      const attr = this.fs.attrOf(entry);
      const take = (): NodeEntry | undefined => {
        // A node the kernel holds cannot be evicted, only asked back (`nodesToLetGo`): half
        // past the budget (asks not answered yet), readdirplus makes no new ones.
        if (this.nodes.held >= this.maxNodes + this.maxNodes / 2 && this.nodes.idOf(path) === undefined) return undefined;
        const node = this.nodes.remember(path, self);
        return { nodeId: node.id, attr: this.told(node, attr) };
      };
      yield { name: child.name, ino: this.nodes.idOf(path), mode: attr.mode, next: at + 1, take };
    }
  }

  private dir(fh: number): DirHandle {
    const dir = this.dirs.get(fh);
    if (!dir) throw new CachefsError('BAD_HANDLE', `no open directory handle ${fh}`);
    return dir;
  }

  releasedir(fh: number): void {
    const dir = this.dirs.get(fh);
    if (!dir) return this.releaseRestored(fh);
    this.dirs.delete(fh);
    this.journal?.released(fh);
    dir.pages.close();
    // Read to its end: whether the kernel may cache it whole next time is known now.
    const node = this.nodes.ofPath(dir.path);
    if (!node) return;
    const state = dirState(node);
    if (dir.pages.ended) state.listedCount = dir.pages.known;
    // The kernel cached the listing streamed through it: the next open may keep that, if the listing is the same then.
    const listing = dir.readToEnd && dir.ownAnswers && state.openedListing === undefined ? this.fs.cachedListing(dir.path) : undefined;
    if (listing && listing.children.length === dir.pages.known) state.openedListing = this.fingerprint(listing.children);
  }

  /** What the kernel's cached copy of a listing is checked against: with sizes and mtimes where the store's listings give them. */
  private fingerprint(children: readonly Child[]): string {
    return listingFingerprint(children, !this.fs.listsByName);
  }

  statfs(): StatFs {
    return this.fs.statfs();
  }

  /**
   * Opens a handle restored from the journal again, by its path, under its old number; undefined
   * when `fh` is no restored handle of that kind. Reads of it made meanwhile share the one opening.
   */
  private reopen(fh: number, kind: HandleKind): Promise<void> | undefined {
    const pending = this.reopening.get(fh);
    if (pending) return pending;
    const handle = this.restored.get(fh);
    if (handle?.kind !== kind) return undefined;
    const opening = (kind === 'file' ? this.reopenFile(fh, handle.path) : this.reopenDir(fh, handle.path)).finally(() => this.reopening.delete(fh));
    this.reopening.set(fh, opening);
    return opening;
  }

  private async reopenFile(fh: number, path: string): Promise<void> {
    const object = await this.fs.open(path, 0);
    // Released while it was being opened: the kernel holds it no more.
    if (!this.restored.delete(fh)) return;
    this.files.set(fh, new FileHandle(fh, path, object, this.client.newReadahead()));
  }

  private async reopenDir(fh: number, path: string): Promise<void> {
    const { dir, listing } = await this.fs.openDir(path);
    const pages = listing ? DirPages.whole(listing.children) : await DirPages.open(this.fs.streamListing(dir.key));
    if (!this.restored.delete(fh)) return pages.close();
    this.dirs.set(fh, { path, self: this.fs.attrOf(dir), pages, readToEnd: false, ownAnswers: false });
  }

  private releaseRestored(fh: number): void {
    this.passthrough.release(fh);
    if (this.restored.delete(fh)) this.journal?.released(fh);
  }

  private *liveHandles(): Generator<[number, HandleKind, string]> {
    for (const [fh, file] of this.files) yield [fh, 'file', file.path];
    for (const [fh, dir] of this.dirs) yield [fh, 'dir', dir.path];
    for (const [fh, handle] of this.restored) yield [fh, handle.kind, handle.path];
  }

  async access(nodeId: number, mask: number): Promise<void> {
    await this.fs.access(this.node(nodeId).path, mask);
  }

  /** Every write op ends here. */
  refuseWrite(nodeId: number): never {
    return this.fs.refuseWrite(this.node(nodeId).path);
  }

  private node(id: number): Node {
    const node = this.nodes.get(id);
    if (!node) throw new CachefsError('STALE', `the kernel named node ${id}, which is not held`);
    return node;
  }

  /** The attributes of a node as the kernel gets them; remembers the version the kernel now knows. */
  private told(node: Node, a: Attr): NodeAttr {
    // The same version again (most getattrs) keeps its object (an open compares them by identity); a file's is its entry.
    const v = node.version;
    if (!v || v.etag !== a.version || v.mtimeMs !== a.mtimeMs || v.size !== a.size) node.version = a.file ?? { etag: a.version, mtimeMs: a.mtimeMs, size: a.size };
    node.file = (a.mode & S_IFMT) === S_IFREG;
    // One shape for every node's attributes (a spread of files' and directories' made two): the encoder stays fast.
    return { ino: node.id, size: a.size, blocks: a.blocks, mtimeMs: a.mtimeMs, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, blksize: a.blksize };
  }
}

/** `first`, then the rest of `rest`. */
function* prepend<T>(first: T, rest: Iterator<T>): Generator<T> {
  yield first;
  for (let next = rest.next(); !next.done; next = rest.next()) yield next.value;
}

/** The error of an op whose request was cancelled: its answer was given already (EINTR or ETIMEDOUT). */
function cancelled(): CachefsError {
  return new CachefsError('INTERRUPTED', 'the request was interrupted');
}

function throwIfCancelled(cancel: Cancellation): void {
  if (cancel.aborted) throw cancelled();
}

/**
 * What a listing shows: a digest of its entries' names and kinds in order, and, where the
 * store's listings give them (object stores), their sizes and mtimes. Equal digests: the
 * kernel's cached listing is still right. (A changed object lets the kernel's copy go, and
 * readdirplus gives every entry's new attributes at once; a folder lists names alone, and
 * a file listed so is the same entry once stat'ed.)
 */
function listingFingerprint(children: readonly Child[], withAttributes: boolean): string {
  const hash = createHash('sha256');
  for (const { name, entry } of children) {
    const kind = entry.kind === 'dir' ? 'd' : 'f';
    const attributes = !withAttributes || entry.kind === 'listed' ? '' : `\0${entry.kind === 'file' ? entry.size : 0}\0${entry.mtimeMs}`;
    hash.update(`${name}\0${kind}${attributes}\n`);
  }
  return hash.digest('base64');
}
