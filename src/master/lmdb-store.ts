/**
 * The embedded default `MetaStore`: an LMDB environment in `--meta-dir`.
 * Writes are committed with synchronous flushes (`overlappingSync: false`, never
 * `noSync`) and every write method awaits `flushed` before it resolves, so a
 * write that was acknowledged survives `kill -9` and power loss. LMDB's
 * copy-on-write B-tree never leaves a torn state behind. Values are JSON. The
 * directory is claimed by a pid lock so two masters never share it, and is made
 * private at every open (0700, its files 0600), whatever mode it had: the store
 * holds sealed secrets and the workers' credential digests.
 */
import { chmod, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { CachefsError } from '../errors.js';
import { FileLock } from '../sys/file-lock.js';
import { isDelete, type MetaEntry, type MetaStore, type MetaWrite } from './meta-store.js';

export class LmdbMetaStore implements MetaStore {
  private closed = false;

  private constructor(
    private readonly db: RootDatabase<unknown, string>,
    private readonly lock: FileLock,
    readonly dir: string,
  ) {}

  static async open(dir: string): Promise<LmdbMetaStore> {
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `cannot create meta dir '${dir}' (or make it 0700): ${(err as Error).message}`, { cause: err });
    }
    const lock = await FileLock.acquire(dir, { file: 'master.pid', what: 'meta dir', owner: 'master process', hint: 'stop that master, or give this one another --meta-dir' });
    try {
      const db = open<unknown, string>({
        path: dir,
        noSubdir: false,
        encoding: 'json',
        compression: false,
        cache: false,
        noSync: false,
        noMetaSync: false,
        // Flush inside the commit, so that a resolved write is a durable write.
        overlappingSync: false,
      });
      try {
        await makeFilesPrivate(dir);
      } catch (err) {
        await db.close();
        throw err;
      }
      return new LmdbMetaStore(db, lock, dir);
    } catch (err) {
      await lock.release();
      throw new CachefsError('INVALID_ARGUMENT', `cannot open meta store in '${dir}': ${(err as Error).message}`, { cause: err });
    }
  }

  async get(key: string): Promise<unknown> {
    this.check();
    return this.db.get(key);
  }

  async list(prefix: string): Promise<MetaEntry[]> {
    this.check();
    const out: MetaEntry[] = [];
    for (const { key, value } of this.db.getRange({ start: prefix })) {
      if (typeof key !== 'string' || !key.startsWith(prefix)) break;
      out.push({ key, value });
    }
    return out;
  }

  async keys(prefix: string): Promise<string[]> {
    this.check();
    const out: string[] = [];
    for (const key of this.db.getKeys({ start: prefix })) {
      if (typeof key !== 'string' || !key.startsWith(prefix)) break;
      out.push(key);
    }
    return out;
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.commit([{ key, value }]);
  }

  async delete(key: string): Promise<boolean> {
    this.check();
    const existed = this.db.get(key) !== undefined;
    await this.write(() => this.db.remove(key));
    return existed;
  }

  async commit(writes: readonly MetaWrite[]): Promise<void> {
    this.check();
    if (writes.length === 0) return;
    await this.write(() =>
      this.db.transaction(() => {
        for (const w of writes) {
          if (isDelete(w)) this.db.removeSync(w.key);
          else this.db.putSync(w.key, w.value);
        }
      }),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.db.flushed;
      await this.db.close();
    } finally {
      await this.lock.release();
    }
  }

  private async write(op: () => Promise<unknown>): Promise<void> {
    try {
      await op();
      await this.db.flushed;
    } catch (err) {
      throw new CachefsError('IO', `meta store write failed in '${this.dir}': ${(err as Error).message}`, { cause: err });
    }
  }

  private check(): void {
    if (this.closed) throw new CachefsError('IO', 'meta store is closed');
  }
}

/** Every file of the meta dir (data.mdb, lock.mdb, the pid lock) 0600: LMDB creates them under the umask. */
async function makeFilesPrivate(dir: string): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isFile()) await chmod(path.join(dir, e.name), 0o600);
  }
}
