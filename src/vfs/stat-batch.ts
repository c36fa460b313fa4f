/**
 * The files of one listing page that came by name alone (`ListedFile`), stat'ed together
 * when the first of them is asked for: a walk that stats every file (find, ls -l, a
 * loader) then waits for one round of stats per page, made in parallel, instead of one
 * stat at a time per file, while a walk that wants names only (`ls -f`) stats nothing.
 */
import type { Entry } from './entry.js';

/** Asks the store for a file's entry; null when it is gone (or no longer a file). */
export type StatFile = (key: string) => Promise<Entry | null>;

export class StatBatch {
  /** Keys not asked for yet; undefined once the batch is under way. */
  private keys: string[] | undefined;
  /** The stats under way, by key; dropped once all have settled. */
  private flights: Map<string, Promise<Entry | null>> | undefined;
  /** The batch of the listing's next page, stat'ed ahead once this one is asked for. */
  next: StatBatch | undefined;

  constructor(keys: string[]) {
    this.keys = keys;
  }

  /**
   * The entry of `key`: the first ask stats the whole batch at once (and the next page's
   * with `ahead`); an ask after the batch has settled (its entry evicted from the metadata
   * cache since) stats `key` alone.
   */
  entry(key: string, stat: StatFile, ahead = false): Promise<Entry | null> {
    this.start(stat);
    // A walk that looks files up goes on into the next page: its stats are made while this page's lookups are answered.
    if (ahead) this.next?.start(stat);
    return this.flights?.get(key) ?? stat(key);
  }

  private start(stat: StatFile): void {
    if (this.keys) {
      const flights = new Map<string, Promise<Entry | null>>();
      for (const k of this.keys) {
        const flight = stat(k);
        // Each is awaited by whoever asks for it; one nobody asks for must not go unhandled.
        flight.catch(() => undefined);
        flights.set(k, flight);
      }
      this.keys = undefined;
      this.flights = flights;
      void Promise.allSettled(flights.values()).then(() => {
        if (this.flights === flights) this.flights = undefined;
      });
    }
  }
}
