/**
 * The last mount table and worker lists a client got from the master, kept as
 * JSON files in a directory of its choosing, so that a mount can start and keep
 * its ring while the master is down. Files are written atomically (temp file,
 * fsync, rename) and readable by the owner only, since the mount table carries
 * secret options. A missing or damaged file reads as "no cache". Knows nothing
 * about HTTP.
 */
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { decodeMountEntry, decodeWorkerRecord, parseCacheGroup, type MountEntry, type WorkerRecord } from './api.js';
import { Fields } from './decode.js';

const VERSION = 1;
const MOUNT_TABLE_FILE = 'mount-table.json';

export interface Cached<T> {
  value: T;
  /** Epoch milliseconds when the master answered what was cached. */
  savedAt: number;
}

let tmpSeq = 0;

export class MasterStateCache {
  constructor(readonly dir: string) {}

  saveMountTable(entries: MountEntry[]): Promise<void> {
    return this.write(MOUNT_TABLE_FILE, { version: VERSION, savedAt: Date.now(), entries });
  }

  async loadMountTable(): Promise<Cached<MountEntry[]> | undefined> {
    return this.read(MOUNT_TABLE_FILE, (f) => f.array('entries').map((e, i) => decodeMountEntry(e, `cached entries[${i}]`)));
  }

  saveWorkers(cacheGroup: string, workers: WorkerRecord[]): Promise<void> {
    return this.write(workersFile(cacheGroup), { version: VERSION, savedAt: Date.now(), cacheGroup, workers });
  }

  async loadWorkers(cacheGroup: string): Promise<Cached<WorkerRecord[]> | undefined> {
    return this.read(workersFile(cacheGroup), (f) => f.array('workers').map((w, i) => decodeWorkerRecord(w, `cached workers[${i}]`)));
  }

  private async read<T>(name: string, decode: (f: Fields) => T): Promise<Cached<T> | undefined> {
    let text: string;
    try {
      text = await readFile(path.join(this.dir, name), 'utf8');
    } catch {
      return undefined;
    }
    try {
      const f = Fields.of(JSON.parse(text) as unknown, name);
      if (f.count('version') !== VERSION) return undefined;
      return { value: decode(f), savedAt: f.count('savedAt') };
    } catch {
      return undefined;
    }
  }

  private async write(name: string, content: unknown): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const target = path.join(this.dir, name);
    const tmp = `${target}.${process.pid}.${++tmpSeq}.tmp`;
    try {
      const handle = await open(tmp, 'w', 0o600);
      try {
        await handle.writeFile(JSON.stringify(content));
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, target);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
    // Make the rename itself durable; not every filesystem lets a directory be fsynced.
    const dir = await open(this.dir, 'r').catch(() => undefined);
    if (dir) await dir.sync().catch(() => undefined).finally(() => dir.close());
  }
}

function workersFile(cacheGroup: string): string {
  return `workers-${parseCacheGroup(cacheGroup)}.json`;
}
