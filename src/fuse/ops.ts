/**
 * The FUSE ops of a cachefs mount: each request read from the kernel is decoded,
 * handed to the `Filesystem` by path (`inodes.ts` keeps the kernel's node ids),
 * answered on success, and a failure is mapped to an errno in one place and
 * counted. No decisions about the tree or the data are made here.
 *
 * Kernel caching: names and attributes are kept for --entry-timeout and
 * --attr-timeout; a file's pages are kept across opens while its mtime and size are
 * what they were at the last open (auto_cache), and dropped by the kernel itself
 * when a getattr shows them changed (AUTO_INVAL_DATA). A directory's listing is kept
 * by the kernel across opens while it is what it was at the last open (its names,
 * modes, sizes and mtimes): a walk of a tree already listed asks for no readdir.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Attr } from '../vfs/entry.js';
import type { DirEntry, Filesystem } from '../vfs/filesystem.js';
import { errnoName, errnoOf, isFailure } from './errno.js';
import { childPath, Inodes, type Inode } from './inodes.js';
import {
  attrOut,
  cString,
  direntSize,
  entryOut,
  InitFlag,
  initOut,
  type NodeAttr,
  Op,
  OpenFlag,
  openOut,
  putDirent,
  type RequestHeader,
  statfsOut,
  u64,
  UNKNOWN_INO,
  WRITE_OPS,
} from './protocol.js';
import { MAX_WRITE, type FuseSession, type SessionHandler } from './session.js';

const E = constants.errno;
/** The largest read the kernel is asked to send: 256 pages. */
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

export interface FuseOpsOptions {
  attrTimeoutSec: number;
  entryTimeoutSec: number;
  /** Kernel readahead per file, bytes. */
  maxReadahead: number;
}

interface DirHandle {
  path: string;
  entries: DirEntry[];
}

export class FuseOps implements SessionHandler {
  private readonly inodes = new Inodes();
  private readonly dirs = new Map<number, DirHandle>();
  private nextDir = 1;
  /** The path of each open file handle, for logging a failed read. */
  private readonly files = new Map<number, string>();
  private readonly readBuffers: Buffer[] = [];
  /** Per open file: reads waiting for their bytes, and reads queued behind them. */
  private readonly waits = new Map<number, { waiting: number; queue: (() => void)[] }>();
  private readonly opMetrics = new Map<string, { count: { inc(): void }; seconds: { observe(v: number): void } }>();

