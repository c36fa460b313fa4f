/**
 * The FUSE ops of a cachefs mount, as a table: each opcode with its name, the
 * smallest body it may come with, and its handler. A handler decodes the request,
 * calls the filesystem (`FuseFilesystem`, which `vfs/vfs.ts` implements), encodes
 * the answer, and maps a failure to an errno in one place (`errno.ts`), counted by
 * op. Nothing is decided here about the tree, the data or what the kernel may cache.
 *
 * The connection itself is negotiated here: INIT checks the kernel's major version
 * and caps the minor and the flags to what both sides know; a request before INIT
 * or after DESTROY, or shorter than its op's body, is answered EIO before any
 * handler runs.
 */
import { writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { StatFs } from '../vfs/filesystem.js';
import { childPath, type NodeToLetGo } from '../vfs/nodes.js';
import type { BackingFiles } from '../vfs/passthrough.js';
import { MAX_READ, type Cancellation, type DirEntryOut, type DirPlusEntryOut, type NodeAttr, type NodeEntry, type OpenedDir, type OpenedFile, type ReadReply } from '../vfs/vfs.js';
import { errnoName, errnoOf, isFailure } from './errno.js';
import {
  attrOut,
  DirentPage,
  cString,
  entryOut,
  FUSE_KERNEL_MINOR,
  FUSE_KERNEL_VERSION,
  InitFlag,
  InitFlag2,
  initOut,
  InSize,
  invalidateEntries,
  pruneNodes,
  MIN_KERNEL_MINOR,
  Op,
  OpenFlag,
  openOut,
  type RequestHeader,
  statfsOut,
  u64,
  uniqueAt,
  UNKNOWN_INO,
  WRITE_OPS,
} from './protocol.js';
import { PASSTHROUGH_STACK_DEPTH } from './passthrough.js';
import type { FuseRequest, FuseRequests } from './requests.js';
import { MAX_WRITE, type SessionHandler } from './session.js';

const E = constants.errno;
/**
 * The init flags asked for, each only when the kernel offers it. READDIRPLUS always, not
 * READDIRPLUS_AUTO: the filesystem decides entry by entry which ones carry attributes (an
 * entry without a node id is a name alone to the kernel), which the kernel's adaptive mode
 * cannot (it asks for attributes only at a listing's start and after lookups in between,
 * and gnulib's fts reads up to 100,000 entries before it stats any).
 */
const WANTED_FLAGS = InitFlag.ASYNC_READ | InitFlag.AUTO_INVAL_DATA | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.DO_READDIRPLUS;
/** How long no request making nodes comes before the kernel is asked to drop entries (`makingNodes`). */
const LET_GO_QUIET_MS = 3;

/** The filesystem the FUSE ops call, by node ids and handles. */
export interface FuseFilesystem {
  lookup(parentId: number, name: string, cancel: Cancellation): NodeEntry | Promise<NodeEntry>;
  forget(nodeId: number, count: number): void;
  getattr(nodeId: number): Promise<NodeAttr>;
  open(nodeId: number, flags: number, cancel: Cancellation): Promise<OpenedFile>;
  read(fh: number, offset: number, size: number, cancel: Cancellation, reply: ReadReply): void;
  release(fh: number): void;
  opendir(nodeId: number, cancel: Cancellation): Promise<OpenedDir>;
  readdir(fh: number, offset: number): Iterable<DirEntryOut> | Promise<Iterable<DirEntryOut>>;
  readdirplus(fh: number, offset: number): Iterable<DirPlusEntryOut> | Promise<Iterable<DirPlusEntryOut>>;
  releasedir(fh: number): void;
  statfs(): StatFs;
  access(nodeId: number, mask: number): Promise<void>;
  refuseWrite(nodeId: number): never;
  /** The kernel agreed to passthrough: opens may be answered with backing files registered in `backings`. */
  usePassthrough?(backings: BackingFiles): void;
  /** Node ids of regular files the kernel holds, at most `max`. */
  heldFiles(max: number): number[];
  /** Files whose entries the kernel is to be asked to drop, so that the nodes it holds stay within a budget. */
  nodesToLetGo?(quiet: boolean): NodeToLetGo[];
  /** The kernel refused to drop the entry of node `id`. */
  nodeKept?(id: number): void;
  /** For messages: the path of a node, and of an open file or directory. */
  pathOf(nodeId: number): string;
  handlePath(fh: number): string;
}

export interface FuseOpsOptions {
  attrTimeoutSec: number;
  entryTimeoutSec: number;
  /** Kernel readahead per file, bytes. */
  maxReadahead: number;
  /** `major:minor` of the connection, whose bdi's readahead is raised at INIT. */
  deviceId?: string;
  /** The connection's registry of backing files, when passthrough is wanted (negotiated at INIT). */
  backings?: BackingFiles;
  /** The connection was negotiated with a serving process before this one, which died: served at once, INIT does not come again. */
  resumed?: Negotiated;
  /** Told what INIT settled, once it is answered: a serving process taking over the connection needs it. */
  onInit?(negotiated: Negotiated): void;
  /** Writes notifications to the kernel off the event loop (`notify-thread.ts`); without it, no entry is asked back. */
  notifications?: { send(tags: number[], bytes: Buffer, instead?: Buffer): void };
}

/** What INIT settled with the kernel: the protocol minor and the flags answered (`flags2`: the high 32 bits, with INIT_EXT). */
export interface Negotiated {
  minor: number;
  flags: number;
  flags2: number;
}

/** Narrows a parsed record of `Negotiated`; undefined if it is not one. */
export function asNegotiated(value: unknown): Negotiated | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { minor, flags, flags2 = 0 } = value as Record<string, unknown>;
  return typeof minor === 'number' && typeof flags === 'number' && typeof flags2 === 'number' ? { minor, flags, flags2 } : undefined;
}

