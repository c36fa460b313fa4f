/**
 * Work that several parties wait on (one fetch of a block for many readers) and that
 * stops once none of them wants it: each party joins with its own signal, and when
 * every party that joined has aborted, the work's own `signal` aborts (the GET under it
 * is cancelled and gives its buffers back). A party without a signal waits to the end,
 * so the work is never cancelled under it.
 *
 * `waitFor` is the other half: a party stops waiting as soon as its signal aborts,
 * whether or not the work goes on for others.
 */
import { abortError } from '../errors.js';

export class SharedWork {
  private readonly controller = new AbortController();
  /** Parties with a signal that has not aborted. */
  private waiting = 0;
  /** A party without a signal joined: the work runs to its end. */
  private held = false;
  private finished = false;
  private readonly unlisten: (() => void)[] = [];

  /** Aborts once every party has aborted. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** One more party waits for the work, until `signal` aborts (or for good, without one). */
  join(signal?: AbortSignal): void {
    if (this.finished) return;
    if (!signal) {
      this.held = true;
      return;
    }
    if (signal.aborted) return this.check(signal);
    this.waiting++;
    const left = (): void => {
      this.waiting--;
      this.check(signal);
    };
    signal.addEventListener('abort', left, { once: true });
    this.unlisten.push(() => signal.removeEventListener('abort', left));
  }

  /** The work has ended: the parties' signals are let go (a file handle's signal outlives many fetches). */
  finish(): void {
    this.finished = true;
    for (const u of this.unlisten.splice(0)) u();
  }

  private check(last: AbortSignal): void {
    if (!this.finished && this.waiting === 0 && !this.held && !this.controller.signal.aborted) this.controller.abort(abortError(last));
  }
}

/** `work`'s outcome, or a rejection as soon as `signal` aborts (the work itself is not touched). */
export function waitFor<T>(work: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) return Promise.reject(abortError(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
