/**
 * Open file descriptors of cached block files, reused across the many FUSE reads
 * that FUSE makes of one block. Reference counted, so an fd is never closed while a
 * read on it is in flight (a reused fd number would read another file); idle fds
 * beyond the limit are closed least recently used first. An evicted block's file
 * stays readable through its open fd, and its bytes are still the block's bytes.
 *
 * A file is checked when it is opened, before any of its bytes are served: its length,
 * and the checksum of all its bytes against the one made when the block was filled. The
 * verdict holds while the file is unchanged: every read checks afterwards that the file's
 * ctime is still the one seen at the check (a write to it, in place or not, moves the
 * ctime, and the kernel's multigrain timestamps make a change after our fstat visible),
 * so bytes changed after the check are never served either.
 *
 * A file this process wrote itself needs no such check at its first open: the store tells
 * (`vouch`) the identity it saw right after the write, with the checksum made of the bytes
 * it wrote from memory, and that verdict holds as any other while the identity does. Checking
 * it anyway read and hashed every block of a `cachefs load` a second time at its first read,
 * which left the loader's first epoch after a load at 0.63-0.83 of its second.
 *
 * The verdict is also remembered past the fd, by the file's device, inode and ctime (and
 * the checksum it was checked against), for the most recently checked files: a block
 * whose fd was closed to stay under the limit is not read and hashed whole again when it
 * is opened anew, only if one of those changed. Reading a whole file before serving its
 * first bytes made a warm sequential read after a walk of many small files (which closes
 * the large file's fds) 2.5 times slower.
 *
 * Descriptors can also come from elsewhere already checked: a co-located worker passes its
 * block file's (client/colocated-worker.ts). Such an adopted fd is the only way to the
 * file (its path may not be visible here), so it is never closed to stay under the limit,
 * only when its owner drops it; and it is lent out the same way (`lend`) to the worker's
 * socket service, which passes the checked fd on.
 */
import { close, closeSync, fstatSync, open, read, constants, type BigIntStats } from 'node:fs';
import { blockSum } from '../block/checksum.js';

/** A block file to read, and what it must hold. */
export interface BlockFile {
  id: string;
  path: string;
  /** The block's length. */
  length: number;
  /** The checksum of its bytes (block/checksum.ts). */
  sum: string;
}

/** A checked block file's descriptor, open until `release()`. */
export interface HeldBlockFile {
  fd: number;
  release(): void;
}

