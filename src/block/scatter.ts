/**
 * A read destination made of several buffers filled in order, like `readv`'s: the
 * block buffers of a run of consecutive blocks that one object-store GET fills. Byte
 * `at` of the read lands in the buffer that holds position `at` of their concatenation.
 * No I/O: readers (net/, ufs/) ask where the next bytes go.
 */
export class Scatter {
  readonly buffers: readonly Buffer[];
  /** Total room, in bytes. */
  readonly length: number;
  /** starts[i]: position of buffers[i]'s first byte. */
  private readonly starts: number[] = [];

  constructor(dest: Buffer | readonly Buffer[]) {
    this.buffers = Buffer.isBuffer(dest) ? [dest] : dest;
    let at = 0;
    for (const b of this.buffers) {
      this.starts.push(at);
      at += b.length;
    }
    this.length = at;
  }

  /** The writable room from position `at` to the end of the buffer that holds it (empty at the end). */
  region(at: number): Buffer {
    const i = this.indexOf(at);
    return i < 0 ? Buffer.alloc(0) : this.buffers[i]!.subarray(at - this.starts[i]!);
  }

  /** Copies as much of `src` as fits from position `at`; returns the count copied. */
  copyIn(src: Buffer, at: number): number {
    let copied = 0;
    while (copied < src.length) {
      const room = this.region(at + copied);
      if (room.length === 0) break;
      copied += src.copy(room, 0, copied);
    }
    return copied;
  }

  private indexOf(at: number): number {
    if (at < 0 || at >= this.length) return -1;
    // Runs are a few buffers long: a scan from the end (where a filling read is) is enough.
    for (let i = this.buffers.length - 1; i >= 0; i--) if (this.starts[i]! <= at && this.buffers[i]!.length > 0) return i;
    return -1;
  }
}
