/**
 * The FUSE kernel protocol (linux/fuse.h, 7.31) as far as a read-only filesystem
 * needs it: op codes, init flags, and the layouts of the requests read from
 * /dev/fuse and the replies written to it. Little-endian, as the kernel's. Passthrough
 * (7.40) is negotiated by its init flag alone: its fields sit in what 7.31 pads.
 */
import type { NodeAttr } from '../vfs/vfs.js';

export const FUSE_KERNEL_VERSION = 7;
/** 7.28 brought max_pages (reads larger than 128 KiB); 7.31 is what the replies below are laid out for. */
export const FUSE_KERNEL_MINOR = 31;
/**
 * The oldest kernel minor served: the replies below have the layouts of 7.9 on, and
 * ending the session wakes its device read with a NOTIFY_RETRIEVE (7.15).
 */
export const MIN_KERNEL_MINOR = 15;

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  READDIRPLUS: 44,
  FALLOCATE: 43,
  RENAME2: 45,
  TMPFILE: 51,
} as const;

/** Ops that change the tree or a file: refused (the mount is read-only). */
export const WRITE_OPS: ReadonlyMap<number, string> = new Map([
  [Op.SETATTR, 'setattr'],
  [Op.SYMLINK, 'symlink'],
  [Op.MKNOD, 'mknod'],
  [Op.MKDIR, 'mkdir'],
  [Op.UNLINK, 'unlink'],
  [Op.RMDIR, 'rmdir'],
  [Op.RENAME, 'rename'],
  [Op.LINK, 'link'],
  [Op.WRITE, 'write'],
  [Op.SETXATTR, 'setxattr'],
  [Op.REMOVEXATTR, 'removexattr'],
  [Op.CREATE, 'create'],
  [Op.FALLOCATE, 'fallocate'],
  [Op.RENAME2, 'rename'],
  [Op.TMPFILE, 'tmpfile'],
]);

export const InitFlag = {
  ASYNC_READ: 1 << 0,
  AUTO_INVAL_DATA: 1 << 12,
  /** readdirplus: entries come with their attributes, so a walk that stats them sends no lookup each. */
  DO_READDIRPLUS: 1 << 13,
  /** readdirplus only at a listing's start and after the kernel looked entries up; plain readdir otherwise. */
  READDIRPLUS_AUTO: 1 << 14,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
  /** flags2 is read and answered (7.36): the flags past bit 31 are there. */
  INIT_EXT: 1 << 30,
} as const;

/** Init flags of flags2 (bit 32 + n of the kernel's 64-bit flags). */
export const InitFlag2 = {
  /** FUSE_PASSTHROUGH (bit 37, 7.40): opens may be answered with a backing file the kernel reads itself. */
  PASSTHROUGH: 1 << 5,
} as const;

/**
 * FOPEN_*: KEEP_CACHE keeps a file's pages (a directory's cached listing) across this open; CACHE_DIR lets the kernel cache a listing (protocol 7.28);
 * PASSTHROUGH has the kernel read the open from the backing file whose id the reply carries (7.40).
 */
export const OpenFlag = { KEEP_CACHE: 1 << 1, CACHE_DIR: 1 << 3, PASSTHROUGH: 1 << 7 } as const;

export const IN_HEADER = 40;
export const OUT_HEADER = 16;

/** Request body sizes (the kernel's structs, as of 7.9 on): a request shorter than its op's is refused. */
export const InSize = {
  INIT: 16, // major, minor, max_readahead, flags (more from 7.36 on)
  INIT_EXT: 20, // flags2 too
  FORGET: 8,
  GETATTR: 16,
  OPEN: 8,
  READ: 40,
  RELEASE: 24,
  ACCESS: 8,
  INTERRUPT: 8,
  BATCH_FORGET: 8, // count, dummy; then `count` fuse_forget_one of 16 bytes
  FORGET_ONE: 16,
} as const;

/** 2^32, to read 64-bit fields as numbers (node ids, handles and offsets stay far below 2^53). */
const HI = 0x1_0000_0000;

export function u64(b: Buffer, at: number): number {
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * HI;
}

export function putU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % HI >>> 0, at);
  b.writeUInt32LE(Math.floor(v / HI) >>> 0, at + 4);
}