/** What must stay the same of a file for a check of it to stand: device, inode and ctime. */
export function fileIdentity(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.ctimeNs}`;
}

/** Scratch buffers for checking whole files, kept for the next check. */
const KEPT_SCRATCH = 2;
/** Checked files whose verdict is remembered after their fd is closed (about 100 bytes each). */
const REMEMBERED_CHECKS = 65_536;

interface OpenBlock {
  fd: number;
  size: number;
  /** The file's ctime when it was opened (and then checked). */
  ctimeNs: bigint;
  /** Device, inode and ctime: what must hold for an earlier check to stand. */
  identity: string;
  /** Reads in flight on this fd. */
  refs: number;
  /** No longer in the map: closed as soon as the last read ends. */
  retired: boolean;
}

export class BlockFiles {
  private readonly open = new Map<string, OpenBlock>();
  /** Descriptors handed to us already open and checked, by block id; closed only by `drop`. */
  private readonly adopted = new Map<string, OpenBlock>();
  private readonly opening = new Map<string, Promise<OpenBlock>>();
  private readonly scratch: Buffer[] = [];
  /** Block id -> the identity and checksum of its file when it was last found right (LRU order). */
  private readonly checkedFiles = new Map<string, string>();
  /** Files read and hashed whole so far. */
  wholeChecks = 0;

  /** `onWholeCheck` is told of every file read and hashed whole. */
  constructor(private readonly maxIdle = 256, private readonly onWholeCheck?: () => void) {}

  /** Reads `length` bytes at `position` of the block file into `dest`; returns bytes read. */
  async read(file: BlockFile, dest: Buffer, destOffset: number, length: number, position: number): Promise<number> {
    const { id } = file;
    const entry = await this.acquire(file);
    try {
      let done = 0;
      while (done < length) {
        const n = await readFd(entry.fd, dest, destOffset + done, length - done, position + done);
        // The caller asks only for bytes inside the block: a short read means the file was cut under us.
        if (n === 0) throw new BlockFileSizeError(position + done, file.length);
        done += n;
      }
      // The inode is in memory: fstat does no I/O, and costs less than a trip through the thread pool.
      if (fstatSync(entry.fd, { bigint: true }).ctimeNs !== entry.ctimeNs) throw new BlockFileChangedError();
      return done;
    } finally {
      this.release(id, entry);
    }
  }

  /**
   * The kept fd of a block file, checked as a read's would be and held open until
   * `release()`: for handing the file to someone who reads it themselves (the kernel, for
   * FUSE passthrough). A file written to since its check is dropped and refused.
   */
  async hold(file: BlockFile): Promise<HeldBlockFile> {
    const entry = await this.acquire(file);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.release(file.id, entry);
    };
    if (fstatSync(entry.fd, { bigint: true }).ctimeNs !== entry.ctimeNs) {
      release();
      throw new BlockFileChangedError();
    }
    return { fd: entry.fd, release };
  }

  /**
   * Calls `use` with the open, checked descriptor of the block file, which stays open (and
   * is never closed under it) until `use` returns: e.g. a `sendmsg` that passes it on, after
   * which the receiver holds its own. `use` must not keep it.
   */
  async lend<T>(file: BlockFile, use: (fd: number) => T): Promise<T> {
    const held = await this.hold(file);
    try {
      return use(held.fd);
    } finally {
      held.release();
    }
  }

  /**
   * Takes over `fd`, a descriptor of the block's file that its sender opened and checked:
   * reads of `file` use it until `drop`. A block already adopted keeps its first
   * descriptor and `fd` is closed (both are the block's bytes).
   */
  adopt(file: BlockFile, fd: number): void {
    if (this.adopted.has(file.id)) return closeQuietly(fd);
    let st;
    try {
      st = fstatSync(fd, { bigint: true });
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    this.adopted.set(file.id, { fd, size: Number(st.size), ctimeNs: st.ctimeNs, identity: fileIdentity(st), refs: 0, retired: false });
  }

  /**
   * Takes the block's file, whose identity (`fileIdentity`) is `identity`, to hold the bytes
   * whose checksum is `sum` without reading it: its writer made the checksum of the bytes it
   * wrote, and saw the identity after the write.
   */
  vouch(id: string, identity: string, sum: string): void {
    this.remember(id, `${identity}:${sum}`);
  }

  /** Closes an adopted descriptor (at once, or when the reads on it end). */
  drop(id: string): void {
    const entry = this.adopted.get(id);
    if (!entry) return;
    this.adopted.delete(id);
    retire(entry);
  }

  /** Adopted descriptors open now. */
  get adoptedCount(): number {
    return this.adopted.size;
  }

  /** Forgets a block's fd (the file was found damaged or replaced). */
  invalidate(id: string): void {
    this.drop(id);
    this.checkedFiles.delete(id);
    const entry = this.open.get(id);
    if (!entry) return;
    this.open.delete(id);
    retire(entry);
  }

  closeAll(): void {
    for (const id of [...this.open.keys(), ...this.adopted.keys()]) this.invalidate(id);
  }

  private async acquire(file: BlockFile): Promise<OpenBlock> {
    const { id } = file;
    const passed = this.adopted.get(id);
    if (passed) {
      passed.refs++;
      return passed;
    }
    // A block known only by its passed descriptor, dropped since the read began.
    if (file.path === '') throw new BlockFileDroppedError();
    const cached = this.open.get(id);
    if (cached) {
      this.open.delete(id); // re-insert: most recently used last
      this.open.set(id, cached);
      cached.refs++;
      return cached;
    }
    let pending = this.opening.get(id);
    if (!pending) {
      pending = openBlock(file.path)
        .then((entry) => this.checked(entry, file))
        .finally(() => this.opening.delete(id));
      this.opening.set(id, pending);
    }
    const entry = await pending;
    if (!this.open.has(id)) {
      this.open.set(id, entry);
      this.trim();
    }
    entry.refs++;
    return entry;
  }

  /** The opened file, once its length and checksum are found right; closed and rejected otherwise. */
  private async checked(entry: OpenBlock, file: BlockFile): Promise<OpenBlock> {
    const verdict = `${entry.identity}:${file.sum}`;
    if (entry.size === file.length && this.checkedFiles.get(file.id) === verdict) return entry;
    this.wholeChecks++;
    this.onWholeCheck?.();
    const buf = this.scratch.pop() ?? Buffer.allocUnsafeSlow(file.length);
    try {
      if (entry.size !== file.length) throw new BlockFileSizeError(entry.size, file.length);
      const bytes = buf.length >= file.length ? buf.subarray(0, file.length) : Buffer.allocUnsafeSlow(file.length);
      for (let done = 0; done < bytes.length; ) {
        const n = await readFd(entry.fd, bytes, done, bytes.length - done, done);
        if (n === 0) throw new BlockFileSizeError(done, file.length);
        done += n;
      }
      const sum = blockSum(bytes);
      if (sum !== file.sum) throw new BlockChecksumError(sum, file.sum);
      this.remember(file.id, verdict);
      return entry;
    } catch (err) {
      retire(entry);
      throw err;
    } finally {
      if (this.scratch.length < KEPT_SCRATCH) this.scratch.push(buf);
    }
  }

  private remember(id: string, verdict: string): void {
    this.checkedFiles.delete(id);
    this.checkedFiles.set(id, verdict);
    if (this.checkedFiles.size > REMEMBERED_CHECKS) this.checkedFiles.delete(this.checkedFiles.keys().next().value!);
  }

  private release(id: string, entry: OpenBlock): void {
    entry.refs--;
    if (entry.refs === 0 && (entry.retired || (this.open.get(id) !== entry && this.adopted.get(id) !== entry))) retire(entry);
  }

  private trim(): void {
    if (this.open.size <= this.maxIdle) return;
    for (const [id, entry] of this.open) {
      if (this.open.size <= this.maxIdle) break;
      if (entry.refs === 0) {
        this.open.delete(id);
        retire(entry);
      }
    }
  }
}

export class BlockFileSizeError extends Error {
  constructor(readonly actual: number, readonly expected: number) {
    super(`block file has ${actual} bytes, expected ${expected}`);
  }
}

/** A block read through a passed descriptor that was dropped (its pin let go) before the read got to it. */
export class BlockFileDroppedError extends Error {
  constructor() {
    super('the block file\'s passed descriptor was closed before the read');
  }
}

/** A block file written to since it was checked. */
export class BlockFileChangedError extends Error {
  constructor() {
    super('block file changed since it was checked');
  }
}

/** A block file whose bytes are not those it was filled with. */
export class BlockChecksumError extends Error {
  constructor(readonly actual: string, readonly expected: string) {
    super(`block file's checksum is ${actual}, expected ${expected}`);
  }
}