  constructor(
    private readonly fs: Filesystem,
    private readonly session: FuseSession,
    private readonly options: FuseOpsOptions,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  request(h: RequestHeader, body: Buffer): void {
    const { unique, nodeid } = h;
    switch (h.opcode) {
      case Op.INIT:
        return this.init(unique, body);
      case Op.LOOKUP:
        return this.lookup(unique, nodeid, cString(body, 0));
      case Op.FORGET:
        return this.inodes.forget(nodeid, u64(body, 0));
      case Op.BATCH_FORGET: {
        const count = body.readUInt32LE(0);
        for (let i = 0; i < count; i++) this.inodes.forget(u64(body, 8 + 16 * i), u64(body, 16 + 16 * i));
        return;
      }
      case Op.GETATTR:
        return this.onNode(unique, nodeid, 'getattr', (node) => this.fs.getattr(node.path), (attr, node) => [attrOut(this.nodeAttr(node, attr), this.options.attrTimeoutSec)]);
      case Op.OPEN: {
        const flags = body.readUInt32LE(0);
        return this.onNode(unique, nodeid, 'open', (node) => this.fs.open(node.path, flags), (fh, node) => {
          this.files.set(fh, node.path);
          // auto_cache: the pages are still right while the file is as it was when last opened.
          const keep = node.version !== undefined && node.version === node.openedVersion;
          node.openedVersion = node.version;
          return [openOut(fh, keep ? OpenFlag.KEEP_CACHE : 0)];
        });
      }
      case Op.READ:
        return this.read(unique, u64(body, 0), u64(body, 8), body.readUInt32LE(16));
      case Op.RELEASE: {
        const fh = u64(body, 0);
        const path = this.files.get(fh) ?? `#${fh}`;
        this.files.delete(fh);
        return this.run(unique, 'release', path, () => this.fs.release(fh), () => []);
      }
      case Op.OPENDIR:
        return this.onNode(unique, nodeid, 'opendir', (node) => this.fs.readdir(node.path), (entries, node) => {
          const fh = this.nextDir++;
          this.dirs.set(fh, { path: node.path, entries });
          const listing = listingFingerprint(entries);
          const keep = listing === node.openedListing;
          node.openedListing = listing;
          return [openOut(fh, OpenFlag.CACHE_DIR | (keep ? OpenFlag.KEEP_CACHE : 0))];
        });
      case Op.READDIR:
        return this.readdir(unique, u64(body, 0), u64(body, 8), body.readUInt32LE(16));
      case Op.RELEASEDIR:
        this.dirs.delete(u64(body, 0));
        return this.run(unique, 'releasedir', '', () => undefined, () => []);
      case Op.STATFS:
        return this.run(unique, 'statfs', '/', () => this.fs.statfs(), (s) => [statfsOut(s)]);
      case Op.ACCESS: {
        const mask = body.readUInt32LE(0);
        return this.onNode(unique, nodeid, 'access', (node) => this.fs.access(node.path, mask), () => []);
      }
      case Op.INTERRUPT:
        return; // reads are not cancelled; the reply comes as it would have
      case Op.DESTROY:
        return this.session.reply(unique, 0);
      default: {
        const write = WRITE_OPS.get(h.opcode);
        if (write) return this.onNode(unique, nodeid, write, (node) => this.fs.refuseWrite(node.path), () => []);
        // flush, fsync, xattrs, locks, ...: ENOSYS tells the kernel not to ask again where it can.
        this.session.reply(unique, -E.ENOSYS);
      }
    }
  }

  private init(unique: number, body: Buffer): void {
    const kernelFlags = body.readUInt32LE(12);
    const wanted = InitFlag.ASYNC_READ | InitFlag.AUTO_INVAL_DATA | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES;
    this.session.reply(
      unique,
      0,
      initOut({ maxReadahead: this.options.maxReadahead, flags: wanted & kernelFlags, maxBackground: 64, congestionThreshold: 48, maxWrite: MAX_WRITE, maxPages: MAX_READ / 4096 }),
    );
    // The kernel caps a FUSE mount's readahead at the system default (128 KiB) whatever
    // max_readahead says; as root it can be raised per connection.
    const device = this.session.deviceId;
    if (device) {
      writeFile(`/sys/class/bdi/${device}/read_ahead_kb`, String(Math.floor(this.options.maxReadahead / 1024))).catch((err: unknown) =>
        this.log.debug({ device, err: (err as Error).message }, 'cannot raise the kernel readahead of the mount'),
      );
    }
  }

  private lookup(unique: number, parentId: number, name: string): void {
    const parent = this.inodes.get(parentId);
    const path = parent ? childPath(parent.path, name) : name;
    this.run(unique, 'lookup', path, () => {
      if (!parent) throw staleNode(parentId);
      return this.fs.getattr(path);
    }, (attr) => {
      const node = this.inodes.remember(path);
      return [entryOut(node.id, this.nodeAttr(node, attr), this.options.entryTimeoutSec, this.options.attrTimeoutSec)];
    });
  }

  private read(unique: number, fh: number, offset: number, size: number): void {
    this.session.begin(unique);
    const wait = this.waits.get(fh);
    if (wait && wait.waiting >= MAX_READS_WAITING) wait.queue.push(() => this.startRead(unique, fh, offset, size));
    else this.startRead(unique, fh, offset, size);
  }

  private startRead(unique: number, fh: number, offset: number, size: number): void {
    const done = this.count('read');
    const buffer = this.readBuffers.pop() ?? Buffer.allocUnsafeSlow(MAX_READ);
    const length = Math.min(size, MAX_READ);
    /** `data` is in `buffer`, or a view of bytes held in memory, good only now: written at once either way. */
    const answer = (data: Buffer): void => {
      done();
      this.metrics.fuseReadBytes.inc(data.length);
      this.session.reply(unique, 0, data);
      this.giveBack(buffer);
    };
    const fail = (err: unknown): void => {
      done();
      this.session.reply(unique, this.failed('read', this.files.get(fh) ?? `#${fh}`, err));
      this.giveBack(buffer);
    };
    const settled = (): void => {
      const w = this.waits.get(fh)!;
      w.waiting -= 1;
      // Reads answered from memory do not wait: take queued ones until one waits again.
      while (w.waiting < MAX_READS_WAITING && w.queue.length > 0) w.queue.shift()!();
      if (w.waiting === 0 && w.queue.length === 0) this.waits.delete(fh);
    };
    let n: number | Buffer | Promise<number>;
    try {
      n = this.fs.read(fh, buffer, length, offset, true);
    } catch (err) {
      return fail(err);
    }
    if (typeof n === 'number') answer(buffer.subarray(0, n));
    else if (Buffer.isBuffer(n)) answer(n);
    else {
      let wait = this.waits.get(fh);
      if (!wait) this.waits.set(fh, (wait = { waiting: 0, queue: [] }));
      wait.waiting += 1;
      n.then((count) => answer(buffer.subarray(0, count)), fail).finally(settled);
    }
  }

  private giveBack(buffer: Buffer): void {
    if (this.readBuffers.length < FREE_READ_BUFFERS) this.readBuffers.push(buffer);
  }

  private readdir(unique: number, fh: number, offset: number, size: number): void {
    const dir = this.dirs.get(fh);
    this.run(unique, 'readdir', dir?.path ?? `#${fh}`, () => {
      if (!dir) throw staleNode(fh);
      const out = Buffer.alloc(size);
      let at = 0;
      for (let i = offset; i < dir.entries.length; i++) {
        const e = dir.entries[i]!;
        const name = Buffer.from(e.name);
        if (at + direntSize(name) > size) break;
        const ino = e.name === '.' ? this.inodes.idOf(dir.path) : e.name === '..' ? undefined : this.inodes.idOf(childPath(dir.path, e.name));
        at = putDirent(out, at, ino ?? UNKNOWN_INO, i + 1, e.attr.mode, name);
      }
      return out.subarray(0, at);
    }, (data) => [data]);
  }

  /** An op on a node the kernel names by id: ENOENT (stale) if it is not held. */
  private onNode<T>(unique: number, nodeid: number, op: string, work: (node: Inode) => Promise<T> | T, reply: (value: T, node: Inode) => Buffer[]): void {
    const node = this.inodes.get(nodeid);
    this.run(unique, op, node?.path ?? `#${nodeid}`, () => {
      if (!node) throw staleNode(nodeid);
      return work(node);
    }, (value) => reply(value, node!));
  }

  /** Runs an op and answers it; a result that is not a promise is answered at once. */
  private run<T>(unique: number, op: string, path: string, work: () => Promise<T> | T, reply: (value: T) => Buffer[]): void {
    const done = this.count(op);
    this.session.begin(unique);
    const ok = (value: T): void => {
      done();
      let body: Buffer[];
      try {
        body = reply(value);
      } catch (err) {
        return bad(err);
      }
      this.session.reply(unique, 0, ...body);
    };
    const bad = (err: unknown): void => {
      done();
      this.session.reply(unique, this.failed(op, path, err));
    };
    let result: Promise<T> | T;
    try {
      result = work();
    } catch (err) {
      return bad(err);
    }
    if (result instanceof Promise) result.then(ok, bad);
    else ok(result);
  }

  /** Counts the op and returns a function that records its duration when it is answered. */
  private count(op: string): () => void {
    let m = this.opMetrics.get(op);
    if (!m) this.opMetrics.set(op, (m = { count: this.metrics.fuseOps.labels(op), seconds: this.metrics.fuseOpSeconds.labels(op) }));
    m.count.inc();
    const t0 = process.hrtime.bigint();
    const seconds = m.seconds;
    return () => seconds.observe(Number(process.hrtime.bigint() - t0) / 1e9);
  }

  /** Reports a failure as a negative errno, counted by op and errno name. */
  private failed(op: string, path: string, err: unknown): number {
    const errno = errnoOf(err);
    const name = errnoName(errno);
    this.metrics.fuseErrors.inc({ op, errno: name });
    if (isFailure(err)) this.log.warn({ op, path, errno: name, err: (err as Error).message }, 'FUSE op failed');
    else this.log.debug({ op, path, errno: name }, 'FUSE op answered with an error');
    return -errno;
  }

  /** The attributes of a node as the kernel gets them; remembers the version the kernel now knows. */
  private nodeAttr(node: Inode, a: Attr): NodeAttr {
    node.version = `${a.mtimeMs}:${a.size}`;
    return { ino: node.id, size: a.size, blocks: a.blocks, mtimeMs: a.mtimeMs, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, blksize: a.blksize };
  }
}

function staleNode(id: number): CachefsError {
  return new CachefsError('STALE', `the kernel named node or handle ${id}, which is not held`);
}

/** What a listing shows: a digest of its entries' names, modes, sizes and mtimes in order. Equal digests: the kernel's cached listing is still right. */
function listingFingerprint(entries: readonly DirEntry[]): string {
  const hash = createHash('sha256');
  for (const { name, attr } of entries) hash.update(`${name}\0${attr.mode}\0${attr.size}\0${attr.mtimeMs}\n`);
  return hash.digest('base64');
}