export interface RequestHeader {
  len: number;
  opcode: number;
  unique: number;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

/**
 * FUSE_UNIQUE_RESEND (bit 63 of a unique): the kernel marks each request it queues again
 * after a NOTIFY_RESEND, and matches the reply by the marked unique. Bit 63 does not fit a
 * number, so it is carried as this bit instead (the kernel's uniques count up from 0 in
 * steps of 2 and stay far below it).
 */
export const RESENT = 2 ** 52;

/** A unique at `at` (a header's, or an INTERRUPT's target), bit 63 carried as RESENT. */
export function uniqueAt(b: Buffer, at: number): number {
  const hi = b.readUInt32LE(at + 4);
  return b.readUInt32LE(at) + (hi & 0x7fff_ffff) * HI + (hi & 0x8000_0000 ? RESENT : 0);
}

function putUnique(b: Buffer, at: number, unique: number): void {
  const resent = unique >= RESENT;
  putU64(b, at, resent ? unique - RESENT : unique);
  if (resent) b.writeUInt32LE((b.readUInt32LE(at + 4) | 0x8000_0000) >>> 0, at + 4);
}

export function readHeader(b: Buffer): RequestHeader {
  return { len: b.readUInt32LE(0), opcode: b.readUInt32LE(4), unique: uniqueAt(b, 8), nodeid: u64(b, 16), uid: b.readUInt32LE(24), gid: b.readUInt32LE(28), pid: b.readUInt32LE(32) };
}

/** A NUL-terminated name at `at` of a request body. */
export function cString(b: Buffer, at: number): string {
  const end = b.indexOf(0, at);
  return b.toString('utf8', at, end < 0 ? b.length : end);
}

export function outHeader(unique: number, error: number, bodyLength: number): Buffer {
  const h = Buffer.allocUnsafe(OUT_HEADER);
  h.writeUInt32LE(OUT_HEADER + bodyLength, 0);
  h.writeInt32LE(error, 4);
  putUnique(h, 8, unique);
  return h;
}

const ATTR = 88;

function putAttr(b: Buffer, at: number, a: NodeAttr): void {
  b.fill(0, at, at + ATTR);
  const sec = Math.floor(a.mtimeMs / 1000);
  const nsec = Math.round((a.mtimeMs - sec * 1000) * 1e6);
  putU64(b, at, a.ino);
  putU64(b, at + 8, a.size);
  putU64(b, at + 16, a.blocks);
  for (const t of [24, 32, 40]) putU64(b, at + t, sec); // atime, mtime, ctime
  for (const t of [48, 52, 56]) b.writeUInt32LE(nsec, at + t);
  b.writeUInt32LE(a.mode, at + 60);
  b.writeUInt32LE(a.nlink, at + 64);
  b.writeUInt32LE(a.uid, at + 68);
  b.writeUInt32LE(a.gid, at + 72);
  b.writeUInt32LE(a.blksize, at + 80);
}

/** Splits seconds into the whole seconds and nanoseconds of a validity field. */
function putValid(b: Buffer, at: number, nsecAt: number, seconds: number): void {
  const s = Math.max(0, seconds);
  putU64(b, at, Math.floor(s));
  b.writeUInt32LE(Math.round((s - Math.floor(s)) * 1e9) % 1e9, nsecAt);
}

const ENTRY_OUT = 40 + ATTR;

/** fuse_entry_out: a name resolved to a node, with how long the kernel may keep the name and the attributes. */
export function entryOut(nodeid: number, attr: NodeAttr, entrySec: number, attrSec: number): Buffer {
  const b = Buffer.alloc(ENTRY_OUT);
  putEntry(b, 0, nodeid, attr, entrySec, attrSec);
  return b;
}

function putEntry(b: Buffer, at: number, nodeid: number, attr: NodeAttr, entrySec: number, attrSec: number): void {
  putU64(b, at, nodeid);
  putValid(b, at + 16, at + 32, entrySec);
  putValid(b, at + 24, at + 36, attrSec);
  putAttr(b, at + 40, attr);
}

export function attrOut(attr: NodeAttr, attrSec: number): Buffer {
  const b = Buffer.alloc(16 + ATTR);
  putValid(b, 0, 8, attrSec);
  putAttr(b, 16, attr);
  return b;
}

/** fuse_open_out; `backingId` (7.40, padding before) names the backing file of a PASSTHROUGH open. */
export function openOut(fh: number, openFlags: number, backingId = 0): Buffer {
  const b = Buffer.alloc(16);
  putU64(b, 0, fh);
  b.writeUInt32LE(openFlags, 8);
  b.writeInt32LE(backingId, 12);
  return b;
}

export interface InitOut {
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  maxPages: number;
  /** Flags past bit 31 (with INIT_EXT in `flags`). */
  flags2?: number;
  /** How deep the backing files of passthrough may be stacked (0: no passthrough). */
  maxStackDepth?: number;
}

/** fuse_init_out as a kernel of `minor` reads it: 24 bytes before 7.23, 64 from then on. */
export function initOut(minor: number, o: InitOut): Buffer {
  const b = Buffer.alloc(minor < 23 ? 24 : 64);
  b.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  b.writeUInt32LE(minor, 4);
  b.writeUInt32LE(o.maxReadahead, 8);
  b.writeUInt32LE(o.flags >>> 0, 12);
  b.writeUInt16LE(o.maxBackground, 16);
  b.writeUInt16LE(o.congestionThreshold, 18);
  b.writeUInt32LE(o.maxWrite, 20);
  if (b.length > 24) {
    b.writeUInt32LE(1, 24); // time_gran: nanoseconds
    b.writeUInt16LE(o.maxPages, 28);
    b.writeUInt32LE(o.flags2 ?? 0, 32);
    b.writeUInt32LE(o.maxStackDepth ?? 0, 36);
  }
  return b;
}

const FUSE_NOTIFY_RETRIEVE = 5;

/**
 * A NOTIFY_RETRIEVE of no bytes of a node: the kernel answers it with a NOTIFY_REPLY
 * request, which is what wakes a read of the device waiting for requests. Recent
 * kernels (6.18 among them) take only a regular file's node, older
 * ones any node.
 */
export function retrieveNothing(nodeid: number): Buffer {
  const b = Buffer.alloc(OUT_HEADER + 32);
  b.writeUInt32LE(b.length, 0);
  b.writeInt32LE(FUSE_NOTIFY_RETRIEVE, 4); // a notification: its code in the error field, unique 0
  putU64(b, OUT_HEADER + 8, nodeid); // notify_unique, offset and size 0
  return b;
}

const FUSE_NOTIFY_INVAL_ENTRY = 3;

/**
 * NOTIFY_INVAL_ENTRYs of the entry `name` of the directory node `parentId`, each: the kernel
 * drops its dentry, and the inode, once nothing else holds it, with a FORGET of its node id.
 * One after another in one buffer of its own (not a slice of Node's pool), each starting
 * with its length, as it is written to the device one at a time.
 */
export function invalidateEntries(entries: readonly { parentId: number; name: string }[]): Buffer {
  const lengths = entries.map((e) => OUT_HEADER + 16 + Buffer.byteLength(e.name) + 1);
  const b = Buffer.alloc(lengths.reduce((n, l) => n + l, 0));
  let at = 0;
  entries.forEach(({ parentId, name }, i) => {
    const length = lengths[i]!;
    b.writeUInt32LE(length, at);
    b.writeInt32LE(FUSE_NOTIFY_INVAL_ENTRY, at + 4); // a notification: its code in the error field, unique 0
    putU64(b, at + OUT_HEADER, parentId);
    b.writeUInt32LE(length - OUT_HEADER - 17, at + OUT_HEADER + 8); // the name's bytes; flags 0: dropped, not only expired
    b.write(name, at + OUT_HEADER + 16);
    at += length;
  });
  return b;
}

const FUSE_NOTIFY_PRUNE = 9;

/**
 * A NOTIFY_PRUNE (protocol 7.45, kernel 6.18 on) of `ids`: the kernel drops the unused
 * dentries of each node (an open file's stays), and the inode then, with a FORGET of its
 * node id. Unlike NOTIFY_INVAL_ENTRY it takes no directory's lock, and one write carries
 * them all. Older kernels refuse it with EINVAL. A buffer of its own (not a slice of Node's
 * pool).
 */
export function pruneNodes(ids: readonly number[]): Buffer {
  const b = Buffer.alloc(OUT_HEADER + 16 + 8 * ids.length);
  b.writeUInt32LE(b.length, 0);
  b.writeInt32LE(FUSE_NOTIFY_PRUNE, 4); // a notification: its code in the error field, unique 0
  b.writeUInt32LE(ids.length, OUT_HEADER); // count; padding and spare 0
  ids.forEach((id, i) => putU64(b, OUT_HEADER + 16 + 8 * i, id));
  return b;
}

const FUSE_NOTIFY_RESEND = 7;

/**
 * A NOTIFY_RESEND (kernel 6.9 on): the kernel moves every request that a server of this
 * connection read and did not answer back to its queue, marked RESENT, to be read again.
 * This is how a serving process that takes over the connection of a dead one serves the
 * requests that died with it. Kernels without it refuse it with EINVAL.
 */
export function resendNotice(): Buffer {
  const b = Buffer.alloc(OUT_HEADER);
  b.writeUInt32LE(b.length, 0);
  b.writeInt32LE(FUSE_NOTIFY_RESEND, 4); // a notification: its code in the error field, unique 0
  return b;
}

export interface StatFsOut {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namemax: number;
  frsize: number;
}

export function statfsOut(s: StatFsOut): Buffer {
  const b = Buffer.alloc(80);
  putU64(b, 0, s.blocks);
  putU64(b, 8, s.bfree);
  putU64(b, 16, s.bavail);
  putU64(b, 24, s.files);
  putU64(b, 32, s.ffree);
  b.writeUInt32LE(s.bsize, 40);
  b.writeUInt32LE(s.namemax, 44);
  b.writeUInt32LE(s.frsize, 48);
  return b;
}

/** The inode number readdir gives for a name the kernel has not looked up (FUSE_UNKNOWN_INO). */
export const UNKNOWN_INO = 0xffffffff;

/** The node and attributes of a fuse_direntplus; none (node id 0) tells the kernel to take only the name. */
export interface DirentPlusEntry {
  nodeid: number;
  attr: NodeAttr;
  entrySec: number;
  attrSec: number;
}

/** Bytes zeroed ahead of the entries at a time. */
const ZERO_STEP = 64 * 1024;

/** Where answers are written before they are copied out at their size (one request is answered at a time). */
let pageScratch = Buffer.alloc(0);
let pageView = new DataView(pageScratch.buffer);

/**
 * One READDIR or READDIRPLUS answer: fuse_dirents (with `plus`, fuse_direntpluses, each a
 * fuse_entry_out then the fuse_dirent) one after another, up to the `size` bytes the
 * kernel takes, written into one kept buffer and copied out at the size they came to
 * (`done`). The kernel offers up to max_pages (1 MiB) per request, for answers of a
 * listing page (~180 KB); the buffer is zeroed a step at a time ahead of the entries, so
 * that an entry writes only its fields that are not zero (a name-only entry: its inode,
 * offset, name length, type and name), through a DataView, an ASCII name a character at a
 * time. Buffer's checked writes and fills were a third of a million-file `ls -f`.
 */
export class DirentPage {
  private at = 0;
  private zeroed = 0;

