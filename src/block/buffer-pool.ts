/**
 * Reuses whole-block buffers. Every `Buffer.allocUnsafe` of a block (4 MiB by default)
 * is a new ArrayBuffer outside V8's heap; a stream of them makes V8 run a full
 * mark-compact every few blocks ("GC in old space requested" at a 24 MB heap), which
 * halved the network read path. A pool keeps a few freed block buffers and hands them
 * out again.
 *
 * A buffer may be given back only when nothing else holds it: `giveLater` waits for the
 * current turn of the event loop to end, so readers that obtained the buffer in this
 * turn (through a resolved promise) have copied from it before it can be refilled.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  /** `size`: the length of pooled buffers; `keep`: how many free ones are kept at most. */
  constructor(readonly size: number, private readonly keep: number) {}

  /** A buffer of `length` bytes, uninitialised; a pooled one when `length` is the pool's size. */
  take(length: number): Buffer {
    if (length === this.size) return this.free.pop() ?? Buffer.allocUnsafeSlow(length);
    return Buffer.allocUnsafe(length);
  }

  /** Gives `buf` back once this turn of the event loop is over; buffers of other sizes are left to GC. */
  giveLater(buf: Buffer): void {
    if (buf.length !== this.size || buf.byteOffset !== 0 || buf.buffer.byteLength !== this.size) return;
    setImmediate(() => {
      if (this.free.length < this.keep) this.free.push(buf);
    });
  }

  get freeCount(): number {
    return this.free.length;
  }
}
