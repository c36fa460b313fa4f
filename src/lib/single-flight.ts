/**
 * Single-flight: concurrent calls for the same key share one execution: a block the
 * cluster client takes into memory, a path's lookup or listing is done once however
 * many callers ask for it at the same time. (ReadThrough keeps its own flights, whose
 * readers are answered before the flight ends.)
 */
export class SingleFlight<T> {
  private readonly inFlight = new Map<string, Promise<T>>();

  /** Runs `fn` unless a call for `key` is under way, in which case its result is shared. */
  do(key: string, fn: () => Promise<T>): Promise<T> {
    const running = this.inFlight.get(key);
    if (running) return running;
    const p = fn().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, p);
    return p;
  }

  /** The call for `key` under way, if any. */
  get(key: string): Promise<T> | undefined {
    return this.inFlight.get(key);
  }

  has(key: string): boolean {
    return this.inFlight.has(key);
  }

  get size(): number {
    return this.inFlight.size;
  }
}
