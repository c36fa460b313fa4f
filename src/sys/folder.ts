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

/** A folder's directory stream, an entry at a time: `next()` its name, `type` its d_type. */
export class DirStream {
  /** d_type of the entry `next()` last gave. */
  type = DT_UNKNOWN;
  private at = 0;
  private end = 0;
  private constructor(
    private readonly fd: number,
    private readonly calls: Calls | undefined,
    private readonly buf: Buffer,
    private readonly dir: Dir | undefined,
  ) {}

  /** Opens the folder at `path` (Node's errors: ENOENT, ENOTDIR, EACCES, ...). */
  static async open(path: string): Promise<DirStream> {
    const c = await loadCalls();
    if (!c) return new DirStream(-1, undefined, Buffer.alloc(0), opendirSync(path, { bufferSize: 1024 }));
    const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NONBLOCK);
    return new DirStream(fd, c, Buffer.allocUnsafe(DIRENTS_BYTES), undefined);
  }

  /** The next entry's name (`.` and `..` skipped), null at the end. */
  next(): string | null {
    if (this.dir) return this.nextOfDir(this.dir);
    for (;;) {
      if (this.at >= this.end && !this.fill()) return null;
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

  close(): void {
    if (this.dir) this.dir.closeSync();
    else closeSync(this.fd);
  }

  private fill(): boolean {
    const n = this.calls!.getdents(this.fd, this.buf, this.buf.length);
    if (n < 0) throw new CachefsError('IO', `cannot read a folder: errno ${this.calls!.errno()}`);
    this.at = 0;
    this.end = n;
    return n > 0;
  }

  private nextOfDir(dir: Dir): string | null {
    const e = dir.readSync();
    if (!e) return null;
    this.type = e.isFile() ? DT_REG : e.isDirectory() ? DT_DIR : e.isSymbolicLink() ? DT_LNK : e.isFIFO() ? DT_FIFO : e.isCharacterDevice() ? DT_CHR : e.isBlockDevice() ? DT_BLK : e.isSocket() ? DT_SOCK : DT_UNKNOWN;
    return e.name;
  }
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
