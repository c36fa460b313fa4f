/**
 * Reuses whole-block buffers. Every `Buffer.allocUnsafe` of a block (4 MiB by default)
 * is a new ArrayBuffer outside V8's heap; a stream of them makes V8 run a full
 * mark-compact every few blocks ("GC in old space requested" at a 24 MB heap), which
 * halved the network read path. A pool owns `keep` block buffers and hands them out
 * again; more at once are allocated and left to the GC.
 *
 * The pool's own buffers are slots of one page-aligned slab, so that a block in one of
 * them can go to disk with O_DIRECT (aligned-memory.ts). The slab's pages are taken
 * from the system only as slots are first used.
 *
 * A buffer may be given back only when nothing else holds it: `giveLater` waits for the
 * current turn of the event loop to end, so readers that obtained the buffer in this
 * turn (through a resolved promise) have copied from it before it can be refilled.
 */
import { alignedMemory, alignUp, MAX_ALIGNED_BYTES } from './aligned-memory.js';

export class BufferPool {
  /** Slot numbers free for `take`. */
  private readonly free: number[] = [];
  private slab?: Buffer;
  private slots = 0;
  private readonly slotSize: number;
  private readonly capacity: number;

  /** `size`: the length of pooled buffers; `keep`: how many the pool owns. */
  constructor(readonly size: number, keep: number) {
    this.slotSize = alignUp(size);
    this.capacity = Math.max(0, Math.min(keep, Math.floor(MAX_ALIGNED_BYTES / this.slotSize)));
  }

  /** A buffer of `length` bytes, uninitialised; a slot of the pool when `length` is at most the pool's size and one is free. */
  take(length: number): Buffer {
    if (length > this.size) return Buffer.allocUnsafeSlow(length);
    const slot = this.free.pop() ?? this.newSlot();
    if (slot === undefined) return Buffer.allocUnsafeSlow(length);
    const at = slot * this.slotSize;
    return this.slab!.subarray(at, at + length);
  }

  /** Gives `buf` back once this turn of the event loop is over; buffers that are not the pool's are left to GC. */
  giveLater(buf: Buffer): void {
    const slab = this.slab;
    if (!slab || buf.buffer !== slab.buffer || buf.byteOffset % this.slotSize !== 0) return;
    const slot = buf.byteOffset / this.slotSize;
    setImmediate(() => this.free.push(slot));
  }

  get freeCount(): number {
    return this.free.length;
  }

  /** The pool's own buffers handed out and not given back yet (a leak shows here). */
  get inUse(): number {
    return this.slots - this.free.length;
  }

  private newSlot(): number | undefined {
    if (this.slots >= this.capacity) return undefined;
    if (!this.slab) {
      this.slab = alignedMemory(this.capacity * this.slotSize);
      // No room for it: unpooled buffers still work, written through the page cache.
      if (!this.slab) {
        this.slots = this.capacity;
        return undefined;
      }
    }
    return this.slots++;
  }
}