  constructor(
    private readonly size: number,
    private readonly plus: boolean,
  ) {
    if (pageScratch.length < size) {
      pageScratch = Buffer.allocUnsafeSlow(size);
      pageView = new DataView(pageScratch.buffer, pageScratch.byteOffset, pageScratch.length);
    }
  }

  /** The bytes of `name` when its entry fits what is left, else -1 (nothing more fits then, if it is the next one). */
  room(name: string): number {
    const bytes = Buffer.byteLength(name);
    return this.at + this.entrySize(bytes) <= this.size ? bytes : -1;
  }

  /** Bytes an entry of a name of `bytes` takes: its fuse_entry_out with `plus`, 24 bytes of fuse_dirent, the name, padding to 8. */
  private entrySize(bytes: number): number {
    return (this.plus ? ENTRY_OUT : 0) + ((24 + bytes + 7) & ~7);
  }

  /**
   * Appends the entry of `name` (`bytes` as `room` gave), of inode `ino`; `next` is the
   * offset the kernel passes back to continue after it. With `plus`, `entry` carries its
   * node and attributes, or none (node id 0) for its name alone.
   */
  add(name: string, bytes: number, ino: number, next: number, mode: number, entry?: DirentPlusEntry): void {
    const b = pageScratch;
    const v = pageView;
    let at = this.at;
    const end = at + this.entrySize(bytes);
    if (end > this.zeroed) {
      const to = Math.min(this.size, Math.max(end, this.zeroed + ZERO_STEP));
      b.fill(0, this.zeroed, to);
      this.zeroed = to;
    }
    if (this.plus) {
      if (entry) putEntry(b, at, entry.nodeid, entry.attr, entry.entrySec, entry.attrSec);
      at += ENTRY_OUT;
    }
    v.setUint32(at, ino % HI, true);
    v.setUint32(at + 4, Math.floor(ino / HI), true);
    v.setUint32(at + 8, next % HI, true);
    v.setUint32(at + 12, Math.floor(next / HI), true);
    v.setUint32(at + 16, bytes, true);
    v.setUint32(at + 20, (mode >>> 12) & 0o17, true); // DT_* from the file type bits
    if (bytes === name.length) {
      // Bytes as many as characters: every one is ASCII.
      for (let i = 0; i < bytes; i++) b[at + 24 + i] = name.charCodeAt(i);
    } else b.write(name, at + 24, bytes, 'utf8');
    this.at = end;
  }

  /** The answer, in a buffer of its own. */
  done(): Buffer {
    return Buffer.from(pageScratch.subarray(0, this.at));
  }
}
