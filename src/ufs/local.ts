/**
 * A local folder as UFS (`file:///srv/data`): for datasets on a mounted disk or NFS,
 * and the simplest backend to reason about. The ETag is derived from inode, size
 * and mtime, so a rewritten file gets new block ids like a rewritten object. Asked
 * for names alone (`UfsListOptions.names`), a listing gives regular files as the
 * directory stream names them, without a stat each (`ls -f` of a million files).
 *
 * Only regular files under the folder are served. Symlinks are followed while
 * they stay inside it (resolved paths are checked against the folder's own
 * resolved path); one that leads out is neither listed nor found nor read. A read
 * opens without blocking (O_NONBLOCK: a FIFO never holds a thread of the pool) and
 * decides on the opened descriptor — its type by fstat, its place by
 * /proc/self/fd — so a swap of the path after a check changes nothing.
 */
import { closeSync, constants, openSync, readlinkSync, type BigIntStats, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { Scatter } from '../block/scatter.js';
import { CachefsError } from '../errors.js';
import { DirStream, DT_DIR, DT_LNK, DT_REG, DT_UNKNOWN, statxRecords } from '../sys/folder.js';
import { StatThread } from '../sys/stat-thread.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsReadOptions } from './ufs.js';
import type { UfsUri } from './uri.js';

const DEFAULT_PAGE = 1000;
/** How long a listing under way waits for its next page, and how many wait at once. */
const WALK_TTL_MS = 60_000;
const MAX_WALKS = 64;
const READ_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;
/** How long a folder found inside the root is taken to be, for the stats of the files in it. */
const INSIDE_TTL_MS = 1000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/**
 * A listing under way: the folder's directory stream, read as far as `position` entries.
 * Pages come in the folder's own order (as `ls -f` and bindfs show it), each sorted in
 * itself, so the first page of a folder of a million entries takes one page of reads,
 * not a read and sort of the whole folder.
 */
interface DirWalk {
  prefix: string;
  dir: DirStream;
  position: number;
  /** Drops it when no next page is asked for in time. */
  timer?: NodeJS.Timeout;
}

export class LocalUfs implements Ufs {
  readonly displayUri: string;
  /** A folder's stream gives names and types; a file's size and times cost a stat each. */
  readonly listsByName = true;
  private readonly root: string;
  /**
   * Listings under way by their token's id, so that the next page continues the folder's
   * stream where the last one ended; dropped after WALK_TTL_MS unused. A listing's first
   * page opens the folder afresh, so a file added to it shows in the next listing.
   */
  private readonly walks = new Map<number, DirWalk>();
  private nextWalk = 1;
  /** The root with its symlinks resolved, once it exists. */
  private realRoot: string | undefined;
  /** The last folder whose files were stat'ed, and whether it is inside the root (`folderInside`). */
  private lastFolder: { dir: string; until: number; inside: Promise<boolean> } | undefined;
  /** Stats the files of listing pages off the event loop. */
  private readonly stats = new StatThread();

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
      // A file that is no symlink is inside where its folder is: a walk's stats of a folder's
      // files resolve the folder once, not each file's path (a second trip to the thread pool each).
      const own = await lstat(file, { bigint: true });
      if (own.isFile()) return (await this.folderInside(path.dirname(file))) ? toObject(key, own) : null;
      if (!own.isSymbolicLink()) return null;
      const st = await stat(file, { bigint: true });
      return st.isFile() && (await this.staysInside(file)) ? toObject(key, st) : null;
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR') || isCode(err, 'ELOOP')) return null;
      throw ioError(err, key);
    }
  }

  /**
   * The files of one listing page, stat'ed together: each by statx(2) relative to its
   * folder's descriptor, in a thread of their own (`sys/stat-thread.ts`: the event loop goes
   * on serving meanwhile; a promise per file through the thread pool cost several times a
   * stat in this process). The folder is opened once and checked to be inside the root by
   * what the descriptor points to; a symlink is stat'ed alone the careful way (`stat`).
   */
  async statFiles(keys: readonly string[]): Promise<(UfsObject | null)[]> {
    if (!(await statxRecords())) return Promise.all(keys.map((k) => this.stat(k)));
    const out: (UfsObject | null)[] = new Array<UfsObject | null>(keys.length).fill(null);
    let from = 0;
    while (from < keys.length) {
      const folderKey = keys[from]!.slice(0, keys[from]!.lastIndexOf('/') + 1);
      let to = from + 1;
      while (to < keys.length && keys[to]!.startsWith(folderKey) && keys[to]!.indexOf('/', folderKey.length) < 0) to++;
      await this.statFolderFiles(folderKey, keys, from, to, out);
      from = to;
    }
    return out;
  }

  /** Stats keys[from, to), files of the folder `folderKey` ('' or ending in '/'), into `out`. */
  private async statFolderFiles(folderKey: string, keys: readonly string[], from: number, to: number, out: (UfsObject | null)[]): Promise<void> {
    let fd: number;
    try {
      fd = openSync(this.resolve(folderKey), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NONBLOCK);
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR') || isCode(err, 'ELOOP')) return;
      throw ioError(err, folderKey);
    }
    const links: number[] = [];
    try {
      if (!(await this.contains(readlinkSync(`/proc/self/fd/${fd}`)))) return;
      const figures = await this.stats.stat(fd, keys.slice(from, to).map((k) => k.slice(folderKey.length)));
      figures.forEach((st, j) => {
        const i = from + j;
        if (st?.type === S_IFREG) out[i] = toObject(keys[i]!, st);
        else if (st?.type === S_IFLNK) links.push(i);
      });
    } finally {
      closeSync(fd);
    }
    await Promise.all(links.map(async (i) => (out[i] = await this.stat(keys[i]!))));
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    const max = options.maxKeys ?? DEFAULT_PAGE;
    const walk = await this.walkFrom(prefix, options.token);
    if (!walk) return { objects: [], prefixes: [] };
    const dir = this.resolve(prefix);
    /** Names to stat: of the stream's regular files too unless the caller takes names alone, and of everything of another type. */
    const toStat: string[] = [];
    const names: string[] = [];
    const prefixes: string[] = [];
    let listed = 0;
    let ended = false;
    try {
      while (listed < max) {
        const name = walk.dir.next();
        if (name === undefined) {
          await walk.dir.fill();
          continue;
        }
        if (name === null) {
          ended = true;
          break;
        }
        walk.position += 1;
        const type = walk.dir.type;
        if (type === DT_REG && options.names) names.push(prefix + name);
        else if (type === DT_DIR) prefixes.push(`${prefix}${name}/`);
        else if (type !== DT_LNK && type !== DT_UNKNOWN) toStat.push(name);
        else {
          // A symlink, or an entry the folder's file system gives no type for: followed, and served while it stays inside.
          const target = path.join(dir, name);
          try {
            if (!(await this.staysInside(target))) continue; // leads out of the folder: not ours to serve
            if ((await stat(target)).isDirectory()) prefixes.push(`${prefix}${name}/`);
            else toStat.push(name);
          } catch {
            continue; // dangling link: nothing to serve
          }
        }
        listed += 1;
      }
    } catch (err) {
      walk.dir.close();
      throw ioError(err, prefix);
    }
    const objects: UfsObject[] = [];
    await Promise.all(
      toStat.map(async (name) => {
        try {
          const st = await stat(path.join(dir, name), { bigint: true });
          if (st.isFile()) objects.push(toObject(prefix + name, st));
        } catch (err) {
          if (!isCode(err, 'ENOENT')) throw ioError(err, prefix + name);
        }
      }),
    );
    // Names alone stay in the folder's order: sorting each page's thousand took a tenth of a cold ls -f's serving time.
    sortKeys(objects, (o) => o.key);
    sortKeys(prefixes, (p) => p);
    const page: UfsListPage = options.names ? { objects, prefixes, names } : { objects, prefixes };
    if (ended) {
      walk.dir.close();
      return page;
    }
    return { ...page, nextToken: this.keep(walk) };
  }

  /** The listing a token continues, or a new one of the folder; undefined when the folder is not there (or leads out). */
  private async walkFrom(prefix: string, token: string | undefined): Promise<DirWalk | undefined> {
    let skip = 0;
    if (token !== undefined) {
      const m = /^(\d+)\/(\d+)$/.exec(token);
      if (!m) throw new CachefsError('INVALID_ARGUMENT', `invalid listing token '${token}': expected one this folder's listing gave`);
      const id = Number(m[1]);
      skip = Number(m[2]);
      const walk = this.walks.get(id);
      if (walk && walk.prefix === prefix && walk.position === skip) {
        this.walks.delete(id);
        clearTimeout(walk.timer);
        return walk;
      }
    }
    // A first page, or a page asked again or after its listing was dropped: the folder's
    // stream is read again up to where the token left it (its order is the same while the
    // folder is unchanged).
    const dir = this.resolve(prefix);
    let handle: DirStream;
    try {
      if (!(await this.staysInside(dir))) return undefined;
      handle = await DirStream.open(dir, this.stats);
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR') || isCode(err, 'ELOOP')) return undefined;
      throw ioError(err, prefix);
    }
    const walk: DirWalk = { prefix, dir: handle, position: 0 };
    try {
      while (walk.position < skip) {
        const name = handle.next();
        if (name === null) break;
        if (name === undefined) await handle.fill();
        else walk.position += 1;
      }
    } catch (err) {
      handle.close();
      throw ioError(err, prefix);
    }
    return walk;
  }

  /** Keeps a listing for its next page; answers the token that continues it. */
  private keep(walk: DirWalk): string {
    const id = this.nextWalk++;
    walk.timer = setTimeout(() => this.drop(id), WALK_TTL_MS);
    walk.timer.unref();
    this.walks.set(id, walk);
    for (const old of this.walks.keys()) {
      if (this.walks.size <= MAX_WALKS) break;
      this.drop(old);
    }
    return `${id}/${walk.position}`;
  }

  private drop(id: number): void {
    const walk = this.walks.get(id);
    if (!walk) return;
    this.walks.delete(id);
    clearTimeout(walk.timer);
    walk.dir.close();
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
    for (const id of [...this.walks.keys()]) this.drop(id);
    this.stats.close();
  }

  /**
   * Whether the folder `dir` resolves inside the root, known for INSIDE_TTL_MS (the last
   * folder asked). Only attributes are answered from it: a read decides on its opened
   * descriptor, so a folder swapped for a symlink within that time leaks no bytes.
   */
  private folderInside(dir: string): Promise<boolean> {
    const now = performance.now();
    if (this.lastFolder?.dir !== dir || now > this.lastFolder.until) this.lastFolder = { dir, until: now + INSIDE_TTL_MS, inside: this.staysInside(dir) };
    return this.lastFolder.inside;
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

/** What a file's object is made of: Node's BigIntStats and statx's figures (`sys/folder.ts`) both have it. */
type FileFigures = Pick<BigIntStats, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>;

function toObject(key: string, st: FileFigures): UfsObject {
  return { key, size: Number(st.size), mtimeMs: Number(st.mtimeNs / 1000n) / 1000, etag: etagOf(st) };
}

/**
 * A file's version: inode, size, and mtime and ctime in nanoseconds. The ctime moves on
 * every write, also one that puts the mtime back (touch -d, rsync -t), so a rewrite in
 * place is a new version whatever its mtime says.
 */
function etagOf(st: FileFigures): string {
  return [st.ino, st.size, st.mtimeNs, st.ctimeNs].map((n) => n.toString(16)).join('-');
}

/**
 * Sorts in the byte order of UTF-8 names (S3's order). The code-unit order of JS strings is
 * the same below U+D800, so only a list with a name beyond it is sorted by bytes (each name
 * tested once: a test per comparison was most of the sort's time).
 */
function sortKeys<T>(items: T[], key: (item: T) => string): void {
  if (items.some((item) => WIDE.test(key(item)))) items.sort((a, b) => Buffer.compare(Buffer.from(key(a)), Buffer.from(key(b))));
  // Strings themselves: the built-in order (code units), no comparison called back (a quarter faster).
  else if (typeof items[0] === 'string') items.sort();
  else items.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}
const WIDE = /[\ud800-\uffff]/;

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

function ioError(err: unknown, key: string): CachefsError {
  if (isCode(err, 'EACCES') || isCode(err, 'EPERM')) return new CachefsError('ACCESS_DENIED', `access denied to ${key}`, { cause: err });
  return new CachefsError('IO', `cannot read ${key}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
