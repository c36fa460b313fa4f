/**
 * Single-flight: concurrent calls for the same key share one execution: a block the
 * cluster client takes into memory, a path's lookup or listing is done once however
 * many callers ask for it at the same time. A caller with a signal stops waiting when
 * it aborts; the execution itself is cancelled (its signal aborts) only once every
 * caller has (shared-work.ts). ReadThrough keeps its own flights, whose readers are
 * answered before the flight ends.
 */
import { SharedWork, waitFor } from './shared-work.js';

interface Flight<T> {
  promise: Promise<T>;
  work: SharedWork;
}

export class SingleFlight<T> {
  private readonly inFlight = new Map<string, Flight<T>>();

  /** Runs `fn` unless a call for `key` is under way, in which case its result is shared. */
  do(key: string, fn: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    let flight = this.inFlight.get(key);
    if (!flight) {
      const work = new SharedWork();
      const promise = fn(work.signal).finally(() => {
        this.inFlight.delete(key);
        work.finish();
      });
      flight = { promise, work };
      this.inFlight.set(key, flight);
    }
    flight.work.join(signal);
    return waitFor(flight.promise, signal);
  }

  /** The call for `key` under way, if any. */
  get(key: string): Promise<T> | undefined {
    return this.inFlight.get(key)?.promise;
  }

  has(key: string): boolean {
    return this.inFlight.has(key);
  }

  get size(): number {
    return this.inFlight.size;
  }
}
