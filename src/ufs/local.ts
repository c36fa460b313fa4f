/**
 * A local folder as UFS (`file:///srv/data`): for datasets on a mounted disk or NFS,
 * and the simplest backend to reason about. The ETag is derived from inode, size
 * and mtime, so a rewritten file gets new block ids like a rewritten object.
 *
 * Only regular files under the folder are served. Symlinks are followed while
 * they stay inside it (resolved paths are checked against the folder's own
 * resolved path); one that leads out is neither listed nor found nor read. A read
 * opens without blocking (O_NONBLOCK: a FIFO never holds a thread of the pool) and
 * decides on the opened descriptor — its type by fstat, its place by
 * /proc/self/fd — so a swap of the path after a check changes nothing.
 */
import { constants, type BigIntStats, type Stats } from 'node:fs';
import { open, readdir, readlink, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { Scatter } from '../block/scatter.js';
import { CachefsError } from '../errors.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsReadOptions } from './ufs.js';
import type { UfsUri } from './uri.js';

const DEFAULT_PAGE = 1000;
const SNAPSHOT_TTL_MS = 10_000;
const READ_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

interface DirSnapshot {
  at: number;
  /** Entry names in byte order; directories carry a trailing '/'. */
  names: string[];
}

export class LocalUfs implements Ufs {
  readonly displayUri: string;
  private readonly root: string;
  /**
   * Sorted listings of recently paged directories, so paging a 100k-entry folder is not
   * quadratic. Only later pages use them: a listing's first page reads the folder again,
   * so a file added to it shows in the next listing.
   */
  private readonly snapshots = new Map<string, DirSnapshot>();
  /** The root with its symlinks resolved, once it exists. */
  private realRoot: string | undefined;

  constructor(uri: UfsUri) {
    this.displayUri = uri.text;
    this.root = uri.root;
  }

  private resolve(key: string): string {
    const parts = key.split('/').filter((p) => p !== '');
    if (parts.some((p) => p === '..' || p === '.')) throw new CachefsError('INVALID_ARGUMENT', `invalid key '${key}'`);
    return path.join(this.root, ...parts);
  }

  async check(): Promise<void> {
    let st: Stats;
    try {
      st = await stat(this.root);
    } catch (err) {
      throw new CachefsError('BUCKET_NOT_FOUND', `folder not found: ${this.displayUri}`, { cause: err });
    }
    if (!st.isDirectory()) throw new CachefsError('BUCKET_NOT_FOUND', `not a folder: ${this.displayUri}`);
    try {
      await readdir(this.root);
    } catch (err) {
      throw new CachefsError('ACCESS_DENIED', `access denied to ${this.displayUri}`, { cause: err });
    }
  }

  async stat(key: string): Promise<UfsObject | null> {
    if (key === '' || key.endsWith('/')) return null;
    try {
      const file = this.resolve(key);
      const st = await stat(file, { bigint: true });
      return st.isFile() && (await this.staysInside(file)) ? toObject(key, st) : null;
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR') || isCode(err, 'ELOOP')) return null;
      throw ioError(err, key);
    }
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    // A listing's first page reads the folder afresh; later pages page through that read.
    const names = await this.snapshot(prefix, options.token === undefined);
    const start = options.token ? upperBound(names, options.token) : 0;
    const page = names.slice(start, start + (options.maxKeys ?? DEFAULT_PAGE));
    const objects: UfsObject[] = [];
    const prefixes: string[] = [];
    const dir = this.resolve(prefix);
    await Promise.all(
      page.map(async (name) => {
        if (name.endsWith('/')) return;
        try {
          const st = await stat(path.join(dir, name), { bigint: true });
          if (st.isFile()) objects.push(toObject(prefix + name, st));
        } catch (err) {
          if (!isCode(err, 'ENOENT')) throw ioError(err, prefix + name);
        }
      }),
    );
    for (const name of page) if (name.endsWith('/')) prefixes.push(prefix + name);
    objects.sort((a, b) => (a.key < b.key ? -1 : 1));
    const last = page[page.length - 1];
    return { objects, prefixes, nextToken: start + page.length < names.length && last !== undefined ? last : undefined };
  }

  private async snapshot(prefix: string, fresh: boolean): Promise<string[]> {
    const cached = this.snapshots.get(prefix);
    if (!fresh && cached && Date.now() - cached.at < SNAPSHOT_TTL_MS) return cached.names;
    const dir = this.resolve(prefix);
    let entries;
    try {
      // A directory reached through a link that leads out of the folder lists as empty.
      if (!(await this.staysInside(dir))) return [];
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR') || isCode(err, 'ELOOP')) return [];
      throw ioError(err, prefix);
    }
    const names: string[] = [];
    for (const e of entries) {
      let isDir = e.isDirectory();
      if (e.isSymbolicLink()) {
        const target = path.join(dir, e.name);
        try {
          if (!(await this.staysInside(target))) continue; // leads out of the folder: not ours to serve
          isDir = (await stat(target)).isDirectory();
        } catch {
          continue; // dangling link: nothing to serve
        }
      }
      names.push(isDir ? `${e.name}/` : e.name);
    }
    names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    if (this.snapshots.size > 64) this.snapshots.clear();
    this.snapshots.set(prefix, { at: Date.now(), names });
    return names;
  }

  async readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options: UfsReadOptions = {}): Promise<number> {
    let handle;
    try {
      handle = await open(this.resolve(key), READ_FLAGS);
    } catch (err) {
      if (isCode(err, 'ENOENT')) throw new CachefsError(options.etag ? 'STALE' : 'NOT_FOUND', `not found: ${this.displayUri}/${key}`, { cause: err });
      throw ioError(err, key);
    }
    try {
      const st = await handle.stat({ bigint: true });
      if (!st.isFile()) throw new CachefsError('ACCESS_DENIED', `refusing to read ${this.displayUri}/${key}: not a regular file`);
      if (!(await this.contains(await readlink(`/proc/self/fd/${handle.fd}`)))) {
        throw new CachefsError('ACCESS_DENIED', `refusing to read ${this.displayUri}/${key}: a symlink leads out of the folder`);
      }
      if (options.etag && etagOf(st) !== options.etag) {
        throw new CachefsError('STALE', `file changed while reading ${this.displayUri}/${key}`);
      }
      const scatter = new Scatter(dest);
      let done = 0;
      while (done < scatter.length) {
        const room = scatter.region(done);
        const { bytesRead } = await handle.read(room, 0, room.length, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      // Written to while it was read: the bytes may mix versions, and none of them is used.
      // (So no progress is told before this: a caller gets the bytes once they are known good.)
      if (options.etag && etagOf(await handle.stat({ bigint: true })) !== options.etag) {
        throw new CachefsError('STALE', `file changed while reading ${this.displayUri}/${key}`);
      }
      return done;
    } catch (err) {
      throw err instanceof CachefsError ? err : ioError(err, key);
    } finally {
      await handle.close();
    }
  }

  async close(): Promise<void> {
    this.snapshots.clear();
  }

  /** Whether `file`, its symlinks resolved, is the folder or under it (ENOENT and ELOOP are thrown). */
  private async staysInside(file: string): Promise<boolean> {
    return this.contains(await realpath(file));
  }

  /** Whether a resolved path is the folder or under it. */
  private async contains(real: string): Promise<boolean> {
    this.realRoot ??= await realpath(this.root);
    const root = this.realRoot;
    return real === root || real.startsWith(root.endsWith('/') ? root : `${root}/`);
  }
}

function toObject(key: string, st: BigIntStats): UfsObject {
  return { key, size: Number(st.size), mtimeMs: Number(st.mtimeNs / 1000n) / 1000, etag: etagOf(st) };
}

/**
 * A file's version: inode, size, and mtime and ctime in nanoseconds. The ctime moves on
 * every write, also one that puts the mtime back (touch -d, rsync -t), so a rewrite in
 * place is a new version whatever its mtime says.
 */
function etagOf(st: BigIntStats): string {
  return [st.ino, st.size, st.mtimeNs, st.ctimeNs].map((n) => n.toString(16)).join('-');
}

/** Index of the first name after `token` in the sorted list. */
function upperBound(names: string[], token: string): number {
  let lo = 0;
  let hi = names.length;
  const t = Buffer.from(token);
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (Buffer.compare(Buffer.from(names[mid]!), t) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

function ioError(err: unknown, key: string): CachefsError {
  if (isCode(err, 'EACCES') || isCode(err, 'EPERM')) return new CachefsError('ACCESS_DENIED', `access denied to ${key}`, { cause: err });
  return new CachefsError('IO', `cannot read ${key}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