/** An op of the table: its name, the smallest body a request of it may have, and its handler. */
type OpSpec =
  | { name: string; minBody: number; noReply?: false; handle(ops: FuseOps, h: RequestHeader, body: Buffer, req: FuseRequest): void }
  /** No reply is expected (FORGET, INTERRUPT, ...): no request is begun, none is answered. */
  | { name: string; minBody: number; noReply: true; handle(ops: FuseOps, h: RequestHeader, body: Buffer): void };

/** Where the connection is: INIT opens it, DESTROY closes it; other requests are served only in between. */
type ConnectionState = 'new' | 'ready' | 'destroyed';

export class FuseOps implements SessionHandler {
  private state: ConnectionState = 'new';
  /** Asks the kernel to drop entries once requests that make nodes paused (`madeNodes`). */
  private letGoTimer: NodeJS.Timeout | undefined;
  /** Requests that make nodes (LOOKUP, READDIRPLUS) under way, when the kernel can be asked to drop entries. */
  private makingNodes = 0;

  private static readonly OPS: ReadonlyMap<number, OpSpec> = new Map<number, OpSpec>([
    [Op.INIT, { name: 'init', minBody: 8, handle: (o, _h, b, r) => o.init(b, r) }],
    [Op.LOOKUP, { name: 'lookup', minBody: 2, handle: (o, h, b, r) => o.lookup(r, h.nodeid, cString(b, 0)) }],
    [Op.FORGET, { name: 'forget', minBody: InSize.FORGET, noReply: true, handle: (o, h, b) => o.fs.forget(h.nodeid, u64(b, 0)) }],
    [Op.BATCH_FORGET, { name: 'batch_forget', minBody: InSize.BATCH_FORGET, noReply: true, handle: (o, _h, b) => o.batchForget(b) }],
    [Op.GETATTR, { name: 'getattr', minBody: InSize.GETATTR, handle: (o, h, _b, r) => o.run(r, () => o.fs.pathOf(h.nodeid), () => o.fs.getattr(h.nodeid), (a) => [attrOut(a, o.options.attrTimeoutSec)]) }],
    [Op.OPEN, { name: 'open', minBody: InSize.OPEN, handle: (o, h, b, r) => o.run(r, () => o.fs.pathOf(h.nodeid), () => o.fs.open(h.nodeid, b.readUInt32LE(0), r), (f) => [openFileOut(f)]) }],
    [Op.READ, { name: 'read', minBody: InSize.READ, handle: (o, _h, b, r) => o.read(r, u64(b, 0), u64(b, 8), b.readUInt32LE(16)) }],
    [Op.RELEASE, { name: 'release', minBody: InSize.RELEASE, handle: (o, _h, b, r) => o.withHandle(r, u64(b, 0), (fh) => o.fs.release(fh), () => []) }],
    [Op.OPENDIR, { name: 'opendir', minBody: InSize.OPEN, handle: (o, h, _b, r) => o.run(r, () => o.fs.pathOf(h.nodeid), () => o.fs.opendir(h.nodeid, r), (d) => [openOut(d.fh, (d.cacheDir ? OpenFlag.CACHE_DIR : 0) | (d.keepCache ? OpenFlag.KEEP_CACHE : 0))]) }],
    [Op.READDIR, { name: 'readdir', minBody: InSize.READ, handle: (o, _h, b, r) => readdirOf(b, (fh, offset, size) => o.withHandle(r, fh, () => o.fs.readdir(fh, offset), (entries) => [direntPage(entries, size)])) }],
    [Op.READDIRPLUS, { name: 'readdirplus', minBody: InSize.READ, handle: (o, _h, b, r) => readdirOf(b, (fh, offset, size) => o.withHandle(r, fh, () => o.fs.readdirplus(fh, offset), (entries) => [o.direntPlusPage(entries, size)])) }],
    [Op.RELEASEDIR, { name: 'releasedir', minBody: InSize.RELEASE, handle: (o, _h, b, r) => o.withHandle(r, u64(b, 0), (fh) => o.fs.releasedir(fh), () => []) }],
    [Op.STATFS, { name: 'statfs', minBody: 0, handle: (o, _h, _b, r) => o.run(r, () => '/', () => o.fs.statfs(), (s) => [statfsOut(s)]) }],
    [Op.ACCESS, { name: 'access', minBody: InSize.ACCESS, handle: (o, h, b, r) => o.run(r, () => o.fs.pathOf(h.nodeid), () => o.fs.access(h.nodeid, b.readUInt32LE(0)), () => []) }],
    [Op.INTERRUPT, { name: 'interrupt', minBody: InSize.INTERRUPT, noReply: true, handle: (o, _h, b) => o.interrupt(uniqueAt(b, 0)) }],
    // The kernel's answer to the NOTIFY_RETRIEVE that wakes the device read when the session ends.
    [Op.NOTIFY_REPLY, { name: 'notify_reply', minBody: 0, noReply: true, handle: () => undefined }],
    [Op.DESTROY, { name: 'destroy', minBody: 0, handle: (o, _h, _b, r) => o.destroy(r) }],
    ...[...WRITE_OPS].map(([code, name]): [number, OpSpec] => [
      code,
      { name, minBody: 0, handle: (o, h, _b, r) => o.run(r, () => o.fs.pathOf(h.nodeid), () => o.fs.refuseWrite(h.nodeid), () => []) },
    ]),
  ]);

