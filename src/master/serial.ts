/**
 * Runs async operations one at a time, in call order: the master's mutations of
 * one table go through one `Serial`, so a check-then-write (is this path free?
 * then store it) never interleaves with another.
 */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(op: () => Promise<T>): Promise<T> {
    const result = this.tail.then(op, op);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /** Resolves when every operation queued so far has finished. */
  async idle(): Promise<void> {
    await this.tail;
  }
}
