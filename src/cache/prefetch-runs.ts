/**
 * Queued block prefetches, started in runs: consecutive blocks of one object waiting
 * together are fetched by one request (`fetch` gets the run), so a sequential stream
 * whose readahead is ahead of the fetches costs one object-store GET per run rather
 * than per block. At most `maxBlocks` blocks are in flight (each holds a block
 * buffer until its run ends); a run that would not fit waits for room rather than
 * going out cut short, unless nothing is in flight. Prefetching is an optimisation:
 * beyond `maxQueued` waiting blocks new ones are dropped. A block is queued for a
 * reader's signal (its file handle's): one whose reader has gone is dropped from the
 * queue, and a run is handed the signals of all its blocks' readers.
 */
import type { BlockRef } from '../block/block.js';

export class PrefetchRuns<T> {
  private readonly queue: BlockRef[] = [];
  /** Queued blocks and the signals of the readers that want them (undefined: wanted for good). */
  private readonly queued = new Map<string, (AbortSignal | undefined)[]>();
  private inFlight = 0;
  private pumpQueued = false;

  constructor(
    /** Starts one request for the run, for readers with these signals; one promise per block, settled once the block is in. */
    private readonly fetch: (run: BlockRef[], signals: readonly (AbortSignal | undefined)[]) => Promise<T>[],
    private readonly maxBlocks: number,
    private readonly maxRun: number,
    /** Whether a block needs no fetch (cached, or being fetched) by the time its turn comes. */
    private readonly present: (ref: BlockRef) => boolean,
    private readonly maxQueued = 256,
  ) {}

  add(ref: BlockRef, signal?: AbortSignal): boolean {
    const wanted = this.queued.get(ref.id);
    if (wanted) {
      wanted.push(signal);
      return true;
    }
    if (this.queue.length >= this.maxQueued) return false;
    this.queued.set(ref.id, [signal]);
    this.queue.push(ref);
    // After the caller's other adds of this turn: blocks asked for together go out together.
    if (!this.pumpQueued) {
      this.pumpQueued = true;
      queueMicrotask(() => {
        this.pumpQueued = false;
        this.pump();
      });
    }
    return true;
  }

  /**
   * Starts the run that begins with the queued block `ref` now, room or not: a reader is
   * waiting for it (the kernel's own readahead asks for blocks before their turn here).
   * Undefined when `ref` is not queued.
   */
  startNow(ref: BlockRef): Promise<T> | undefined {
    const at = this.queue.findIndex((r) => r.id === ref.id);
    if (at < 0) return undefined;
    this.queue.splice(at, 1);
    const run = this.runFrom(ref);
    return run.length ? this.start(run)[0] : undefined;
  }

  /** Blocks queued or in flight. */
  get active(): number {
    return this.inFlight + this.queue.length;
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const run = this.runFrom(this.queue.shift()!);
      if (run.length === 0) continue;
      if (this.inFlight > 0 && this.inFlight + run.length > this.maxBlocks) {
        this.queue.unshift(...run);
        return;
      }
      this.start(run);
    }
  }

  private start(run: BlockRef[]): Promise<T>[] {
    const signals: (AbortSignal | undefined)[] = [];
    for (const ref of run) {
      signals.push(...(this.queued.get(ref.id) ?? []));
      this.queued.delete(ref.id);
    }
    this.inFlight += run.length;
    const flights = this.fetch(run, signals);
    // Every block's buffer is held until its run ends: room comes back all at once.
    void Promise.allSettled(flights).then(() => {
      this.inFlight -= run.length;
      this.pump();
    });
    return flights;
  }

  /** `first` (taken off the queue) and the queued blocks that follow it, up to `maxRun`; empty if `first` needs no fetch. */
  private runFrom(first: BlockRef): BlockRef[] {
    if (!this.needed(first)) {
      this.queued.delete(first.id);
      return [];
    }
    const run = [first];
    while (run.length < this.maxRun) {
      const last = run[run.length - 1]!;
      const i = this.queue.findIndex((r) => r.object === last.object && r.blockSize === last.blockSize && r.index === last.index + 1);
      if (i < 0 || !this.needed(this.queue[i]!)) break;
      run.push(this.queue.splice(i, 1)[0]!);
    }
    return run;
  }

  /** A queued block still needs a fetch: not cached or being fetched, and some reader that asked for it is still there. */
  private needed(ref: BlockRef): boolean {
    return !this.present(ref) && (this.queued.get(ref.id) ?? [undefined]).some((s) => !s?.aborted);
  }
}