  constructor(
    private readonly fs: FuseFilesystem,
    private readonly requests: FuseRequests,
    private readonly options: FuseOpsOptions,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    metrics.fuseRequestsInFlight.sampledBy(() => requests.inFlight);
    if (!options.resumed) return;
    this.state = 'ready';
    // Backing ids the dead process registered stay with the kernel's opens of them; new opens get their own.
    if (options.backings && options.resumed.flags2 & InitFlag2.PASSTHROUGH) fs.usePassthrough?.(options.backings);
  }

  request(h: RequestHeader, body: Buffer): void {
    const spec = FuseOps.OPS.get(h.opcode);
    if (!spec) {
      // flush, fsync, xattrs, locks, ...: ENOSYS tells the kernel not to ask again where it can.
      if (this.state === 'ready') this.requests.replyNow(h.unique, -E.ENOSYS);
      else this.requests.replyNow(h.unique, -E.EIO);
      return;
    }
    const refusal = this.refusal(spec, h, body);
    if (refusal) {
      this.log.warn({ op: spec.name, unique: h.unique, len: body.length, state: this.state }, `FUSE request refused: ${refusal}`);
      this.metrics.fuseErrors.inc({ op: spec.name, errno: 'EIO' });
      if (!spec.noReply) this.requests.replyNow(h.unique, -E.EIO);
      return;
    }
    if (spec.noReply) return spec.handle(this, h, body);
    const req = this.requests.begin(h.unique, spec.name);
    // Its INTERRUPT was read first: it is answered EINTR already, and not served.
    if (req.answered) return this.metrics.fuseErrors.inc({ op: spec.name, errno: 'EINTR' });
    spec.handle(this, h, body, req);
  }

