/**
 * Single-flight: concurrent calls for the same key share one execution. Every cold
 * block read goes through here, so a block missing from the cache is fetched from
 * the UFS once however many readers ask for it at the same time.
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
