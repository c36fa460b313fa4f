/**
 * A bounded queue of background work (prefetches, block fills): at most
 * `concurrency` tasks run at once and at most `maxQueued` wait; beyond that new
 * work is dropped, since background work is only ever an optimisation. An owner
 * that feeds the queue from work of its own, a little at a time (the directory
 * prefetch), is told when a task ends (`onSettled`) and adds the next then.
 */
export class BackgroundQueue {
  private running = 0;
  private readonly queue: (() => Promise<unknown>)[] = [];
  private readonly keys = new Set<string>();

  constructor(
    private readonly concurrency: number,
    private readonly maxQueued = 256,
    /** Called after each task ends, once its slot is free. */
    private readonly onSettled?: () => void,
  ) {}

  /** Queues `task` unless one with the same key is queued or running; returns false when dropped. */
  add(key: string, task: () => Promise<unknown>): boolean {
    if (this.keys.has(key) || this.queue.length >= this.maxQueued) return false;
    this.keys.add(key);
    this.queue.push(() => task().finally(() => this.keys.delete(key)));
    this.pump();
    return true;
  }

  get active(): number {
    return this.running + this.queue.length;
  }

  private pump(): void {
    while (this.running < this.concurrency && this.queue.length) {
      const task = this.queue.shift()!;
      this.running++;
      task()
        .catch(() => undefined)
        .finally(() => {
          this.running--;
          this.pump();
          this.onSettled?.();
        });
    }
  }
}