  /** Why a request is not served at all, if it is not. */
  private refusal(spec: OpSpec, h: RequestHeader, body: Buffer): string | undefined {
    if (body.length < spec.minBody) return `its body has ${body.length} bytes, ${spec.name} needs ${spec.minBody}`;
    if (h.opcode === Op.INIT) return this.state === 'new' ? undefined : 'the connection is initialised already';
    if (h.opcode === Op.NOTIFY_REPLY) return undefined;
    if (this.state === 'new') return 'before INIT';
    if (this.state === 'destroyed') return 'after DESTROY';
    return undefined;
  }

  /**
   * INIT: a kernel of major 7 is served at the lower of its minor and ours, with the flags
   * both know; a newer major is told ours (the kernel may then offer 7); an older one is refused.
   */
  private init(body: Buffer, req: FuseRequest): void {
    const major = body.readUInt32LE(0);
    const minor = body.readUInt32LE(4);
    const reply = (kernelMinor: number, flags: number, flags2 = 0): Buffer =>
      initOut(kernelMinor, {
        maxReadahead: this.options.maxReadahead,
        flags,
        maxBackground: 64,
        congestionThreshold: 48,
        maxWrite: MAX_WRITE,
        maxPages: MAX_READ / 4096,
        flags2,
        maxStackDepth: flags2 & InitFlag2.PASSTHROUGH ? PASSTHROUGH_STACK_DEPTH : 0,
      });
    if (major > FUSE_KERNEL_VERSION) {
      this.log.info({ major, minor }, `the kernel speaks FUSE ${major}.${minor}: offered ${FUSE_KERNEL_VERSION}.${FUSE_KERNEL_MINOR}`);
      return this.requests.reply(req, 0, reply(FUSE_KERNEL_MINOR, 0));
    }
    if (major < FUSE_KERNEL_VERSION || minor < MIN_KERNEL_MINOR || body.length < InSize.INIT) {
      this.log.error({ major, minor }, `the kernel speaks FUSE ${major}.${minor}: ${FUSE_KERNEL_VERSION}.${MIN_KERNEL_MINOR} or later is needed`);
      this.metrics.fuseErrors.inc({ op: 'init', errno: 'EPROTO' });
      return this.requests.reply(req, -E.EPROTO);
    }
    const kernelFlags = body.readUInt32LE(12);
    const kernelFlags2 = kernelFlags & InitFlag.INIT_EXT && body.length >= InSize.INIT_EXT ? body.readUInt32LE(16) : 0;
    const passthrough = this.options.backings !== undefined && (kernelFlags2 & InitFlag2.PASSTHROUGH) !== 0;
    const negotiated: Negotiated = {
      minor: Math.min(minor, FUSE_KERNEL_MINOR),
      flags: (WANTED_FLAGS & kernelFlags) | (passthrough ? InitFlag.INIT_EXT : 0),
      flags2: passthrough ? InitFlag2.PASSTHROUGH : 0,
    };
    this.requests.reply(req, 0, reply(negotiated.minor, negotiated.flags, negotiated.flags2));
    this.state = 'ready';
    this.options.onInit?.(negotiated);
    if (passthrough) {
      this.fs.usePassthrough?.(this.options.backings!);
      this.log.info('FUSE passthrough on: opens of files cached whole in one local file are read by the kernel from that file');
    } else if (this.options.backings) {
      this.log.warn({ major, minor }, 'FUSE passthrough is off for this mount: the kernel does not offer it (before 6.9, or built without CONFIG_FUSE_PASSTHROUGH); files are read through cachefs');
    }
    // The kernel caps a FUSE mount's readahead at the system default (128 KiB) whatever
    // max_readahead says; as root it can be raised per connection.
    const device = this.options.deviceId;
    if (device) {
      writeFile(`/sys/class/bdi/${device}/read_ahead_kb`, String(Math.floor(this.options.maxReadahead / 1024))).catch((err: unknown) =>
        this.log.debug({ device, err: (err as Error).message }, 'cannot raise the kernel readahead of the mount'),
      );
    }
  }

