/**
 * Open file descriptors of cached block files, reused across the many FUSE reads
 * that FUSE makes of one block. Reference counted, so an fd is never closed while a
 * read on it is in flight (a reused fd number would read another file); idle fds
 * beyond the limit are closed least recently used first. An evicted block's file
 * stays readable through its open fd, and its bytes are still the block's bytes.
 */
import { close, fstatSync, open, read, constants } from 'node:fs';

interface OpenBlock {
  fd: number;
  size: number;
  /** Reads in flight on this fd. */
  refs: number;
  /** No longer in the map: closed as soon as the last read ends. */
  retired: boolean;
}

export class BlockFiles {
  private readonly open = new Map<string, OpenBlock>();
  private readonly opening = new Map<string, Promise<OpenBlock>>();

  constructor(private readonly maxIdle = 256) {}

  /** Reads from the block file at `path`; returns bytes read. `expectedSize` guards against damaged files. */
  async read(id: string, path: string, expectedSize: number, dest: Buffer, destOffset: number, length: number, position: number): Promise<number> {
    const entry = await this.acquire(id, path);
    try {
      if (entry.size !== expectedSize) throw new BlockFileSizeError(entry.size, expectedSize);
      let done = 0;
      while (done < length) {
        const n = await readFd(entry.fd, dest, destOffset + done, length - done, position + done);
        // The caller asks only for bytes inside the block: a short read means the file was cut under us.
        if (n === 0) throw new BlockFileSizeError(position + done, expectedSize);
        done += n;
      }
      return done;
    } finally {
      this.release(id, entry);
    }
  }

  /** Forgets a block's fd (the file was found damaged or replaced). */
  invalidate(id: string): void {
    const entry = this.open.get(id);
    if (!entry) return;
    this.open.delete(id);
    retire(entry);
  }

  closeAll(): void {
    for (const id of [...this.open.keys()]) this.invalidate(id);
  }

  private async acquire(id: string, path: string): Promise<OpenBlock> {
    const cached = this.open.get(id);
    if (cached) {
      this.open.delete(id); // re-insert: most recently used last
      this.open.set(id, cached);
      cached.refs++;
      return cached;
    }
    let pending = this.opening.get(id);
    if (!pending) {
      pending = openBlock(path).finally(() => this.opening.delete(id));
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

  private release(id: string, entry: OpenBlock): void {
    entry.refs--;
    if (entry.refs === 0 && (entry.retired || this.open.get(id) !== entry)) retire(entry);
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

function retire(entry: OpenBlock): void {
  if (!entry.retired) entry.retired = true;
  if (entry.refs === 0 && entry.fd >= 0) {
    close(entry.fd, () => {});
    entry.fd = -1;
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
        resolve({ fd, size: fstatSync(fd).size, refs: 0, retired: false });
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
