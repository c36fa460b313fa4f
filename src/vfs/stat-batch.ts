/**
 * The files of one listing page that came by name alone (`ListedFile`), stat'ed together
 * when the first of them is asked for: a walk that stats every file (find, ls -l, a
 * loader) then waits for one round of stats per page, asked of the store in one call
 * (`StatFiles`: a folder stats them in one loop), instead of one stat at a time per file,
 * while a walk that wants names only (`ls -f`) stats nothing.
 */
import type { Entry } from './entry.js';

/** Asks the store for files' entries, in the order of `keys`; null for one gone (or no longer a file). */
export type StatFiles = (keys: readonly string[]) => Promise<(Entry | null)[]>;

export class StatBatch {
  /** Keys not asked for yet; undefined once the batch is under way. */
  private keys: string[] | undefined;
  /** The batch's entries by key while they are being asked for; dropped once they came (they are in the metadata cache then). */
  private results: Promise<Map<string, Entry | null>> | undefined;
  /** The batch of the listing's next page, stat'ed ahead once this one is asked for. */
  next: StatBatch | undefined;

  constructor(keys: string[]) {
    this.keys = keys;
  }

  /**
   * The entry of `key`: the first ask stats the whole batch at once (and the next page's
   * with `ahead`); an ask after the batch has come (its entry evicted from the metadata
   * cache since) stats `key` alone.
   */
  entry(key: string, stat: StatFiles, ahead = false): Promise<Entry | null> {
    const all = this.all(stat);
    // A walk that looks files up goes on into the next page: its stats are made while this page's lookups are answered.
    if (ahead) void this.next?.all(stat)?.catch(() => undefined);
    if (all) return all.then((entries) => entries.get(key) ?? null);
    return stat([key]).then((entries) => entries[0] ?? null);
  }

  /** Its stats came (their entries are in the metadata cache, for as long as it keeps them). */
  get done(): boolean {
    return this.keys === undefined && this.results === undefined;
  }

  /** The entries of the whole batch, its stats made now if they were not; undefined once they came. */
  private all(stat: StatFiles): Promise<Map<string, Entry | null>> | undefined {
    const keys = this.keys;
    if (keys) {
      this.keys = undefined;
      const results = stat(keys).then((entries) => new Map(keys.map((k, i) => [k, entries[i] ?? null])));
      this.results = results;
      results.then(
        () => {
          if (this.results === results) this.results = undefined;
        },
        () => {
          if (this.results === results) this.results = undefined;
        },
      );
    }
    return this.results;
  }
}