  private lookup(req: FuseRequest, parentId: number, name: string): void {
    const { entryTimeoutSec, attrTimeoutSec } = this.options;
    this.run(req, () => childPath(this.fs.pathOf(parentId), name), () => this.fs.lookup(parentId, name, req), (e) => [entryOut(e.nodeId, e.attr, entryTimeoutSec, attrTimeoutSec)]);
  }

  /**
   * A request that makes nodes (LOOKUP, READDIRPLUS) begins. The kernel is asked to drop
   * the entries of the files the filesystem names while it holds more nodes than their
   * budget: once no such request came for a moment (`madeNodes`), or at once when far over
   * it. A node the kernel makes while another is evicted gets its attributes marked stale
   * (6.18's `evict_ctr`), and costs a GETATTR at its next stat: asked back in the middle of a
   * walk's listing, every entry of the pages under way would.
   */
  private makingNode(): void {
    this.sendLetGo(false);
    this.makingNodes += 1;
  }

  /** A request that makes nodes was answered: the kernel is asked to drop entries once none came for a moment. */
  private madeNodes(): void {
    this.makingNodes -= 1;
    if (this.makingNodes > 0) return;
    if (this.letGoTimer) this.letGoTimer.refresh();
    else this.letGoTimer = setTimeout(() => this.makingNodes === 0 && this.sendLetGo(true), LET_GO_QUIET_MS).unref();
  }

  private sendLetGo(quiet: boolean): void {
    const notifications = this.options.notifications;
    if (!notifications || !this.fs.nodesToLetGo || this.state === 'destroyed') return;
    const nodes = this.fs.nodesToLetGo(quiet);
    if (nodes.length === 0) return;
    const ids = nodes.map((n) => n.id);
    notifications.send(ids, invalidateEntries(nodes), pruneNodes(ids));
    this.metrics.nodesLetGo.inc(nodes.length);
  }

  /** As many entries with their attributes as fit `size` bytes of fuse_direntplus; each node given is counted as looked up. */
  private direntPlusPage(entries: Iterable<DirPlusEntryOut>, size: number): Buffer {
    const page = new DirentPage(size, true);
    const { entryTimeoutSec, attrTimeoutSec } = this.options;
    let withAttributes = 0;
    let named = 0;
    for (const e of entries) {
      const bytes = page.room(e.name);
      if (bytes < 0) break;
      const node = e.take();
      if (node) {
        withAttributes += 1;
        page.add(e.name, bytes, node.nodeId, e.next, e.mode, { nodeid: node.nodeId, attr: node.attr, entrySec: entryTimeoutSec, attrSec: attrTimeoutSec });
      } else {
        named += 1;
        page.add(e.name, bytes, e.ino ?? UNKNOWN_INO, e.next, e.mode);
      }
    }
    if (withAttributes > 0) this.metrics.readdirplusEntries.inc({ with: 'attributes' }, withAttributes);
    if (named > 0) this.metrics.readdirplusEntries.inc({ with: 'name' }, named);
    return page.done();
  }

  private destroy(req: FuseRequest): void {
    this.state = 'destroyed';
    this.requests.reply(req, 0);
  }

  /** BATCH_FORGET: `count` (node id, lookups) pairs, all of which must be in the body. */
  private batchForget(body: Buffer): void {
    const count = body.readUInt32LE(0);
    const fits = Math.floor((body.length - InSize.BATCH_FORGET) / InSize.FORGET_ONE);
    if (count > fits) {
      this.log.warn({ count, fits }, 'a BATCH_FORGET counts more nodes than its body holds: the ones it holds are forgotten');
      this.metrics.fuseErrors.inc({ op: 'batch_forget', errno: 'EIO' });
    }
    for (let i = 0, at = InSize.BATCH_FORGET; i < Math.min(count, fits); i++, at += InSize.FORGET_ONE) this.fs.forget(u64(body, at), u64(body, at + 8));
  }

  private interrupt(unique: number): void {
    // Requests are handled in the kernel's order, and the kernel interrupts only a request it
    // has handed over: one not in progress was answered already, and nothing is owed.
    const req = this.requests.interrupt(unique);
    if (req) this.metrics.fuseErrors.inc({ op: req.op, errno: 'EINTR' });
  }

