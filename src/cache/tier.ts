/**
 * One storage tier of a block store: a directory with a quota, holding block files
 * at `<dir>/blocks/<id[0..2]>/<id>.<sum>` (the block's checksum, block/checksum.ts). Keeps an in-memory index in LRU order (a Map
 * re-inserted on every touch), rebuilt from disk at start with the help of an index
 * file written at start and at close (`<dir>/index`), so a restart need not stat every block. Writes go to
 * `<dir>/tmp/` and are renamed into place, so a crash never leaves a torn block
 * under a block name; a block in a page-aligned buffer (a `BufferPool`'s) is written
 * past the page cache, except on MEM tiers. Knows nothing about pins or watermarks:
 * `TieredStore` does.
 *
 * Who may read it: only the process's user — dirs 0700, block files 0600 — since
 * co-located mounts get the worker's block files as passed descriptors and need no
 * permission on them; with a `group` (a worker's --domain-socket-group, when it passes
 * no descriptors: short-circuit readers by path) the dirs are 0750 and the files 0640 of
 * that group. Whatever modes an existing dir had.
 */
import { closeSync, constants, fchmodSync, fchownSync, close, ftruncate, open as openFd, statSync, write } from 'node:fs';
import { promisify } from 'node:util';
import { chmod, chown, mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isBlockId } from '../block/block.js';
import { isBlockSum } from '../block/checksum.js';
import { alignUp, DIRECT_ALIGN, directWritable } from '../block/aligned-memory.js';
import { CachefsError } from '../errors.js';
import { fileIdentity } from './block-files.js';
import type { Logger } from '../log.js';

export type Medium = 'MEM' | 'SSD' | 'HDD';

/** Modes of the tier's dirs and block files: the owner writes, the readers' group (if any) reads, nobody else. */
const GROUP_MODES = { dir: 0o750, file: 0o640 };
const OWNER_MODES = { dir: 0o700, file: 0o600 };
/** Largest single write of a block through the page cache. */
const BUFFERED_WRITE_MAX = 512 * 1024;

const fdOpen = promisify(openFd);
const fdClose = promisify(close);
const fdTruncate = promisify(ftruncate);
/** Positioned write of `length` bytes of `data` from `offset`; resolves to the bytes written. */
function fdWrite(fd: number, data: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => write(fd, data, offset, length, position, (err, written) => (err ? reject(err) : resolve(written))));
}
/** The index of the tier's blocks, in the tier dir (beside `blocks/`). */
const INDEX_FILE = 'index';
/** A block file's name: `<id>.<sum>`, 40 and 16 hex digits. */
const ID_LENGTH = 40;
const NAME_LENGTH = ID_LENGTH + 1 + 16;
const SPACE = 0x20;
/** A block file's name as the index lists it (`block/block.ts`'s id, `block/checksum.ts`'s sum), checked in one pass. */
const BLOCK_FILE_NAME = /^[0-9a-f]{40}\.[0-9a-f]{16}$/;

export interface TierConfig {
  medium: Medium;
  dir: string;
  quotaBytes: number;
}

/** A block file the tier holds. */
export interface TierBlock {
  path: string;
  length: number;
  /** The checksum of its bytes, made when it was filled. */
  sum: string;
}

export class Tier {
  readonly medium: Medium;
  readonly dir: string;
  readonly quotaBytes: number;
  private readonly blocksDir: string;
  private readonly tmpDir: string;
  /** Block id → length and checksum, in least-recently-used-first order. */
  private readonly index = new Map<string, { length: number; sum: string }>();
  private used = 0;
  private tmpSeq = 0;
  /**
   * Whether blocks are written with O_DIRECT. A block file's pages in the page cache
   * would be a second copy of what the mount's own page cache holds, and copying them
   * there took a third of the mount's CPU in a cold read here (perf); dd put 1 GiB
   * through the page cache with 0.3-1.3 s of CPU, and past it with 0.1 s. Not on MEM
   * tiers, whose files are memory.
   */
  private directWrites: boolean;
  private readonly dirMode: number;
  private readonly fileMode: number;

