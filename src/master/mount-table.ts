/**
 * The mount table: which UFS URI (and options) backs each path of the cachefs
 * namespace. Entries live in the `MetaStore` under `mount/<path>` and in memory
 * for reads; every change is durable before it is acknowledged. Mount paths may
 * not overlap, so a path resolves to at most one entry. Secret option values
 * are kept for `resolve`/`all` (what mounts and workers need to reach the UFS)
 * and never appear in `list` or in logs. Knows nothing about HTTP.
 */
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  decodeMountEntry,
  toMountEntryView,
  type MountEntry,
  type MountEntryView,
  type PutMountRequest,
  type ResolveMountResponse,
} from './api.js';
import type { MetaStore } from './meta-store.js';
import { isUnder, normalizeMountPath, resolveMountPath } from './mount-path.js';
import { Serial } from './serial.js';

const PREFIX = 'mount/';

function sameRecord(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && a[k] === b[k]);
}

function sameEntry(a: MountEntry, b: Omit<MountEntry, 'createdAt'>): boolean {
  return a.uri === b.uri && sameRecord(a.options, b.options) && sameRecord(a.secretOptions, b.secretOptions);
}

export class MountTable {
  private readonly serial = new Serial();

  private constructor(
    private readonly store: MetaStore,
    private readonly entries: Map<string, MountEntry>,
    private readonly logger: Logger,
  ) {}

  /** Loads the table from the store; a record that cannot be decoded is logged and left out. */
  static async load(store: MetaStore, logger: Logger): Promise<MountTable> {
    const entries = new Map<string, MountEntry>();
    for (const { key, value } of await store.list(PREFIX)) {
      try {
        const entry = decodeMountEntry(value, `stored mount-table entry ${key}`);
        entries.set(entry.path, entry);
      } catch (err) {
        logger.error({ key, err: (err as Error).message }, 'skipping unreadable mount-table record');
      }
    }
    return new MountTable(store, entries, logger);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Entries for listings, secrets masked, in path order. */
  list(): MountEntryView[] {
    return this.sorted().map(toMountEntryView);
  }

  /** Entries with their secrets, in path order. */
  all(): MountEntry[] {
    return this.sorted().map((e) => structuredClone(e));
  }

  /** The entry covering `path` with its secrets, and the path below it. */
  resolve(path: string): ResolveMountResponse {
    const normalized = normalizeMountPath(path);
    const found = resolveMountPath(this.entries.values(), normalized);
    if (!found) throw new CachefsError('NOT_FOUND', `no mount-table entry covers '${normalized}'`);
    return { entry: structuredClone(found.entry), subPath: found.subPath };
  }

  /**
   * Adds an entry (request already validated by `decodePutMountRequest`). An
   * identical entry is a no-op, so retries are safe; a different one at the same
   * path needs `replace`; a path inside or around another mount is a CONFLICT.
   */
  put(req: Required<PutMountRequest>, now: number): Promise<{ entry: MountEntryView; created: boolean }> {
    return this.serial.run(async () => {
      const existing = this.entries.get(req.path);
      if (existing && sameEntry(existing, req)) return { entry: toMountEntryView(existing), created: false };
      if (existing && !req.replace) {
        throw new CachefsError('CONFLICT', `mount path '${req.path}' already maps to ${existing.uri}: remove it first or replace it`);
      }
      for (const other of this.entries.values()) {
        if (other.path !== req.path && (isUnder(req.path, other.path) || isUnder(other.path, req.path))) {
          throw new CachefsError('CONFLICT', `mount path '${req.path}' overlaps the mount at '${other.path}'`);
        }
      }
      const entry: MountEntry = { path: req.path, uri: req.uri, options: { ...req.options }, secretOptions: { ...req.secretOptions }, createdAt: now };
      await this.store.put(PREFIX + entry.path, entry);
      this.entries.set(entry.path, entry);
      this.logger.info(
        { path: entry.path, uri: entry.uri, optionKeys: Object.keys(entry.options), secretOptionKeys: Object.keys(entry.secretOptions), replaced: existing !== undefined },
        existing ? 'mount-table entry replaced' : 'mount-table entry added',
      );
      return { entry: toMountEntryView(entry), created: existing === undefined };
    });
  }

  /** Removes the entry at exactly `path`; NOT_FOUND when there is none. */
  remove(path: string): Promise<MountEntryView> {
    const normalized = normalizeMountPath(path);
    return this.serial.run(async () => {
      const existing = this.entries.get(normalized);
      if (!existing) throw new CachefsError('NOT_FOUND', `no mount-table entry at '${normalized}'`);
      await this.store.delete(PREFIX + normalized);
      this.entries.delete(normalized);
      this.logger.info({ path: normalized, uri: existing.uri }, 'mount-table entry removed');
      return toMountEntryView(existing);
    });
  }

  /** Waits for in-flight changes. */
  idle(): Promise<void> {
    return this.serial.idle();
  }

  private sorted(): MountEntry[] {
    return [...this.entries.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }
}
