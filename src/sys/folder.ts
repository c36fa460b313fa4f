/**
 * A folder read and stat'ed the cheap way, through libc (`libc.ts`): its directory stream
 * by getdents64(2) into one buffer, decoded in place, and its files by statx(2) relative to
 * the folder's descriptor, each into one reused struct. Node's own `Dir` hands out an entry
 * by cutting it off the front of its buffered array (a copy of the rest each time) and
 * `lstat` goes through the thread pool with a promise and a Stats object per file: for a
 * listing of a million files, those were most of the serving process's time.
 *
 * Both are synchronous: a folder on a local disk answers in microseconds, and the caller
 * reads a page (1,000 entries) at a time (the stats in a thread of their own,
 * `stat-thread.ts`). Where koffi cannot load, `DirStream` falls back to Node's `Dir` and
 * `statxRecords` answers undefined (the caller stats each file its own way).
 */
import { closeSync, constants, openSync, opendirSync, type Dir } from 'node:fs';
import { constants as os } from 'node:os';
import { CachefsError } from '../errors.js';
import { loadLibc } from './libc.js';

/** d_type of a directory entry (dirent.h). */
export const DT_UNKNOWN = 0;
export const DT_DIR = 4;
export const DT_REG = 8;
export const DT_LNK = 10;
const DT_FIFO = 1;
const DT_CHR = 2;
const DT_BLK = 6;
const DT_SOCK = 12;

/** Bytes of directory entries read per getdents64 (~2,000 entries of short names). */
const DIRENTS_BYTES = 64 * 1024;
/** statx(2): do not follow a last symlink; the basic fields; the struct's size (the same on every architecture). */
const AT_SYMLINK_NOFOLLOW = 0x100;
const STATX_BASIC_STATS = 0x7ff;
const STATX_BYTES = 256;
const S_IFMT = 0o170000;

type Getdents = (fd: number, buf: Buffer, count: number) => number;
type Statx = (dirfd: number, name: string, flags: number, mask: number, buf: Buffer) => number;
interface Calls {
  getdents: Getdents;
  statx: Statx;
  errno(): number;
}

let calls: Promise<Calls | undefined> | undefined;
function loadCalls(): Promise<Calls | undefined> {
  calls ??= loadLibc('reading a folder').then(
    ({ lib, errno }) => ({
      getdents: lib.func('long getdents64(int fd, void *buf, size_t count)') as Getdents,
      statx: lib.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, void *buf)') as Statx,
      errno,
    }),
    () => undefined,
  );
  return calls;
}

/** Reads a folder's directory stream elsewhere (the folder thread, `stat-thread.ts`): the next entries of `fd`, at most `bytes`, empty at the end. */
export interface EntryReader {
  readEntries(fd: number, bytes: number): Promise<Buffer>;
}

/**
 * A folder's directory stream, an entry at a time: `next()` its name, `type` its d_type.
 * With an `EntryReader`, the stream is read by it, a buffer ahead of the one being
 * decoded; `next()` then answers undefined when its buffer is used up, and `fill()` waits
 * for the next one.
 */
export class DirStream {
  /** d_type of the entry `next()` last gave. */
  type = DT_UNKNOWN;
  private at = 0;
  private end = 0;
  private ended = false;
  /** The reader's next buffer, asked for as soon as the one before came. */
  private ahead: Promise<Buffer> | undefined;
  private closed = false;
  private constructor(
    private readonly fd: number,
    private readonly calls: Calls | undefined,
    private buf: Buffer,
    private readonly dir: Dir | undefined,
    private readonly reader: EntryReader | undefined,
  ) {}