  constructor(
    config: TierConfig,
    private readonly log: Logger,
    /** The group block files belong to; the process's own when undefined. */
    private readonly group?: number,
  ) {
    this.medium = config.medium;
    ({ dir: this.dirMode, file: this.fileMode } = group === undefined ? OWNER_MODES : GROUP_MODES);
    this.directWrites = config.medium !== 'MEM';
    this.dir = path.resolve(config.dir);
    this.quotaBytes = config.quotaBytes;
    this.blocksDir = path.join(this.dir, 'blocks');
    this.tmpDir = path.join(this.dir, 'tmp');
  }

  get usedBytes(): number {
    return this.used;
  }

  get blockCount(): number {
    return this.index.size;
  }

  /** Creates the directories, drops leftovers of interrupted writes and indexes the blocks on disk (oldest first). */
  async open(): Promise<void> {
    try {
      await mkdir(this.blocksDir, { recursive: true, mode: this.dirMode });
      // Not the tier dir itself: it may be a shared one (a hostPath, /dev/shm); blocks/ is ours.
      await this.own(this.blocksDir, this.dirMode);
      await rm(this.tmpDir, { recursive: true, force: true });
      await mkdir(this.tmpDir, { mode: 0o700 });
      const probe = path.join(this.tmpDir, `.probe-${process.pid}`);
      await (await open(probe, 'w')).close();
      await unlink(probe);
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `cache dir '${this.dir}' is not writable: ${(err as Error).message}`, { cause: err });
    }
    // Every block file's name, by shard dir, read in parallel (the thread pool's readdirs);
    // names outside their shard's dir are leftovers.
    const onDisk = new Set<string>();
    const leftovers: string[] = [];
    await Promise.all(
      (await readdir(this.blocksDir)).map(async (shard) => {
        const shardDir = path.join(this.blocksDir, shard);
        let names: string[];
        try {
          names = await readdir(shardDir);
          await this.own(shardDir, this.dirMode);
        } catch {
          return;
        }
        for (const name of names) {
          if (name.length === NAME_LENGTH && name.startsWith(shard)) onDisk.add(name);
          else leftovers.push(path.join(shardDir, name));
        }
      }),
    );
    // The index's blocks found on disk, in its order (least recently used first): a block
    // file's name it wrote, its length known, checked when it was written.
    const indexed = await this.readIndex((name, length) => {
      if (onDisk.delete(name)) this.add(name.slice(0, ID_LENGTH), length, name.slice(ID_LENGTH + 1));
    });
    const fromIndex = this.index.size;
    // Block files it does not list (stored after it was written) come after, by their times.
    const found: { id: string; sum: string; size: number; atime: number }[] = [];
    for (const name of onDisk) {
      const file = path.join(this.blocksDir, name.slice(0, 2), name);
      // Anything else (a block file without its checksum, of an older cachefs) goes.
      const [id = '', sum = '', ...rest] = name.split('.');
      if (!isBlockId(id) || !isBlockSum(sum) || rest.length > 0) {
        leftovers.push(file);
        continue;
      }
      const st = await stat(file);
      if (st.size === 0) {
        await unlink(file);
        continue;
      }
      if ((st.mode & 0o777) !== this.fileMode || (this.group !== undefined && st.gid !== this.group)) await this.own(file, this.fileMode);
      found.push({ id, sum, size: st.size, atime: Math.max(st.atimeMs, st.mtimeMs) });
    }
    for (const file of leftovers) await rm(file, { recursive: true, force: true });
    found.sort((a, b) => a.atime - b.atime);
    for (const f of found) this.add(f.id, f.size, f.sum);
    // Written now too, so that a crash later leaves an index that lacks only the blocks stored after it.
    if (found.length > 0 || fromIndex !== indexed) await this.writeIndex();
  }

  /**
   * Reads the index as last written (`<dir>/index`: one `<id>.<sum> <length>` line per
   * block, least recently used first), calling `each` with every well-formed line's block
   * file name and length in order; answers how many there were (none when there is no
   * index or it is unreadable). It spares a restart a stat of every block file (a million
   * took minutes here); a stale one is harmless: only names found on disk are taken from
   * it, and the others are stat'ed.
   */
  private async readIndex(each: (name: string, length: number) => void): Promise<number> {
    let text: string;
    try {
      text = await readFile(path.join(this.dir, INDEX_FILE), 'latin1');
    } catch {
      return 0;
    }
    let count = 0;
    for (let at = 0; at < text.length; ) {
      let end = text.indexOf('\n', at);
      if (end < 0) end = text.length;
      const name = text.slice(at, at + NAME_LENGTH);
      const length = Number(text.slice(at + NAME_LENGTH + 1, end));
      // Only well-formed names: a listed name is taken for a block file's without more checks.
      if (text.charCodeAt(at + NAME_LENGTH) === SPACE && Number.isSafeInteger(length) && length > 0 && BLOCK_FILE_NAME.test(name)) {
        count += 1;
        each(name, length);
      }
      at = end + 1;
    }
    return count;
  }

  /** Writes the index of the blocks held now (at open and at close), through a temporary file renamed into place. */
  async writeIndex(): Promise<void> {
    // One buffer, written line by line: a million lines as strings cost seconds of garbage collection.
    const out = Buffer.allocUnsafe(this.index.size * (NAME_LENGTH + 18));
    let at = 0;
    for (const [id, e] of this.index) at += out.write(`${id}.${e.sum} ${e.length}\n`, at, 'latin1');
    const tmp = path.join(this.tmpDir, `${INDEX_FILE}.${process.pid}.${++this.tmpSeq}`);
    try {
      await writeFile(tmp, out.subarray(0, at), { mode: 0o600 });
      await rename(tmp, path.join(this.dir, INDEX_FILE));
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      this.log.warn({ dir: this.dir, err: (err as Error).message }, 'cannot write the block index: the next start stats every block file');
    }
  }

  /** Path of a block file; the id must be validated (it is by `blockRef`), the sum is ours. */
  private pathOf(id: string, sum: string): string {
    if (!isBlockId(id)) throw new CachefsError('INVALID_ARGUMENT', `invalid block id '${id}'`);
    return path.join(this.blocksDir, id.slice(0, 2), `${id}.${sum}`);
  }

  has(id: string): boolean {
    return this.index.has(id);
  }

  /** The block's file, if the tier holds it. */
  blockOf(id: string): TierBlock | undefined {
    const entry = this.index.get(id);
    return entry && { path: this.pathOf(id, entry.sum), length: entry.length, sum: entry.sum };
  }

  /** Marks the block most recently used. */
  touch(id: string): void {
    const entry = this.index.get(id);
    if (entry === undefined) return;
    this.index.delete(id);
    this.index.set(id, entry);
  }

  /** Block ids and lengths, least recently used first. */
  *lru(): IterableIterator<[string, number]> {
    for (const [id, e] of this.index) yield [id, e.length];
  }

  /**
   * Writes the block under its checksum `sum` (made by the caller when the block was
   * filled); resolves with the written file's identity (`fileIdentity`) right after.
   */
  async write(id: string, data: Buffer, sum: string): Promise<string> {
    const target = this.pathOf(id, sum);
    const tmp = path.join(this.tmpDir, `${id}.${process.pid}.${++this.tmpSeq}`);
    const direct = this.directWrites && directWritable(data) && (await this.writeDirect(tmp, data));
    if (!direct) await this.writeBuffered(tmp, data);
    try {
      await rename(tmp, target);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') throw err;
      await mkdir(path.dirname(target), { recursive: true, mode: this.dirMode });
      await this.own(path.dirname(target), this.dirMode);
      await rename(tmp, target);
    }
    // The inode is in memory: a stat here costs less than a trip through the thread pool.
    const identity = fileIdentity(statSync(target, { bigint: true }));
    const old = this.blockOf(id);
    if (old) {
      this.forget(id);
      if (old.path !== target) await rm(old.path, { force: true });
    }
    this.add(id, data.length, sum);
    return identity;
  }

  /**
   * Writes the block past the page cache (O_DIRECT), its last partial page padded and
   * then truncated away; false when the file system refuses (the tier then writes
   * through the page cache from now on).
   */
  private async writeDirect(tmp: string, data: Buffer): Promise<boolean> {
    let fd: number;
    try {
      fd = await this.create(tmp, constants.O_DIRECT);
    } catch (err) {
      return this.directRefused(err);
    }
    try {
      const padded = Buffer.from(data.buffer, data.byteOffset, alignUp(data.length));
      for (let at = 0; at < padded.length; ) {
        const bytesWritten = await fdWrite(fd, padded, at, padded.length - at, at);
        if (bytesWritten <= 0 || bytesWritten % DIRECT_ALIGN !== 0) throw new CachefsError('IO', `short direct write of ${tmp}: ${bytesWritten} bytes at ${at}`);
        at += bytesWritten;
      }
      if (padded.length !== data.length) await fdTruncate(fd, data.length);
      return true;
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      return this.directRefused(err);
    } finally {
      await fdClose(fd);
    }
  }

  /**
   * Writes the block through the page cache. Plain descriptors rather than a FileHandle,
   * and no write bigger than 512 KiB: single writes of 1 MiB or more made the serving
   * process spend ~1.6x the CPU on a cold read here (kernel 6.18, ext4).
   */
  private async writeBuffered(tmp: string, data: Buffer): Promise<void> {
    const fd = await this.create(tmp, 0);
    try {
      for (let at = 0; at < data.length; ) {
        const bytesWritten = await fdWrite(fd, data, at, Math.min(BUFFERED_WRITE_MAX, data.length - at), at);
        if (bytesWritten <= 0) throw new CachefsError('IO', `short write of ${tmp}: ${bytesWritten} bytes at ${at}`);
        at += bytesWritten;
      }
    } finally {
      await fdClose(fd);
    }
  }

  /**
   * Creates a block's temporary file with the block files' mode and group, set on the
   * descriptor at once (two system calls on an inode just made, which cost less than a
   * trip through the thread pool each: a load of small blocks writes thousands a second).
   */
  private async create(tmp: string, flags: number): Promise<number> {
    const fd = await fdOpen(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | flags, this.fileMode);
    try {
      if (this.group !== undefined) fchownSync(fd, process.getuid?.() ?? 0, this.group);
      fchmodSync(fd, this.fileMode);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return fd;
  }

  /** Gives a dir or file of the tier its mode, and the readers' group. */
  private async own(file: string, mode: number): Promise<void> {
    if (this.group !== undefined) await chown(file, process.getuid?.() ?? 0, this.group);
    await chmod(file, mode);
  }

  private directRefused(err: unknown): false {
    if ((err as { code?: string }).code !== 'EINVAL') throw err;
    this.directWrites = false;
    this.log.info({ dir: this.dir, err: (err as Error).message }, 'cache dir refuses direct I/O: writing blocks through the page cache');
    return false;
  }

  /** Drops the block: forgotten at once, its file removed after; false when the tier did not hold it. */
  async remove(id: string): Promise<boolean> {
    const block = this.blockOf(id);
    if (!block) return false;
    this.forget(id);
    await rm(block.path, { force: true });
    return true;
  }

  private add(id: string, length: number, sum: string): void {
    this.index.set(id, { length, sum });
    this.used += length;
  }

  private forget(id: string): void {
    const entry = this.index.get(id);
    if (entry === undefined) return;
    this.index.delete(id);
    this.used -= entry.length;
  }
}