  private read(req: FuseRequest, fh: number, offset: number, size: number): void {
    const done = this.count('read');
    const reply: ReadReply = {
      data: (bytes) => {
        done();
        this.metrics.fuseReadBytes.inc(bytes.length);
        this.requests.reply(req, 0, bytes);
      },
      error: (err) => {
        done();
        this.requests.reply(req, this.failed(req, () => this.fs.handlePath(fh), err));
      },
    };
    try {
      this.fs.read(fh, offset, size, req, reply);
    } catch (err) {
      reply.error(err);
    }
  }

  /** Runs an op and answers it; a result that is not a promise is answered at once. */
  /** `run` for a request on an open handle `fh`, which messages name by its path. */
  private withHandle<T>(req: FuseRequest, fh: number, work: (fh: number) => Promise<T> | T, encode: (value: T) => Buffer[]): void {
    this.run(req, () => this.fs.handlePath(fh), () => work(fh), encode);
  }

  /**
   * Serves a request: `work` now, `encode` its value into the reply, `where` for messages.
   * The request's body is the device read's buffer, which the next request overwrites:
   * whatever `encode` and `where` need of it must be decoded before (they may run later).
   */
  private run<T>(req: FuseRequest, where: () => string, work: () => Promise<T> | T, encode: (value: T) => Buffer[]): void {
    const done = this.count(req.op);
    const bad = (err: unknown): void => {
      done();
      this.requests.reply(req, this.failed(req, where, err));
    };
    const ok = (value: T): void => {
      // Answered already (interrupted, timed out): nothing more reaches the kernel, and encoding may count what it is given (readdirplus).
      if (req.answered) return done();
      let body: Buffer[];
      try {
        body = encode(value);
      } catch (err) {
        return bad(err);
      }
      done();
      this.requests.reply(req, 0, ...body);
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
    const record = this.metrics.fuseOps.of(op);
    record.count += 1;
    const t0 = performance.now();
    if ((op === 'lookup' || op === 'readdirplus') && this.options.notifications && this.fs.nodesToLetGo) {
      this.makingNode();
      return () => {
        record.observe((performance.now() - t0) / 1000);
        this.madeNodes();
      };
    }
    return () => record.observe((performance.now() - t0) / 1000);
  }

  /**
   * Reports a failure as a negative errno, counted by op and errno name. A request answered
   * already (interrupted, timed out) was counted then; what its work ended with is logged only.
   */
  private failed(req: FuseRequest, where: () => string, err: unknown): number {
    const errno = errnoOf(err);
    const name = errnoName(errno);
    if (req.aborted) {
      this.log.debug({ op: req.op, path: where(), errno: name, err: (err as Error).message }, 'a cancelled FUSE op ended');
      return -errno;
    }
    this.metrics.fuseErrors.inc({ op: req.op, errno: name });
    if (isFailure(err)) this.log.warn({ op: req.op, path: where(), errno: name, err: (err as Error).message }, 'FUSE op failed');
    else this.log.debug({ op: req.op, path: where(), errno: name }, 'FUSE op answered with an error');
    return -errno;
  }
}

/** An open file's reply: passing through to its backing file, or read through us with the page cache kept or not. */
function openFileOut(f: OpenedFile): Buffer {
  if (f.backingId !== undefined) return openOut(f.fh, OpenFlag.PASSTHROUGH, f.backingId);
  return openOut(f.fh, f.keepCache ? OpenFlag.KEEP_CACHE : 0);
}

/** A READDIR or READDIRPLUS body (fuse_read_in) decoded at once: its handle, offset and the size of the answer the kernel takes. */
function readdirOf(body: Buffer, serve: (fh: number, offset: number, size: number) => void): void {
  serve(u64(body, 0), u64(body, 8), body.readUInt32LE(16));
}

/** As many entries as fit `size` bytes of fuse_dirent (a directory's readdir asks for up to 1 MiB). */
function direntPage(entries: Iterable<DirEntryOut>, size: number): Buffer {
  const page = new DirentPage(size, false);
  for (const e of entries) {
    const bytes = page.room(e.name);
    if (bytes < 0) break;
    page.add(e.name, bytes, e.ino ?? UNKNOWN_INO, e.next, e.mode);
  }
  return page.done();
}