function retire(entry: OpenBlock): void {
  if (!entry.retired) entry.retired = true;
  if (entry.refs === 0 && entry.fd >= 0) {
    // Closing a file only read never waits for the disk; a trip through the thread pool costs ~60 us of this thread here.
    closeQuietly(entry.fd);
    entry.fd = -1;
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // EBADF/EIO at close of a read-only fd: nothing is lost.
  }
}

function openBlock(path: string): Promise<OpenBlock> {
  return new Promise((resolve, reject) => {
    open(path, constants.O_RDONLY | constants.O_NOATIME, (err, fd) => {
      if (err?.code === 'EPERM') {
        // O_NOATIME is refused for files of another owner; atime is then updated, which is harmless.
        open(path, constants.O_RDONLY, (err2, fd2) => (err2 ? reject(err2) : sized(fd2)));
        return;
      }
      if (err) reject(err);
      else sized(fd);
    });
    function sized(fd: number): void {
      // The inode is in memory once open: fstat does no I/O, and a trip through the thread pool would cost more than it.
      try {
        const st = fstatSync(fd, { bigint: true });
        resolve({ fd, size: Number(st.size), ctimeNs: st.ctimeNs, identity: fileIdentity(st), refs: 0, retired: false });
      } catch (err) {
        close(fd, () => {});
        reject(err);
      }
    }
  });
}

function readFd(fd: number, dest: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, dest, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}