  /** Opens the folder at `path` (Node's errors: ENOENT, ENOTDIR, EACCES, ...); read by `reader` when given and koffi loads. */
  static async open(path: string, reader?: EntryReader): Promise<DirStream> {
    const c = await loadCalls();
    if (!c) return new DirStream(-1, undefined, Buffer.alloc(0), opendirSync(path, { bufferSize: 1024 }), undefined);
    const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NONBLOCK);
    return new DirStream(fd, c, reader ? Buffer.alloc(0) : Buffer.allocUnsafe(DIRENTS_BYTES), undefined, reader);
  }

  /** The next entry's name (`.` and `..` skipped), null at the end; undefined when `fill()` must be awaited first. */
  next(): string | null | undefined {
    if (this.dir) return this.nextOfDir(this.dir);
    for (;;) {
      if (this.at >= this.end) {
        if (this.ended) return null;
        if (this.reader) return undefined;
        this.fillHere();
        continue;
      }
      const at = this.at;
      const reclen = this.buf.readUInt16LE(at + 16);
      this.at += reclen;
      const nameEnd = this.buf.indexOf(0, at + 19);
      const name = this.buf.toString('utf8', at + 19, nameEnd < 0 || nameEnd > at + reclen ? at + reclen : nameEnd);
      if (name === '.' || name === '..') continue;
      this.type = this.buf[at + 18]!;
      return name;
    }
  }

  /** The reader's next buffer, once `next()` answered undefined (the next read asked for at once). */
  async fill(): Promise<void> {
    if (!this.reader || this.ended || this.at < this.end) return;
    const buf = await (this.ahead ?? this.reader.readEntries(this.fd, DIRENTS_BYTES));
    this.ahead = undefined;
    this.buf = buf;
    this.at = 0;
    this.end = buf.length;
    if (buf.length === 0) this.ended = true;
    else if (!this.closed) {
      this.ahead = this.reader.readEntries(this.fd, DIRENTS_BYTES);
      this.ahead.catch(() => undefined); // its failure is the next fill's, if one comes
    }
  }

  /** Closes the folder; once the reader's read under way (if any) has ended, since it reads by the descriptor's number. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.dir) return this.dir.closeSync();
    const ahead = this.ahead;
    this.ahead = undefined;
    if (!ahead) return closeSync(this.fd);
    ahead.then(
      () => closeSync(this.fd),
      () => closeSync(this.fd),
    );
  }

  private fillHere(): void {
    const n = this.calls!.getdents(this.fd, this.buf, this.buf.length);
    if (n < 0) throw new CachefsError('IO', `cannot read a folder: errno ${this.calls!.errno()}`);
    this.at = 0;
    this.end = n;
    if (n === 0) this.ended = true;
  }

  private nextOfDir(dir: Dir): string | null {
    const e = dir.readSync();
    if (!e) return null;
    this.type = e.isFile() ? DT_REG : e.isDirectory() ? DT_DIR : e.isSymbolicLink() ? DT_LNK : e.isFIFO() ? DT_FIFO : e.isCharacterDevice() ? DT_CHR : e.isBlockDevice() ? DT_BLK : e.isSocket() ? DT_SOCK : DT_UNKNOWN;
    return e.name;
  }
}

/**
 * Reads directory entries of an open folder (`fd`) by getdents64(2), at most `bytes` of
 * them into a buffer of their own (it may be moved to another thread), empty at the end
 * (the folder thread's work, `stat-thread.ts`): undefined where koffi cannot load.
 */
export async function direntsReader(): Promise<((fd: number, bytes: number) => Buffer) | undefined> {
  const c = await loadCalls();
  if (!c) return undefined;
  return (fd, bytes) => {
    const out = Buffer.from(new ArrayBuffer(bytes));
    const n = c.getdents(fd, out, bytes);
    if (n < 0) throw new CachefsError('IO', `cannot read a folder: errno ${c.errno()}`);
    return out.subarray(0, n);
  };
}

/** What statx gave of one file: its type, and the fields a file's object is made of. */
export interface FileStatx {
  /** S_IFMT bits of st_mode. */
  type: number;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/** Bytes of one file's figures as the stat thread hands them over: a u32 status, then statx's fields from `stx_mode`. */
export const STAT_RECORD = 4 + 100;
/** Where statx's struct's fields that `decodeStatx` reads begin, and end. */
const STATX_FROM = 28;
const STATX_TO = 128;

/** The figures of a statx struct whose byte 0 is at `base` of `b` (only its bytes from STATX_FROM on need be there). */
function decodeStatx(b: Buffer, base: number): FileStatx {
  return {
    type: b.readUInt16LE(base + 28) & S_IFMT,
    ino: b.readBigUInt64LE(base + 32),
    size: b.readBigUInt64LE(base + 40),
    ctimeNs: b.readBigInt64LE(base + 96) * 1_000_000_000n + BigInt(b.readUInt32LE(base + 104)),
    mtimeNs: b.readBigInt64LE(base + 112) * 1_000_000_000n + BigInt(b.readUInt32LE(base + 120)),
  };
}

/**
 * Stats `names` relative to an open folder (`dirfd`), not following a last symlink, into
 * records of STAT_RECORD bytes, each its errno (0 when stat'ed) and statx's fields (the
 * stat thread's work, `stat-thread.ts`): undefined where koffi cannot load.
 */
export async function statxRecords(): Promise<((dirfd: number, names: readonly string[]) => Buffer) | undefined> {
  const c = await loadCalls();
  if (!c) return undefined;
  const b = Buffer.alloc(STATX_BYTES);
  return (dirfd, names) => {
    const out = Buffer.from(new ArrayBuffer(names.length * STAT_RECORD)); // its own memory: it may be moved to another thread
    names.forEach((name, i) => {
      const at = i * STAT_RECORD;
      if (c.statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, b) !== 0) out.writeUInt32LE(c.errno() || os.errno.EIO, at);
      else b.copy(out, at + 4, STATX_FROM, STATX_TO);
    });
    return out;
  };
}

/** The figures of record `i` of `records` (as `statxRecords` made them), of `name`: null when it is not there (ENOENT, ENOTDIR); other errnos are thrown. */
export function statxOfRecord(records: Buffer, i: number, name: string): FileStatx | null {
  const at = i * STAT_RECORD;
  const errno = records.readUInt32LE(at);
  if (errno === 0) return decodeStatx(records, at + 4 - STATX_FROM);
  if (errno === os.errno.ENOENT || errno === os.errno.ENOTDIR) return null;
  throw new CachefsError(errno === os.errno.EACCES || errno === os.errno.EPERM ? 'ACCESS_DENIED' : 'IO', `cannot stat ${name}: errno ${errno}`);
}
