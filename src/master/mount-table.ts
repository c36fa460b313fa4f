/**
 * The mount table: which UFS URI (and options) backs each path of the cachefs
 * namespace. Entries live in the `MetaStore` under `mount/<path>` and in memory
 * for reads; every change is durable before it is acknowledged. Mount paths may
 * not overlap, so a path resolves to at most one entry. Secret option values
 * are kept for `resolve`/`all` (what mounts and workers need to reach the UFS)
 * and never appear in `list` or in logs.
 *
 * At rest, secret values are sealed (`secret-box.ts`, a key derived from the
 * cluster secret): a stored record holds them under `sealedOptions`, never in
 * plain text. Records written before that (plain `secretOptions`, or plain
 * options whose keys look secret) are sealed when the table loads. A master
 * without a cluster secret (`--insecure`) cannot seal: it refuses entries with
 * secret options, and leaves out stored entries whose secrets it cannot open.
 * Knows nothing about HTTP.
 */
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  decodeMountEntry,
  looksSecret,
  toMountEntryView,
  type MountEntry,
  type MountEntryView,
  type PutMountRequest,
  type ResolveMountResponse,
} from './api.js';
import { Fields } from './decode.js';
import type { MetaStore, MetaWrite } from './meta-store.js';
import { isUnder, normalizeMountPath, resolveMountPath } from './mount-path.js';
import type { SecretBox } from './secret-box.js';
import { Serial } from './serial.js';

const PREFIX = 'mount/';

/** What a sealed value is bound to: its entry and key. */
function placeOf(path: string, key: string): string {
  return `mount-table entry ${path} option ${key}`;
}

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
    private readonly box: SecretBox | undefined,
    private readonly logger: Logger,
  ) {}

  /**
   * Loads the table from the store, opening sealed secrets with `box` (none: a
   * master without a cluster secret). A record that cannot be decoded or whose
   * secrets do not open is logged and left out; one with secrets in plain text is
   * sealed and written back.
   */
  static async load(store: MetaStore, logger: Logger, box: SecretBox | undefined): Promise<MountTable> {
    const entries = new Map<string, MountEntry>();
    const reseal: MetaWrite[] = [];
    for (const { key, value } of await store.list(PREFIX)) {
      try {
        const stored = decodeMountEntry(value, `stored mount-table entry ${key}`);
        const sealed = Fields.of(value, key).stringMap('sealedOptions');
        const entry = unsealed(stored, sealed, box);
        const plain = Object.keys(stored.secretOptions).length > 0 || Object.keys(stored.options).some(looksSecret);
        if (plain && box) {
          reseal.push({ key, value: sealedRecord(entry, box) });
          logger.info({ path: entry.path }, 'sealing the secret options of a mount-table entry stored in plain text');
        } else if (plain) logger.warn({ path: entry.path }, 'mount-table entry keeps secret options in plain text: this master has no cluster secret to seal them with');
        entries.set(entry.path, entry);
      } catch (err) {
        logger.error({ key, err: (err as Error).message }, 'skipping unreadable mount-table record');
      }
    }
    if (reseal.length > 0) await store.commit(reseal);
    return new MountTable(store, entries, box, logger);
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
      const secretKeys = Object.keys(req.secretOptions);
      if (!this.box && secretKeys.length > 0) {
        throw new CachefsError(
          'INVALID_ARGUMENT',
          `this master runs without a cluster secret (--insecure), so it cannot keep secret options (${secretKeys.join(', ')}) encrypted or from unauthenticated callers: start it with --auth-token-file`,
        );
      }
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
      await this.store.put(PREFIX + entry.path, this.box ? sealedRecord(entry, this.box) : entry);
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

/** The stored form: secret values (and plain ones under secret-looking keys) sealed under `sealedOptions`. */
function sealedRecord(entry: MountEntry, box: SecretBox): Record<string, unknown> {
  const options: Record<string, string> = {};
  const sealedOptions: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry.options)) {
    if (looksSecret(k)) sealedOptions[k] = box.seal(v, placeOf(entry.path, k));
    else options[k] = v;
  }
  for (const [k, v] of Object.entries(entry.secretOptions)) sealedOptions[k] = box.seal(v, placeOf(entry.path, k));
  return { path: entry.path, uri: entry.uri, options, secretOptions: {}, sealedOptions, createdAt: entry.createdAt };
}

/** The entry with its sealed secrets opened (and plain secret-looking options moved among the secrets). */
function unsealed(stored: MountEntry, sealed: Record<string, string>, box: SecretBox | undefined): MountEntry {
  const keys = Object.keys(sealed);
  if (keys.length > 0 && !box) {
    throw new CachefsError('INVALID_ARGUMENT', `its secret options (${keys.join(', ')}) are encrypted and this master runs without a cluster secret (--insecure)`);
  }
  const options: Record<string, string> = {};
  const secretOptions: Record<string, string> = { ...stored.secretOptions };
  for (const [k, v] of Object.entries(stored.options)) {
    if (box && looksSecret(k)) secretOptions[k] = v;
    else options[k] = v;
  }
  for (const [k, v] of Object.entries(sealed)) {
    try {
      secretOptions[k] = box!.open(v, placeOf(stored.path, k));
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `${(err as Error).message}: add the entry again (mount-table add --replace)`, { cause: err });
    }
  }
  return { ...stored, options, secretOptions };
}
